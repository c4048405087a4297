package format

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"runtime"
	"slices"

	"github.com/golang/snappy"
	"github.com/klauspost/compress/zstd"
)

const (
	frameHeaderLen = 16
	tagLen         = 16
	flagFinal      = 0x01
	aadLen         = sha256.Size + 4 + 1
)

// maxBodyLen bounds a frame's stored body for a chunk size: enough for
// snappy's and zstd's worst case expansion plus the GCM tag.
func maxBodyLen(chunkSize int) int { return chunkSize + chunkSize/6 + 64 + tagLen }

// frameLen is the most bytes Seal appends for a chunk of chunkSize bytes.
func frameLen(chunkSize int) int { return frameHeaderLen + maxBodyLen(chunkSize) }

// Sealer turns the chunks of one backup into frames. It holds the backup's
// data key in memory and never exposes it; what leaves it (Header, KeyWrap,
// frames) is safe to publish and store.
//
// Seal may be called from many goroutines at once, for different indexes,
// in any order; each index must be sealed at most once, and exactly the
// last index with final set. Frames are written after Header in index order.
type Sealer struct {
	hdr    HeaderInfo
	raw    []byte
	crcBuf [4]byte
	aadSum [sha256.Size]byte
	aead   cipher.AEAD
	zenc   *zstd.Encoder
	zlevel string
}

// NewSealer prepares the sealing of backup backupID: it draws a random data
// key and nonce prefix, wraps the key for o's recipients, keyring or
// passphrase, and lays out the header. backupID must be 1..128 bytes of [A-Za-z0-9._-]
// (a ULID fits).
func NewSealer(backupID string, o Options) (*Sealer, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("new sealer: %w", err)
	}
	if err := validBackupID(backupID); err != nil {
		return nil, fmt.Errorf("new sealer: %w: %v", ErrInvalidOption, err)
	}
	o = o.withDefaults()
	h := HeaderInfo{Version: Version, BackupID: backupID, Compression: o.Compression, Encryption: o.Encryption, ChunkSize: o.ChunkSize, KeyWrap: KeyWrap{Scheme: SchemeNone}}
	var key []byte
	if o.Encryption == EncryptionAESGCM {
		key = make([]byte, DataKeySize)
		if _, err := rand.Read(key); err != nil {
			return nil, fmt.Errorf("new sealer: data key: %w", err)
		}
		if _, err := rand.Read(h.NoncePrefix[:]); err != nil {
			return nil, fmt.Errorf("new sealer: nonce prefix: %w", err)
		}
		kw, err := wrapKey(key, o)
		if err != nil {
			return nil, fmt.Errorf("new sealer: %w", err)
		}
		h.KeyWrap = kw
	}
	return newSealer(h, key, o.ZstdLevel, o.Concurrency)
}

// newSealer builds a Sealer from a complete header and its data key; the
// test vector generator uses it to make reproducible objects.
func newSealer(h HeaderInfo, key []byte, zstdLevel string, concurrency int) (*Sealer, error) {
	s := &Sealer{hdr: h}
	s.raw, s.hdr.crc = marshalHeader(h)
	s.hdr.Size = len(s.raw)
	binary.BigEndian.PutUint32(s.crcBuf[:], s.hdr.crc)
	s.aadSum = sha256.Sum256(s.raw)
	if h.Encryption == EncryptionAESGCM {
		aead, err := newAEAD(key)
		if err != nil {
			return nil, fmt.Errorf("new sealer: %w", err)
		}
		s.aead = aead
	}
	if h.Compression == CompressionZstd {
		if concurrency <= 0 {
			concurrency = runtime.GOMAXPROCS(0)
		}
		enc, err := newZstdEncoder(zstdLevel, concurrency, h.ChunkSize)
		if err != nil {
			return nil, fmt.Errorf("new sealer: %w", err)
		}
		s.zenc, s.zlevel = enc, zstdLevel
	}
	return s, nil
}

