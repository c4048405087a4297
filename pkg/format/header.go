package format

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
)

// Magic opens every object. Like PNG's, it has a non-ASCII first byte and a
// CR LF, SUB, LF tail, so a text-mode transfer that mangles line ends or a
// file truncated by a DOS tool is caught at once.
const Magic = "\x89BSF\r\n\x1a\n"

// Version is the format version this package writes and reads.
const Version = 1

const (
	fixedHeaderLen = 28      // magic .. variable-section length
	maxVarLen      = 1 << 20 // bound on the variable section a reader accepts
	noncePrefixLen = 7
	maxBackupIDLen = 128
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// KeyWrap is how a backup's data key is kept: wrapped with age for X25519
// recipients ("age-x25519"), a passphrase ("age-scrypt") or the recipient
// of a plan keyring ("age-keyring"), or "none" for an unencrypted object.
// Wrapped is a complete binary age file whose plaintext is the 32-byte data
// key, so `age -d` opens it too. With age-keyring, Recipients holds the
// keyring's one recipient and Keyring the keyring itself (Keyring.Wrapped:
// its identity wrapped with the passphrase), so the object opens with the
// passphrase alone. None of it is a secret: only an identity or the
// passphrase opens it.
type KeyWrap struct {
	Scheme     string   `json:"scheme"`
	Wrapped    []byte   `json:"wrapped,omitempty"`
	Recipients []string `json:"recipients,omitempty"`
	Keyring    []byte   `json:"keyring,omitempty"`
}

// Validate checks that the scheme is known and its fields are consistent.
func (k KeyWrap) Validate() error {
	if k.Scheme != SchemeAgeKeyring && len(k.Keyring) > 0 {
		return fmt.Errorf("scheme %s carries no keyring", k.Scheme)
	}
	switch k.Scheme {
	case SchemeNone:
		if len(k.Wrapped) > 0 || len(k.Recipients) > 0 {
			return errors.New("scheme none carries no wrapped key or recipients")
		}
	case SchemeAgeX25519:
		if len(k.Wrapped) == 0 || len(k.Recipients) == 0 {
			return errors.New("scheme age-x25519 needs wrapped and recipients")
		}
	case SchemeAgeScrypt:
		if len(k.Wrapped) == 0 || len(k.Recipients) > 0 {
			return errors.New("scheme age-scrypt needs wrapped and no recipients")
		}
	case SchemeAgeKeyring:
		if len(k.Wrapped) == 0 || len(k.Recipients) != 1 || len(k.Keyring) == 0 {
			return errors.New("scheme age-keyring needs wrapped, exactly one recipient and the keyring")
		}
	default:
		return fmt.Errorf("scheme %q is not one of none, age-x25519, age-scrypt, age-keyring", k.Scheme)
	}
	return nil
}

// HeaderInfo is the parsed header of an object.
type HeaderInfo struct {
	Version     int
	BackupID    string
	Compression string
	Encryption  string
	ChunkSize   int
	NoncePrefix [noncePrefixLen]byte
	KeyWrap     KeyWrap
	// Size is the length of the header in bytes; frames start there.
	Size int
	// crc is the header's CRC-32C; frame checksums start from it.
	crc uint32
}

// Chain returns the header's filter chain, as Sealer.Chain does.
func (h HeaderInfo) Chain() []string { return chain(h.Compression, h.Encryption) }

func validBackupID(id string) error {
	if id == "" || len(id) > maxBackupIDLen {
		return fmt.Errorf("backup id must be 1..%d bytes", maxBackupIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return fmt.Errorf("backup id %q: byte %d is not one of [A-Za-z0-9._-]", id, i)
		}
	}
	if id[0] == '.' {
		return fmt.Errorf("backup id %q must not start with a dot", id)
	}
	return nil
}

// marshalHeader lays out h as docs/format.md describes and returns the bytes
// and their CRC-32C. The fifth variable field (the keyring) exists only with
// scheme age-keyring, so headers of the other schemes are what they were
// before it.
func marshalHeader(h HeaderInfo) ([]byte, uint32) {
	vars := [][]byte{[]byte(h.BackupID), []byte(h.KeyWrap.Scheme), []byte(strings.Join(h.KeyWrap.Recipients, "\n")), h.KeyWrap.Wrapped}
	if h.KeyWrap.Scheme == SchemeAgeKeyring {
		vars = append(vars, h.KeyWrap.Keyring)
	}
	varLen := 0
	for _, v := range vars {
		varLen += 4 + len(v)
	}
	b := make([]byte, 0, fixedHeaderLen+varLen+4)
	b = append(b, Magic...)
	b = append(b, Version, compressionCodes[h.Compression], encryptionCodes[h.Encryption], 0)
	b = binary.BigEndian.AppendUint32(b, uint32(h.ChunkSize))
	b = append(b, h.NoncePrefix[:]...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(varLen))
	for _, v := range vars {
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	crc := crc32.Checksum(b, castagnoli)
	b = binary.BigEndian.AppendUint32(b, crc)
	return b, crc
}

// readFull reads len(b) bytes; an early end is ErrTruncated naming what.
func readFull(r io.Reader, b []byte, what string) error {
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: object ends inside the %s", ErrTruncated, what)
		}
		return fmt.Errorf("read %s: %w", what, err)
	}
	return nil
}

