package format_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"filippo.io/age"
	"github.com/backstream/backstream/pkg/format"
)

// keyringObject seals data with keyring k.
func keyringObject(t *testing.T, id string, k format.Keyring, data []byte) []byte {
	t.Helper()
	return seal(t, id, format.Options{Compression: format.CompressionZstd, Keyring: &k, ChunkSize: 1000}, data)
}

// TestKeyringObject: an object sealed with a keyring carries the keyring's
// recipient and the keyring itself, and its data key is an age file for
// that recipient, so no scrypt is needed to wrap it.
func TestKeyringObject(t *testing.T) {
	k := keyring(t)
	data := gen(3, 4500)
	before := format.ScryptUnlocks()
	obj := keyringObject(t, "01JKEYRINGOBJECT", k, data)
	h, _, err := format.ReadHeader(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	kw := h.KeyWrap
	if kw.Scheme != format.SchemeAgeKeyring || len(kw.Recipients) != 1 || kw.Recipients[0] != k.Recipient || !bytes.Equal(kw.Keyring, k.Wrapped) {
		t.Fatalf("key wrap %+v, keyring %+v", kw, k)
	}
	if !bytes.Contains(kw.Wrapped, []byte("\n-> X25519 ")) || bytes.Contains(kw.Wrapped, []byte("scrypt")) {
		t.Fatalf("the data key is not wrapped for an X25519 recipient alone:\n%s", kw.Wrapped)
	}
	got, _, err := open(obj, format.Keys{Passphrase: testPass})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("open: %v", err)
	}
	if n := format.ScryptUnlocks() - before; n != 0 {
		t.Fatalf("the process that made the keyring ran scrypt %d times to seal and open with it", n)
	}
	// The keyring is a plain age file: age with the passphrase prints the
	// identity of its recipient.
	sid, _ := age.NewScryptIdentity(testPass)
	r, err := age.Decrypt(bytes.NewReader(k.Wrapped), sid)
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := io.ReadAll(r)
	id, err := age.ParseX25519Identity(string(plain))
	if err != nil || id.Recipient().String() != k.Recipient || !strings.HasPrefix(string(plain), "AGE-SECRET-KEY-1") {
		t.Fatalf("the keyring holds %q (%v), not the identity of %s", plain, err, k.Recipient)
	}
	if wf, err := k.WorkFactor(); err != nil || wf != 10 {
		t.Fatalf("work factor %d, %v; want 10", wf, err)
	}
}

func TestKeyringDefaultWorkFactor(t *testing.T) {
	k, err := format.NewKeyring("another passphrase", 0)
	if err != nil {
		t.Fatal(err)
	}
	if wf, err := k.WorkFactor(); err != nil || wf != 16 || format.DefaultKeyringWorkFactor != 16 {
		t.Fatalf("work factor %d, %v; want 16", wf, err)
	}
	for _, bad := range []struct {
		pass string
		wf   int
	}{{"", 10}, {"x", -1}, {"x", format.DefaultMaxScryptWorkFactor + 1}} {
		if _, err := format.NewKeyring(bad.pass, bad.wf); !errors.Is(err, format.ErrInvalidOption) {
			t.Errorf("NewKeyring(%q, %d): %v", bad.pass, bad.wf, err)
		}
	}
}

// TestKeyringUnlocksOnce: a process that reads many objects of one keyring
// runs scrypt once, also when the reads start at the same moment.
func TestKeyringUnlocksOnce(t *testing.T) {
	k := keyring(t)
	const n = 8
	var objs [][]byte
	for i := range n {
		objs = append(objs, keyringObject(t, "01JKEYRINGONCE"+string(rune('A'+i)), k, gen(int64(i), 2000)))
	}
	tests := []struct {
		name string
		read func(t *testing.T)
	}{
		{"one after another", func(t *testing.T) {
			for i, obj := range objs {
				if _, _, err := open(obj, format.Keys{Passphrase: testPass}); err != nil {
					t.Fatalf("object %d: %v", i, err)
				}
			}
		}},
		{"concurrent", func(t *testing.T) {
			var wg sync.WaitGroup
			start := make(chan struct{})
			errs := make([]error, n)
			for i, obj := range objs {
				wg.Go(func() {
					<-start
					_, _, errs[i] = open(obj, format.Keys{Passphrase: testPass})
				})
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("object %d: %v", i, err)
				}
			}
		}},
		{"writer's check, then readers", func(t *testing.T) {
			for range 3 {
				if err := k.Unlock(testPass, 0); err != nil {
					t.Fatal(err)
				}
			}
			for i, obj := range objs {
				if _, _, err := open(obj, format.Keys{Passphrase: testPass}); err != nil {
					t.Fatalf("object %d: %v", i, err)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			format.ForgetKeyrings()
			before := format.ScryptUnlocks()
			tt.read(t)
			if got := format.ScryptUnlocks() - before; got != 1 {
				t.Fatalf("scrypt ran %d times for %d objects of one keyring, want once", got, n)
			}
		})
	}
}

// TestKeyringIdentity: the keyring's identity, as `age -d` of the keyring
// prints it into a file, opens its objects without the passphrase and
// without scrypt.
func TestKeyringIdentity(t *testing.T) {
	k := keyring(t)
	data := gen(4, 3000)
	obj := keyringObject(t, "01JKEYRINGIDENTITY", k, data)
	sid, _ := age.NewScryptIdentity(testPass)
	r, err := age.Decrypt(bytes.NewReader(k.Wrapped), sid)
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := io.ReadAll(r)
	path := filepath.Join(t.TempDir(), "keyring.key")
	if err := writeFile(path, string(plain)+"\n"); err != nil {
		t.Fatal(err)
	}
	ids, err := format.ParseIdentityFile(path)
	if err != nil {
		t.Fatal(err)
	}
	format.ForgetKeyrings()
	before := format.ScryptUnlocks()
	// another identity first, as an identity file of several keys would
	got, _, err := open(obj, format.Keys{Identities: append([]age.Identity{identity(t)}, ids...)})
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("open with the keyring's identity: %v", err)
	}
	if n := format.ScryptUnlocks() - before; n != 0 {
		t.Fatalf("scrypt ran %d times with the identity at hand", n)
	}
}

