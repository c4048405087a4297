package format

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"filippo.io/age"
)

// Keyring is a plan's key pair for scheme age-keyring: a random age X25519
// identity whose recipient the data key of every backup is wrapped for
// (cheap), and that identity wrapped with the plan's passphrase (scrypt,
// paid once per process). Wrapped is a complete binary age file with one
// scrypt stanza whose plaintext is the identity string
// "AGE-SECRET-KEY-1…", so `age -d` with the passphrase prints it.
//
// Neither field is a secret: every object of the scheme carries both in
// its header, which is what lets storage and the passphrase restore it
// without anything else.
type Keyring struct {
	Recipient string // age1…
	Wrapped   []byte
}

// NewKeyring draws a new identity and wraps it with passphrase at scrypt
// work factor workFactor (log2 N; 0 means DefaultKeyringWorkFactor). The
// identity is put into the process's keyring cache, so the process that
// made a keyring never runs scrypt to unlock it.
func NewKeyring(passphrase string, workFactor int) (Keyring, error) {
	if passphrase == "" {
		return Keyring{}, fmt.Errorf("new keyring: %w: empty passphrase", ErrInvalidOption)
	}
	if workFactor == 0 {
		workFactor = DefaultKeyringWorkFactor
	}
	if workFactor < 1 || workFactor > DefaultMaxScryptWorkFactor {
		return Keyring{}, fmt.Errorf("new keyring: %w: work factor %d is not in 1..%d", ErrInvalidOption, workFactor, DefaultMaxScryptWorkFactor)
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return Keyring{}, fmt.Errorf("new keyring: %w", err)
	}
	r, err := age.NewScryptRecipient(passphrase)
	if err != nil {
		return Keyring{}, fmt.Errorf("new keyring: %w", err)
	}
	r.SetWorkFactor(workFactor)
	var buf bytes.Buffer
	makeRoomForScrypt(workFactor)
	w, err := age.Encrypt(&buf, r) // scrypt runs here, when the file key is wrapped
	releaseScrypt(workFactor)
	if err != nil {
		return Keyring{}, fmt.Errorf("new keyring: %w", err)
	}
	if _, err := io.WriteString(w, id.String()); err != nil {
		return Keyring{}, fmt.Errorf("new keyring: %w", err)
	}
	if err := w.Close(); err != nil {
		return Keyring{}, fmt.Errorf("new keyring: %w", err)
	}
	k := Keyring{Recipient: id.Recipient().String(), Wrapped: buf.Bytes()}
	keyrings.remember(k, passphrase, id)
	return k, nil
}

// Validate checks the shape of k without the passphrase: an X25519
// recipient, and an age file with exactly one scrypt stanza.
func (k Keyring) Validate() error {
	if _, err := age.ParseX25519Recipient(k.Recipient); err != nil {
		return fmt.Errorf("recipient %q: %v", k.Recipient, err)
	}
	if _, err := k.WorkFactor(); err != nil {
		return err
	}
	return nil
}

// WorkFactor returns the scrypt work factor (log2 N) the keyring's wrapped
// identity demands, read from its age header. It fails when Wrapped is
// not an age file with exactly one scrypt stanza.
func (k Keyring) WorkFactor() (int, error) {
	const intro = "age-encryption.org/v1\n"
	hdr, _, ok := bytes.Cut(k.Wrapped, []byte("\n---"))
	if !ok || !bytes.HasPrefix(hdr, []byte(intro)) {
		return 0, errors.New("wrapped keyring is not an age v1 file")
	}
	wf, stanzas := 0, 0
	for _, l := range strings.Split(string(hdr[len(intro):]), "\n") {
		args, ok := strings.CutPrefix(l, "-> ")
		if !ok {
			continue
		}
		stanzas++
		f := strings.Fields(args)
		if len(f) != 3 || f[0] != "scrypt" {
			return 0, fmt.Errorf("wrapped keyring has a %q stanza; a keyring is wrapped with a passphrase (one scrypt stanza)", f[0])
		}
		n, err := strconv.Atoi(f[2])
		if err != nil || n < 1 || n > 30 {
			return 0, fmt.Errorf("wrapped keyring: scrypt work factor %q", f[2])
		}
		wf = n
	}
	if stanzas != 1 {
		return 0, fmt.Errorf("wrapped keyring has %d stanzas, want one scrypt stanza", stanzas)
	}
	return wf, nil
}