// ReadHeader reads and checks the header at the start of r and returns it
// with its raw bytes. It reads exactly the header's bytes from r.
func ReadHeader(r io.Reader) (HeaderInfo, []byte, error) {
	fixed := make([]byte, fixedHeaderLen)
	if n, err := io.ReadFull(r, fixed); err != nil {
		switch {
		case errors.Is(err, io.EOF):
			return HeaderInfo{}, nil, fmt.Errorf("%w: empty object", ErrFormat)
		case errors.Is(err, io.ErrUnexpectedEOF):
			if m := min(n, len(Magic)); string(fixed[:m]) != Magic[:m] {
				return HeaderInfo{}, nil, fmt.Errorf("%w: bad magic", ErrFormat)
			}
			return HeaderInfo{}, nil, fmt.Errorf("%w: object ends inside the header", ErrTruncated)
		default:
			return HeaderInfo{}, nil, fmt.Errorf("read header: %w", err)
		}
	}
	if string(fixed[:8]) != Magic {
		return HeaderInfo{}, nil, fmt.Errorf("%w: bad magic %q", ErrFormat, fixed[:8])
	}
	if fixed[8] != Version {
		return HeaderInfo{}, nil, fmt.Errorf("%w: header: format version %d (this reader knows %d)", ErrVersion, fixed[8], Version)
	}
	varLen := binary.BigEndian.Uint32(fixed[24:28])
	if varLen > maxVarLen {
		return HeaderInfo{}, nil, fmt.Errorf("%w: header: variable section of %d bytes exceeds %d", ErrFormat, varLen, maxVarLen)
	}
	raw := make([]byte, fixedHeaderLen+int(varLen)+4)
	copy(raw, fixed)
	if err := readFull(r, raw[fixedHeaderLen:], "header"); err != nil {
		return HeaderInfo{}, nil, err
	}
	h, err := parseHeader(raw)
	return h, raw, err
}

