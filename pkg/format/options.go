package format

import (
	"fmt"
	"strings"

	"filippo.io/age"
)

// Filter names as they appear in Options, Chain and manifests.
const (
	CompressionNone   = "none"
	CompressionSnappy = "snappy"
	CompressionZstd   = "zstd"

	EncryptionNone   = "none"
	EncryptionAESGCM = "aes-256-gcm"

	ZstdFastest = "fastest"
	ZstdDefault = "default"
	ZstdBetter  = "better"
)

// Key wrap schemes (KeyWrap.Scheme).
const (
	SchemeNone      = "none"
	SchemeAgeX25519 = "age-x25519"
	SchemeAgeScrypt = "age-scrypt"
	// SchemeAgeKeyring wraps the data key for the X25519 recipient of a
	// plan keyring and carries the keyring (its identity wrapped with the
	// passphrase) in the header: scrypt runs once per process and
	// keyring, not once per backup (see Keyring).
	SchemeAgeKeyring = "age-keyring"
)

// Limits of the format.
const (
	// DefaultChunkSize is the chunk size used when Options.ChunkSize is 0.
	DefaultChunkSize = 256 << 10
	// MaxChunkSize is the largest chunk size a header may declare.
	MaxChunkSize = 16 << 20
	// MaxFrames is the number of frames one object can hold: the STREAM
	// nonce carries a 32-bit frame counter.
	MaxFrames = 1 << 32
	// DefaultMaxScryptWorkFactor is the largest scrypt work factor (log2 N)
	// a reader accepts unless Keys says otherwise, and the largest a writer
	// may choose.
	DefaultMaxScryptWorkFactor = 22
	// DefaultKeyringWorkFactor is the scrypt work factor (log2 N) of a
	// keyring when NewKeyring is given 0: 2^16 costs 64 MiB and a fraction
	// of a second, paid once per process, not per backup (docs/security.md).
	DefaultKeyringWorkFactor = 16
)

// Codes of the filters in the header.
const (
	codeNone   byte = 0
	codeSnappy byte = 1
	codeZstd   byte = 2
	codeAESGCM byte = 1
)

var compressionCodes = map[string]byte{CompressionNone: codeNone, CompressionSnappy: codeSnappy, CompressionZstd: codeZstd}
var encryptionCodes = map[string]byte{EncryptionNone: codeNone, EncryptionAESGCM: codeAESGCM}

func compressionName(c byte) (string, bool) {
	for n, v := range compressionCodes {
		if v == c {
			return n, true
		}
	}
	return "", false
}

func encryptionName(c byte) (string, bool) {
	for n, v := range encryptionCodes {
		if v == c {
			return n, true
		}
	}
	return "", false
}

// Options choose the filter chain and key wrapping of one backup.
//
// Zero values mean: Compression "zstd", ZstdLevel "default", Encryption
// "aes-256-gcm" (which then needs one of Recipients, Keyring or a
// Passphrase), ChunkSize DefaultChunkSize, ScryptWorkFactor age's default
// (18). Encryption must be set to "none" explicitly to store plaintext.
type Options struct {
	Compression string // none | snappy | zstd
	ZstdLevel   string // fastest | default | better
	Encryption  string // none | aes-256-gcm
	// Recipients are age X25519 public keys ("age1..."): whoever holds one of
	// the matching identities can restore. Exclusive with Keyring and
	// Passphrase.
	Recipients []string
	// Keyring wraps the data key for the keyring's recipient (scheme
	// age-keyring, no scrypt) and stores the keyring in the header, so the
	// passphrase alone restores the object. It is how the pipeline seals
	// with a passphrase. Exclusive with Recipients and Passphrase.
	Keyring *Keyring
	// Passphrase wraps the data key with age's scrypt recipient (scheme
	// age-scrypt): one scrypt per object to write and another to read, so
	// the pipeline uses Keyring; this stays for test vectors and tools.
	// Exclusive with Recipients and Keyring (age allows a passphrase only
	// as the sole recipient).
	Passphrase string
	// ChunkSize is the largest plaintext chunk one frame holds, 1..MaxChunkSize.
	ChunkSize int
	// ScryptWorkFactor is log2 of scrypt's N, 1..DefaultMaxScryptWorkFactor.
	ScryptWorkFactor int
	// Concurrency is how many frames the caller seals at once; the sealer
	// keeps that many zstd encoders, each holding about twice ChunkSize of
	// history (17.5 MiB for two at 4 MiB frames). 0 means GOMAXPROCS.
	Concurrency int
}