// Unlock checks that passphrase opens k: that its wrapped identity opens
// and is the identity of k.Recipient. A work factor above maxWorkFactor
// (0: DefaultMaxScryptWorkFactor) is refused without running scrypt.
//
// It runs scrypt at most once per process for each keyring and passphrase
// (concurrent calls share the one run); the identity stays in this
// process's memory, for UnwrapKey. The work factor cap holds also when the
// identity is at hand. Errors: ErrWrongKey when the passphrase does not
// open the keyring, ErrCorrupt when what it opens is not the recipient's
// identity, ErrFormat when the keyring is malformed or demands too much
// work.
func (k Keyring) Unlock(passphrase string, maxWorkFactor int) error {
	_, err := keyrings.unlock(k, passphrase, maxWorkFactor)
	return err
}

// keyrings is the process's cache of unlocked keyring identities.
var keyrings = &keyringCache{m: map[[sha256.Size]byte]*keyringEntry{}}

// scryptUnlocks counts the scrypt runs of keyring unlocks, for tests.
var scryptUnlocks atomic.Int64

// keyringCache holds the identities of keyrings this process unlocked (or
// made), keyed by SHA-256(recipient ‖ 0x00 ‖ passphrase): the passphrase
// never sits in the map in clear, and the cache lives only in memory. It
// grows by one small entry per keyring and passphrase that opened: failed
// unlocks are not kept, so hostile objects cannot fill it, and a process
// sees few keyrings (one per plan, a new one when a passphrase changes).
type keyringCache struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]*keyringEntry
}

// keyringEntry is one unlock, done or in flight. Waiters block on done;
// id and err are set before it closes. opened (guarded by the cache's mu)
// holds the digests of the wrapped keyrings that opened with the
// passphrase: the same identity may be wrapped more than once.
type keyringEntry struct {
	done    chan struct{}
	wrapped [sha256.Size]byte // the wrapped keyring this entry's run opened
	id      *age.X25519Identity
	err     error
	opened  map[[sha256.Size]byte]bool
}

func keyringCacheKey(recipient, passphrase string) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(recipient))
	h.Write([]byte{0})
	h.Write([]byte(passphrase))
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// remember records id as k's identity under passphrase (NewKeyring).
func (c *keyringCache) remember(k Keyring, passphrase string, id *age.X25519Identity) {
	done := make(chan struct{})
	close(done)
	ws := sha256.Sum256(k.Wrapped)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[keyringCacheKey(k.Recipient, passphrase)] = &keyringEntry{done: done, wrapped: ws, id: id, opened: map[[sha256.Size]byte]bool{ws: true}}
}

// unlock returns k's identity under passphrase. A cached identity counts
// only for a wrapped copy that opened with the passphrase before: a writer
// copies Wrapped into every object it seals, and a verify must prove that
// the object's own keyring opens, as a restore in a fresh process needs.
// Every object of a plan carries the same copy, so this costs no scrypt.
func (c *keyringCache) unlock(k Keyring, passphrase string, maxWorkFactor int) (*age.X25519Identity, error) {
	if maxWorkFactor == 0 {
		maxWorkFactor = DefaultMaxScryptWorkFactor
	}
	// The cap holds whether or not the identity is at hand, so whether a
	// keyring is refused does not depend on what this process did before.
	wf, err := k.WorkFactor()
	if err != nil {
		return nil, fmt.Errorf("%w: the keyring of %s: %v", ErrFormat, k.Recipient, err)
	}
	if wf > maxWorkFactor {
		return nil, fmt.Errorf("%w: the keyring of %s: scrypt work factor too large: %d (at most %d)", ErrFormat, k.Recipient, wf, maxWorkFactor)
	}
	key := keyringCacheKey(k.Recipient, passphrase)
	ws := sha256.Sum256(k.Wrapped)
	for {
		c.mu.Lock()
		e, ok := c.m[key]
		if !ok {
			e = &keyringEntry{done: make(chan struct{}), wrapped: ws, opened: map[[sha256.Size]byte]bool{}}
			c.m[key] = e
			c.mu.Unlock()
			e.id, e.err = openKeyring(k, passphrase, maxWorkFactor)
			c.mu.Lock()
			if e.err != nil {
				delete(c.m, key)
			} else {
				e.opened[ws] = true
			}
			close(e.done)
			c.mu.Unlock()
			return e.id, e.err
		}
		c.mu.Unlock()
		<-e.done
		if e.err != nil {
			if e.wrapped == ws {
				return nil, e.err // the same keyring failed in the run we waited for
			}
			continue // another keyring failed under this key; its entry is gone
		}
		c.mu.Lock()
		opened := e.opened[ws]
		c.mu.Unlock()
		if opened {
			return e.id, nil
		}
		// Same recipient and passphrase, another wrapped copy: rare (someone
		// re-wrapped the identity), checked on its own.
		id, err := openKeyring(k, passphrase, maxWorkFactor)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		e.opened[ws] = true
		c.mu.Unlock()
		return id, nil
	}
}