// parseHeader checks a complete raw header (fixed part, variable section, CRC).
func parseHeader(raw []byte) (HeaderInfo, error) {
	n := len(raw)
	crc := crc32.Checksum(raw[:n-4], castagnoli)
	if got := binary.BigEndian.Uint32(raw[n-4:]); got != crc {
		return HeaderInfo{}, fmt.Errorf("%w: header: checksum mismatch (stored %08x, computed %08x)", ErrCorrupt, got, crc)
	}
	h := HeaderInfo{Version: int(raw[8]), Size: n, crc: crc}
	var ok bool
	if h.Compression, ok = compressionName(raw[9]); !ok {
		return HeaderInfo{}, fmt.Errorf("%w: header: unknown compression code %d", ErrFormat, raw[9])
	}
	if h.Encryption, ok = encryptionName(raw[10]); !ok {
		return HeaderInfo{}, fmt.Errorf("%w: header: unknown encryption code %d", ErrFormat, raw[10])
	}
	if raw[11] != 0 || raw[23] != 0 {
		return HeaderInfo{}, fmt.Errorf("%w: header: reserved bytes are not zero", ErrFormat)
	}
	h.ChunkSize = int(binary.BigEndian.Uint32(raw[12:16]))
	if h.ChunkSize < 1 || h.ChunkSize > MaxChunkSize {
		return HeaderInfo{}, fmt.Errorf("%w: header: chunk size %d is not in 1..%d", ErrFormat, h.ChunkSize, MaxChunkSize)
	}
	copy(h.NoncePrefix[:], raw[16:23])
	vars := raw[fixedHeaderLen : n-4]
	var fields [5][]byte
	field := func(i int) error {
		if len(vars) < 4 {
			return fmt.Errorf("%w: header: variable field %d cut short", ErrFormat, i)
		}
		l := binary.BigEndian.Uint32(vars)
		vars = vars[4:]
		if uint64(l) > uint64(len(vars)) {
			return fmt.Errorf("%w: header: variable field %d length %d overruns the header", ErrFormat, i, l)
		}
		fields[i], vars = vars[:l], vars[l:]
		return nil
	}
	for i := range 4 {
		if err := field(i); err != nil {
			return HeaderInfo{}, err
		}
	}
	// The keyring field follows only with its scheme: a fifth field with
	// another scheme, or its absence with age-keyring, is malformed.
	switch keyring := string(fields[1]) == SchemeAgeKeyring; {
	case keyring && len(vars) == 0:
		return HeaderInfo{}, fmt.Errorf("%w: header: key scheme %s without its keyring field", ErrFormat, SchemeAgeKeyring)
	case keyring:
		if err := field(4); err != nil {
			return HeaderInfo{}, err
		}
	case len(vars) != 0:
		return HeaderInfo{}, fmt.Errorf("%w: header: %d unexpected bytes after the variable fields of key scheme %q", ErrFormat, len(vars), fields[1])
	}
	if len(vars) != 0 {
		return HeaderInfo{}, fmt.Errorf("%w: header: %d unexpected bytes after the variable fields", ErrFormat, len(vars))
	}
	h.BackupID = string(fields[0])
	if err := validBackupID(h.BackupID); err != nil {
		return HeaderInfo{}, fmt.Errorf("%w: header: %v", ErrFormat, err)
	}
	h.KeyWrap.Scheme = string(fields[1])
	if len(fields[2]) > 0 {
		h.KeyWrap.Recipients = strings.Split(string(fields[2]), "\n")
	}
	if len(fields[3]) > 0 {
		h.KeyWrap.Wrapped = append([]byte(nil), fields[3]...)
	}
	if len(fields[4]) > 0 {
		h.KeyWrap.Keyring = append([]byte(nil), fields[4]...)
	}
	if err := h.KeyWrap.Validate(); err != nil {
		return HeaderInfo{}, fmt.Errorf("%w: header: key wrap: %v", ErrFormat, err)
	}
	if (h.Encryption == EncryptionNone) != (h.KeyWrap.Scheme == SchemeNone) {
		return HeaderInfo{}, fmt.Errorf("%w: header: encryption %s with key scheme %s", ErrFormat, h.Encryption, h.KeyWrap.Scheme)
	}
	if h.Encryption == EncryptionNone && h.NoncePrefix != [noncePrefixLen]byte{} {
		return HeaderInfo{}, fmt.Errorf("%w: header: nonce prefix set without encryption", ErrFormat)
	}
	return h, nil
}
