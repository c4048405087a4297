package format

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"filippo.io/age"
)

// DataKeySize is the size of a backup's random AES-256 data key.
const DataKeySize = 32

// Keys is what a restore holds to open encrypted objects: age identities
// for objects wrapped for X25519 recipients, or the passphrase for objects
// wrapped with one or sealed with a plan keyring (an identity of the
// keyring, as `age -d` of the keyring prints it, opens those too). Objects
// with encryption none need neither.
type Keys struct {
	Identities []age.Identity
	Passphrase string
	// MaxScryptWorkFactor caps the scrypt work (log2 N) a passphrase-wrapped
	// key may demand, so a hostile object cannot make a restore spin for
	// hours. 0 means DefaultMaxScryptWorkFactor.
	MaxScryptWorkFactor int
}

// ParseIdentities reads an age identity file: one AGE-SECRET-KEY-1... per
// line, blank lines and # comments ignored (the format `age-keygen` writes).
func ParseIdentities(r io.Reader) ([]age.Identity, error) {
	ids, err := age.ParseIdentities(r)
	if err != nil {
		return nil, fmt.Errorf("parse identities: %w", err)
	}
	return ids, nil
}

// ParseIdentityFile reads the age identity file at path.
func ParseIdentityFile(path string) ([]age.Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open identity file: %w", err)
	}
	defer f.Close()
	ids, err := ParseIdentities(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ids, nil
}

// wrapKey wraps key for the recipients, keyring or passphrase of o
// (defaults applied).
func wrapKey(key []byte, o Options) (KeyWrap, error) {
	var rs []age.Recipient
	kw := KeyWrap{}
	switch {
	case o.Keyring != nil:
		r, err := age.ParseX25519Recipient(o.Keyring.Recipient)
		if err != nil {
			return KeyWrap{}, fmt.Errorf("%w: keyring: %v", ErrInvalidOption, err)
		}
		rs = append(rs, r)
		kw.Scheme, kw.Recipients = SchemeAgeKeyring, []string{r.String()}
		kw.Keyring = bytes.Clone(o.Keyring.Wrapped)
	case o.Passphrase != "":
		r, err := age.NewScryptRecipient(o.Passphrase)
		if err != nil {
			return KeyWrap{}, fmt.Errorf("wrap data key: %w", err)
		}
		if o.ScryptWorkFactor != 0 {
			r.SetWorkFactor(o.ScryptWorkFactor)
		}
		rs = append(rs, r)
		kw.Scheme = SchemeAgeScrypt
	default:
		for i, s := range o.Recipients {
			r, err := age.ParseX25519Recipient(s)
			if err != nil {
				return KeyWrap{}, fmt.Errorf("%w: recipients[%d]: %v", ErrInvalidOption, i, err)
			}
			rs = append(rs, r)
			kw.Recipients = append(kw.Recipients, r.String())
		}
		kw.Scheme = SchemeAgeX25519
	}
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, rs...)
	if err != nil {
		return KeyWrap{}, fmt.Errorf("wrap data key: %w", err)
	}
	if _, err := w.Write(key); err != nil {
		return KeyWrap{}, fmt.Errorf("wrap data key: %w", err)
	}
	if err := w.Close(); err != nil {
		return KeyWrap{}, fmt.Errorf("wrap data key: %w", err)
	}
	kw.Wrapped = buf.Bytes()
	return kw, nil
}

// UnwrapKey opens the data key of kw with k. It fails with ErrWrongKey when
// k holds nothing that opens it.
//
// For scheme age-keyring it takes an identity of k whose recipient is the
// keyring's; otherwise it unlocks the keyring kw carries with k.Passphrase
// through the process's keyring cache, so scrypt runs once per process and
// keyring however many objects are read (see Keyring.Unlock).
func UnwrapKey(kw KeyWrap, k Keys) ([]byte, error) {
	max := k.MaxScryptWorkFactor
	if max == 0 {
		max = DefaultMaxScryptWorkFactor
	}
	var ids []age.Identity
	switch kw.Scheme {
	case SchemeAgeScrypt:
		if k.Passphrase == "" {
			return nil, fmt.Errorf("%w: the data key is wrapped with a passphrase and none was given", ErrWrongKey)
		}
		sid, err := age.NewScryptIdentity(k.Passphrase)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrWrongKey, err)
		}
		sid.SetMaxWorkFactor(max)
		ids = []age.Identity{sid}
	case SchemeAgeX25519:
		if len(k.Identities) == 0 {
			return nil, fmt.Errorf("%w: the data key is wrapped for age recipients %q and no identity was given", ErrWrongKey, kw.Recipients)
		}
		ids = k.Identities
	case SchemeAgeKeyring:
		if len(kw.Recipients) != 1 {
			return nil, fmt.Errorf("%w: key scheme %s with %d recipients", ErrFormat, kw.Scheme, len(kw.Recipients))
		}
		rcp := kw.Recipients[0]
		for _, id := range k.Identities {
			if x, ok := id.(*age.X25519Identity); ok && x.Recipient().String() == rcp {
				ids = []age.Identity{x}
				break
			}
		}
		if ids == nil {
			if k.Passphrase == "" {
				return nil, fmt.Errorf("%w: the data key is wrapped for the keyring %s: give its plan's passphrase or the keyring's identity", ErrWrongKey, rcp)
			}
			id, err := keyrings.unlock(Keyring{Recipient: rcp, Wrapped: kw.Keyring}, k.Passphrase, max)
			if err != nil {
				return nil, err
			}
			ids = []age.Identity{id}
		}
	default:
		return nil, fmt.Errorf("%w: key scheme %q has no data key to open", ErrFormat, kw.Scheme)
	}
	r, err := age.Decrypt(bytes.NewReader(kw.Wrapped), ids...)
	if err != nil {
		var nomatch *age.NoIdentityMatchError
		switch {
		case errors.As(err, &nomatch) && kw.Scheme == SchemeAgeScrypt:
			return nil, fmt.Errorf("%w: passphrase does not open the data key", ErrWrongKey)
		case errors.As(err, &nomatch) && kw.Scheme == SchemeAgeKeyring:
			// The identity is the keyring's recipient's: the wrapped key
			// was not made for it, which its writer never does.
			return nil, fmt.Errorf("%w: the data key is not wrapped for the keyring's recipient %s", ErrCorrupt, kw.Recipients[0])
		case errors.As(err, &nomatch):
			return nil, fmt.Errorf("%w: no identity opens the data key (wrapped for %q)", ErrWrongKey, kw.Recipients)
		default:
			return nil, fmt.Errorf("%w: open data key: %v", ErrFormat, err)
		}
	}
	key, err := io.ReadAll(io.LimitReader(r, DataKeySize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: open data key: %v", ErrCorrupt, err)
	}
	if len(key) != DataKeySize {
		return nil, fmt.Errorf("%w: data key is %d bytes, want %d", ErrFormat, len(key), DataKeySize)
	}
	return key, nil
}