// openKeyring runs scrypt: it opens k.Wrapped with passphrase and checks
// that the identity inside is k.Recipient's.
func openKeyring(k Keyring, passphrase string, maxWorkFactor int) (*age.X25519Identity, error) {
	if passphrase == "" {
		return nil, fmt.Errorf("%w: the keyring of %s opens with a passphrase and none was given", ErrWrongKey, k.Recipient)
	}
	sid, err := age.NewScryptIdentity(passphrase)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrWrongKey, err)
	}
	sid.SetMaxWorkFactor(maxWorkFactor)
	scryptUnlocks.Add(1)
	wf, wfErr := k.WorkFactor()
	if wfErr == nil {
		makeRoomForScrypt(wf)
	}
	r, err := age.Decrypt(bytes.NewReader(k.Wrapped), sid)
	if wfErr == nil {
		releaseScrypt(wf)
	}
	if err != nil {
		var nomatch *age.NoIdentityMatchError
		if errors.As(err, &nomatch) {
			return nil, fmt.Errorf("%w: passphrase does not open the keyring of %s", ErrWrongKey, k.Recipient)
		}
		return nil, fmt.Errorf("%w: open the keyring of %s: %v", ErrFormat, k.Recipient, err)
	}
	// An identity string is 74 bytes; anything much longer is not one.
	plain, err := io.ReadAll(io.LimitReader(r, 1024))
	if err != nil {
		return nil, fmt.Errorf("%w: open the keyring of %s: %v", ErrCorrupt, k.Recipient, err)
	}
	id, err := age.ParseX25519Identity(strings.TrimSpace(string(plain)))
	if err != nil {
		return nil, fmt.Errorf("%w: the keyring of %s does not hold an age X25519 identity", ErrCorrupt, k.Recipient)
	}
	if got := id.Recipient().String(); got != k.Recipient {
		return nil, fmt.Errorf("%w: the keyring of %s holds the identity of %s", ErrCorrupt, k.Recipient, got)
	}
	return id, nil
}

// scryptMem keeps the heap tight around scrypt's buffer (128·8·2^workFactor
// bytes, 64 MiB at the default). Small work factors (tests, fuzzing) are
// left to the collector.
var scryptMem struct {
	sync.Mutex
	running   int // scrypts running in this process
	gcPercent int // the collector's setting before the first of them
}

// scryptGCPercent is the collector's target while scrypt runs: its buffer
// is live heap, and at serve's 50% the collector would let half of it
// again pile up as garbage of the backup that waits for the keyring
// before collecting.
const scryptGCPercent = 10

// makeRoomForScrypt runs before scrypt: it collects and hands back what
// the heap holds free, so scrypt's buffer lands on the smallest heap the
// process has (a keyring is unlocked when serve starts or a plan is
// applied, when the start-up's garbage is still around), and it lowers
// the collector's target until the last scrypt running has ended.
func makeRoomForScrypt(workFactor int) {
	if workFactor < 14 {
		return
	}
	scryptMem.Lock()
	defer scryptMem.Unlock()
	if scryptMem.running == 0 {
		debug.FreeOSMemory()
		scryptMem.gcPercent = debug.SetGCPercent(scryptGCPercent)
	}
	scryptMem.running++
}

// releaseScrypt runs after scrypt: the buffer is garbage as soon as scrypt
// returns, but the heap goal was set while it was live; without a
// collection now, the backup that asked for the keyring grows the heap on
// top of it (serve's peak RSS for a 512 MiB backup with a passphrase:
// ~161 MiB without this, ~133 with it, ~80 with recipients). The last
// scrypt to end puts the collector's target back.
func releaseScrypt(workFactor int) {
	if workFactor < 14 {
		return
	}
	scryptMem.Lock()
	defer scryptMem.Unlock()
	if scryptMem.running--; scryptMem.running == 0 {
		debug.SetGCPercent(scryptMem.gcPercent)
		debug.FreeOSMemory()
	}
}