// newZstdEncoder returns the encoder of frames of chunkSize bytes at
// level: EncodeAll may run concurrency frames at once, or one frame is
// written to it as a stream (FrameWriter).
func newZstdEncoder(level string, concurrency, chunkSize int) (*zstd.Encoder, error) {
	lvl := map[string]zstd.EncoderLevel{ZstdFastest: zstd.SpeedFastest, ZstdDefault: zstd.SpeedDefault, ZstdBetter: zstd.SpeedBetterCompression}[level]
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(lvl),
		zstd.WithEncoderConcurrency(concurrency),
		zstd.WithEncoderCRC(false), // frames carry CRC-32C and a GCM tag already
		zstd.WithZeroFrames(true),  // an empty chunk is still a valid zstd frame
		zstd.WithWindowSize(zstdWindow(chunkSize)),
		// A frame never reaches back beyond itself, so the encoder's
		// history needs the window and one block, not twice the window
		// (klauspost's default, which only saves moving the history of a
		// stream longer than its window): 4 MiB less per encoder at
		// 4 MiB frames, the same output.
		zstd.WithLowerEncoderMem(true),
		// The fastest level stores a block without matches as raw
		// literals unless told to entropy-code it: hex dumps
		// (mariadb-dump --hex-blob) then stay at their full size, where
		// zstd -1 halves them. Measured on 256 KiB chunks, one core:
		// hex 1.00 → 0.50 of its size at ~700 MB/s; random data
		// unchanged in size, 1300 → 760 MB/s; both far above what the
		// pipeline moves (docs/bench.md).
		zstd.WithAllLitEntropyCompression(true),
	)
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	return enc, nil
}

// zstdWindow is the smallest power of two zstd accepts that covers a chunk:
// a frame never refers back further than its own chunk.
func zstdWindow(chunkSize int) int {
	w := zstd.MinWindowSize
	for w < chunkSize && w < zstd.MaxWindowSize {
		w <<= 1
	}
	return w
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("aes: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("gcm: %w", err)
	}
	return aead, nil
}

// Header returns the object header, to be written before the first frame.
func (s *Sealer) Header() []byte { return slices.Clone(s.raw) }

// HeaderInfo returns the parsed form of Header.
func (s *Sealer) HeaderInfo() HeaderInfo { return s.hdr }

// KeyWrap returns the wrapped data key, for the manifest.
func (s *Sealer) KeyWrap() KeyWrap {
	kw := s.hdr.KeyWrap
	kw.Wrapped = slices.Clone(kw.Wrapped)
	kw.Recipients = slices.Clone(kw.Recipients)
	kw.Keyring = slices.Clone(kw.Keyring)
	return kw
}

// Chain returns the filters applied in order, e.g. ["zstd", "aes-256-gcm"].
func (s *Sealer) Chain() []string { return s.hdr.Chain() }

// ChunkSize returns the largest chunk Seal accepts.
func (s *Sealer) ChunkSize() int { return s.hdr.ChunkSize }

// MaxFrameLen returns the largest frame Seal can produce, for sizing buffers
// and checking against a transport's payload limit.
func (s *Sealer) MaxFrameLen() int { return frameLen(s.hdr.ChunkSize) }

// MaxFrameLen returns the largest frame a Sealer of chunkSize can produce:
// a transport that carries frames of one chunk size in pieces of another
// sizes its messages with it.
func MaxFrameLen(chunkSize int) int { return frameLen(chunkSize) }