func TestKeyringWrongKeys(t *testing.T) {
	k := keyring(t)
	data := gen(5, 3000)
	obj := keyringObject(t, "01JKEYRINGWRONG", k, data)
	// A keyring that claims k's recipient but holds another identity, as
	// a forger with the passphrase or a broken writer would make it.
	other, err := format.NewKeyring(testPass, 10)
	if err != nil {
		t.Fatal(err)
	}
	forged := keyringObject(t, "01JKEYRINGFORGED", format.Keyring{Recipient: k.Recipient, Wrapped: other.Wrapped}, data)
	tests := []struct {
		name string
		obj  []byte
		keys format.Keys
		want error
		msg  string
	}{
		{"wrong passphrase", obj, format.Keys{Passphrase: "Tr0ub4dor&3"}, format.ErrWrongKey, "passphrase does not open the keyring of " + k.Recipient},
		{"no passphrase, no identity", obj, format.Keys{}, format.ErrWrongKey, "give its plan's passphrase or the keyring's identity"},
		{"another identity only", obj, format.Keys{Identities: []age.Identity{identity(t)}}, format.ErrWrongKey, "the data key is wrapped for the keyring " + k.Recipient},
		{"work factor above the cap", obj, format.Keys{Passphrase: testPass, MaxScryptWorkFactor: 9}, format.ErrFormat, "scrypt work factor"},
		{"keyring of another identity", forged, format.Keys{Passphrase: testPass}, format.ErrCorrupt, "the keyring of " + k.Recipient + " holds the identity of " + other.Recipient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			format.ForgetKeyrings()
			_, err := format.NewReader(bytes.NewReader(tt.obj), tt.keys)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("NewReader: %v; want %v mentioning %q", err, tt.want, tt.msg)
			}
			if strings.Contains(err.Error(), testPass) {
				t.Fatalf("the error shows the passphrase: %v", err)
			}
		})
	}
	t.Run("forged, with the recipient's identity cached", func(t *testing.T) {
		// A cached identity counts only for the wrapped copy it came from.
		if err := k.Unlock(testPass, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := format.NewReader(bytes.NewReader(forged), format.Keys{Passphrase: testPass}); !errors.Is(err, format.ErrCorrupt) {
			t.Fatalf("NewReader: %v", err)
		}
		if err := (format.Keyring{Recipient: k.Recipient, Wrapped: other.Wrapped}).Unlock(testPass, 0); !errors.Is(err, format.ErrCorrupt) {
			t.Fatalf("Unlock: %v", err)
		}
	})
	// A failed unlock is not remembered: the right passphrase still opens.
	if got, _, err := open(obj, format.Keys{Passphrase: testPass}); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("open with the passphrase after failures: %v", err)
	}
}

// rewriteHeaderFields rebuilds obj's header with the variable fields edit
// returns, fixing V and the CRCs: a forger's header, well formed but for
// the fields.
func rewriteHeaderFields(t *testing.T, obj []byte, edit func([][]byte) [][]byte) []byte {
	t.Helper()
	be := binary.BigEndian
	hdrLen := 28 + int(be.Uint32(obj[24:28])) + 4
	var fields [][]byte
	for p := obj[28 : hdrLen-4]; len(p) > 0; {
		n := int(be.Uint32(p))
		fields, p = append(fields, p[4:4+n]), p[4+n:]
	}
	var vars []byte
	for _, f := range edit(fields) {
		vars = be.AppendUint32(vars, uint32(len(f)))
		vars = append(vars, f...)
	}
	hdr := append(append([]byte(nil), obj[:24]...), be.AppendUint32(nil, uint32(len(vars)))...)
	hdr = append(hdr, vars...)
	hdr = be.AppendUint32(hdr, crc32.Checksum(hdr, crc32.MakeTable(crc32.Castagnoli)))
	return forgeCRCs(append(hdr, obj[hdrLen:]...))
}