// withDefaults returns o with zero fields set to their defaults.
func (o Options) withDefaults() Options {
	if o.Compression == "" {
		o.Compression = CompressionZstd
	}
	if o.ZstdLevel == "" {
		o.ZstdLevel = ZstdDefault
	}
	if o.Encryption == "" {
		o.Encryption = EncryptionAESGCM
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	return o
}

// Validate reports every problem of o (after defaults), each with its field
// name, wrapped in ErrInvalidOption.
func (o Options) Validate() error {
	o = o.withDefaults()
	var probs []string
	keys := 0
	for _, set := range []bool{len(o.Recipients) > 0, o.Keyring != nil, o.Passphrase != ""} {
		if set {
			keys++
		}
	}
	if _, ok := compressionCodes[o.Compression]; !ok {
		probs = append(probs, fmt.Sprintf("compression: %q is not one of none, snappy, zstd", o.Compression))
	}
	switch o.ZstdLevel {
	case ZstdFastest, ZstdDefault, ZstdBetter:
	default:
		probs = append(probs, fmt.Sprintf("zstdLevel: %q is not one of fastest, default, better", o.ZstdLevel))
	}
	switch o.Encryption {
	case EncryptionNone:
		if keys > 0 {
			probs = append(probs, "encryption: none, but recipients, a keyring or a passphrase are set")
		}
	case EncryptionAESGCM:
		switch {
		case keys > 1:
			probs = append(probs, "recipients, keyring, passphrase: set only one")
		case keys == 0:
			probs = append(probs, "recipients, keyring, passphrase: encryption aes-256-gcm needs one of them")
		}
		for i, r := range o.Recipients {
			if _, err := age.ParseX25519Recipient(r); err != nil {
				probs = append(probs, fmt.Sprintf("recipients[%d]: not an age X25519 recipient (age1...): %v", i, err))
			}
		}
		if o.Keyring != nil {
			if err := o.Keyring.Validate(); err != nil {
				probs = append(probs, "keyring: "+err.Error())
			}
		}
	default:
		probs = append(probs, fmt.Sprintf("encryption: %q is not one of none, aes-256-gcm", o.Encryption))
	}
	if o.ChunkSize < 1 || o.ChunkSize > MaxChunkSize {
		probs = append(probs, fmt.Sprintf("chunkSize: %d is not in 1..%d", o.ChunkSize, MaxChunkSize))
	}
	if o.ScryptWorkFactor < 0 || o.ScryptWorkFactor > DefaultMaxScryptWorkFactor {
		probs = append(probs, fmt.Sprintf("scryptWorkFactor: %d is not in 1..%d (0 for the default)", o.ScryptWorkFactor, DefaultMaxScryptWorkFactor))
	}
	if o.Concurrency < 0 {
		probs = append(probs, fmt.Sprintf("concurrency: %d is negative (0 for GOMAXPROCS)", o.Concurrency))
	}
	if len(probs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidOption, strings.Join(probs, "; "))
	}
	return nil
}

// Chain returns the active filters in the order they are applied, e.g.
// ["zstd", "aes-256-gcm"]; "none" entries are left out, so plaintext
// storage is an empty chain.
func chain(compression, encryption string) []string {
	c := []string{}
	if compression != CompressionNone {
		c = append(c, compression)
	}
	if encryption != EncryptionNone {
		c = append(c, encryption)
	}
	return c
}

// ParseChain is the inverse of Sealer.Chain: it returns the compression and
// encryption a chain names.
func ParseChain(c []string) (compression, encryption string, err error) {
	compression, encryption = CompressionNone, EncryptionNone
	rest := c
	if len(rest) > 0 && rest[0] != EncryptionAESGCM {
		if _, ok := compressionCodes[rest[0]]; !ok || rest[0] == CompressionNone {
			return "", "", fmt.Errorf("%w: chain %q: unknown filter %q", ErrFormat, c, rest[0])
		}
		compression, rest = rest[0], rest[1:]
	}
	if len(rest) > 0 {
		if rest[0] != EncryptionAESGCM {
			return "", "", fmt.Errorf("%w: chain %q: unknown filter %q", ErrFormat, c, rest[0])
		}
		encryption, rest = rest[0], rest[1:]
	}
	if len(rest) > 0 {
		return "", "", fmt.Errorf("%w: chain %q: unexpected %q after encryption", ErrFormat, c, rest[0])
	}
	return compression, encryption, nil
}