// Seal compresses and encrypts chunk as frame number index and appends the
// whole frame to dst. final marks the last frame of the object; an empty
// backup is one empty final frame. chunk may be at most ChunkSize bytes.
// Seal is safe for concurrent use; dst must not be shared between calls.
func (s *Sealer) Seal(dst []byte, index uint64, final bool, chunk []byte) ([]byte, error) {
	if len(chunk) > s.hdr.ChunkSize {
		return dst, fmt.Errorf("seal frame %d: %w: chunk of %d bytes exceeds chunk size %d", index, ErrInvalidOption, len(chunk), s.hdr.ChunkSize)
	}
	if index >= MaxFrames {
		return dst, fmt.Errorf("seal frame %d: %w: an object holds at most %d frames", index, ErrInvalidOption, uint64(MaxFrames))
	}
	start := len(dst)
	dst = slices.Grow(dst, frameLen(len(chunk)))
	dst = dst[:start+frameHeaderLen]
	bodyStart := len(dst)
	switch s.hdr.Compression {
	case CompressionNone:
		dst = append(dst, chunk...)
	case CompressionSnappy:
		enc := snappy.Encode(dst[bodyStart:cap(dst)], chunk)
		dst = append(dst, enc...) // enc aliases dst's spare capacity: this copy is in place
	case CompressionZstd:
		dst = s.zenc.EncodeAll(chunk, dst)
	}
	return s.finishFrame(dst, start, index, final)
}

// finishFrame encrypts the body of the frame that begins at dst[start:]
// (its header's place, then the compressed body) in place, fills in the
// frame header and returns dst.
func (s *Sealer) finishFrame(dst []byte, start int, index uint64, final bool) ([]byte, error) {
	bodyStart := start + frameHeaderLen
	if s.aead != nil {
		var nonce [12]byte
		var aad [aadLen]byte
		s.nonceAAD(&nonce, &aad, uint32(index), final)
		body := dst[bodyStart:]
		dst = append(dst[:bodyStart], s.aead.Seal(body[:0], nonce[:], body, aad[:])...)
	}
	bodyLen := len(dst) - bodyStart
	if bodyLen > maxBodyLen(s.hdr.ChunkSize) {
		return dst[:start], fmt.Errorf("seal frame %d: body of %d bytes exceeds the format's bound", index, bodyLen)
	}
	fh := dst[start:bodyStart]
	binary.BigEndian.PutUint32(fh[0:4], uint32(bodyLen))
	binary.BigEndian.PutUint32(fh[4:8], uint32(index))
	fh[8], fh[9], fh[10], fh[11] = 0, 0, 0, 0
	if final {
		fh[8] = flagFinal
	}
	binary.BigEndian.PutUint32(fh[12:16], frameCRC(s.crcBuf, fh[:12], dst[bodyStart:]))
	return dst, nil
}

// nonceAAD builds a frame's STREAM nonce (prefix ‖ counter ‖ last-flag) and
// its additional data (SHA-256 of the header ‖ index ‖ final flag).
func (s *Sealer) nonceAAD(nonce *[12]byte, aad *[aadLen]byte, index uint32, final bool) {
	buildNonceAAD(nonce, aad, s.hdr.NoncePrefix, s.aadSum, index, final)
}

func buildNonceAAD(nonce *[12]byte, aad *[aadLen]byte, prefix [noncePrefixLen]byte, hdrSum [sha256.Size]byte, index uint32, final bool) {
	var f byte
	if final {
		f = 1
	}
	copy(nonce[:7], prefix[:])
	binary.BigEndian.PutUint32(nonce[7:11], index)
	nonce[11] = f
	copy(aad[:sha256.Size], hdrSum[:])
	binary.BigEndian.PutUint32(aad[sha256.Size:], index)
	aad[sha256.Size+4] = f
}

// frameCRC is CRC-32C over the header's CRC, the first 12 bytes of the frame
// header and the body: chaining from the header's CRC ties the frame to its
// object, so a frame pasted from another object fails even without a key.
func frameCRC(hdrCRC [4]byte, fh, body []byte) uint32 {
	c := crc32.Update(0, castagnoli, hdrCRC[:])
	c = crc32.Update(c, castagnoli, fh)
	return crc32.Update(c, castagnoli, body)
}