func TestKeyringHeaderField(t *testing.T) {
	k := keyring(t)
	byKeyring := keyringObject(t, "01JKEYRINGFIELD", k, []byte("x"))
	byRecipient := seal(t, "01JKEYRINGFIELD", format.Options{Recipients: []string{identity(t).Recipient().String()}}, []byte("x"))
	plain := seal(t, "01JKEYRINGFIELD", format.Options{Encryption: format.EncryptionNone}, []byte("x"))
	tests := []struct {
		name string
		obj  []byte
		msg  string
	}{
		{"a fifth field with age-x25519", rewriteHeaderFields(t, byRecipient, func(f [][]byte) [][]byte { return append(f, k.Wrapped) }), "unexpected bytes after the variable fields of key scheme \"age-x25519\""},
		{"an empty fifth field with none", rewriteHeaderFields(t, plain, func(f [][]byte) [][]byte { return append(f, nil) }), "unexpected bytes after the variable fields of key scheme \"none\""},
		{"age-keyring without its field", rewriteHeaderFields(t, byKeyring, func(f [][]byte) [][]byte { return f[:4] }), "key scheme age-keyring without its keyring field"},
		{"age-keyring with an empty field", rewriteHeaderFields(t, byKeyring, func(f [][]byte) [][]byte { f[4] = nil; return f }), "needs wrapped, exactly one recipient and the keyring"},
		{"age-keyring with two recipients", rewriteHeaderFields(t, byKeyring, func(f [][]byte) [][]byte {
			f[2] = []byte(k.Recipient + "\n" + identity(t).Recipient().String())
			return f
		}), "exactly one recipient"},
		{"age-keyring with a sixth field", rewriteHeaderFields(t, byKeyring, func(f [][]byte) [][]byte { return append(f, []byte("more")) }), "unexpected bytes after the variable fields"},
		{"the keyring moved to age-scrypt", rewriteHeaderFields(t, byKeyring, func(f [][]byte) [][]byte { f[1], f[2] = []byte("age-scrypt"), nil; return f }), "unexpected bytes after the variable fields of key scheme \"age-scrypt\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := format.ReadHeader(bytes.NewReader(tt.obj))
			if !errors.Is(err, format.ErrFormat) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("ReadHeader: %v; want ErrFormat mentioning %q", err, tt.msg)
			}
			if _, err := format.Scan(bytes.NewReader(tt.obj)); !errors.Is(err, format.ErrFormat) {
				t.Fatalf("Scan: %v", err)
			}
		})
	}
	// The rewrite itself changes nothing when it keeps the fields.
	same := rewriteHeaderFields(t, byKeyring, func(f [][]byte) [][]byte { return f })
	if !bytes.Equal(same, byKeyring) {
		t.Fatal("rewriting the header with its own fields changed it")
	}
}

func TestKeyWrapValidateKeyring(t *testing.T) {
	k := keyring(t)
	w := []byte("age-encryption.org/v1\n")
	tests := []struct {
		name string
		give format.KeyWrap
		want string // "" for valid
	}{
		{"keyring", format.KeyWrap{Scheme: format.SchemeAgeKeyring, Wrapped: w, Recipients: []string{k.Recipient}, Keyring: k.Wrapped}, ""},
		{"no keyring", format.KeyWrap{Scheme: format.SchemeAgeKeyring, Wrapped: w, Recipients: []string{k.Recipient}}, "needs wrapped, exactly one recipient and the keyring"},
		{"no recipient", format.KeyWrap{Scheme: format.SchemeAgeKeyring, Wrapped: w, Keyring: k.Wrapped}, "exactly one recipient"},
		{"no wrapped key", format.KeyWrap{Scheme: format.SchemeAgeKeyring, Recipients: []string{k.Recipient}, Keyring: k.Wrapped}, "needs wrapped"},
		{"keyring with x25519", format.KeyWrap{Scheme: format.SchemeAgeX25519, Wrapped: w, Recipients: []string{k.Recipient}, Keyring: k.Wrapped}, "scheme age-x25519 carries no keyring"},
		{"keyring with scrypt", format.KeyWrap{Scheme: format.SchemeAgeScrypt, Wrapped: w, Keyring: k.Wrapped}, "scheme age-scrypt carries no keyring"},
		{"keyring with none", format.KeyWrap{Scheme: format.SchemeNone, Keyring: k.Wrapped}, "scheme none carries no keyring"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.give.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}
