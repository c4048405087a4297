// Package datagen produces reproducible test and benchmark data that looks
// like a database dump to a compressor: a seeded mix of random blocks and
// text-like blocks, about 2:1 compressible with zstd at its fastest level.
// It is fast enough (well over 1 GB/s) not to dominate what it measures, and
// it never touches the disk or global random state.
package datagen

import (
	"encoding/binary"
	"io"
	"math/bits"
)

const (
	textPoolSize = 1 << 20
	vocabSize    = 512
	minBlock     = 2 << 10
	maxBlock     = 16 << 10
	// randomShare is the fraction (out of 256) of blocks that are random,
	// tuned so that zstd fastest on 256 KiB chunks compresses about 2:1.
	randomShare = 66
)

// rng is wyrand: one multiply per 8 bytes, good enough statistics for data
// that must merely not compress.
type rng struct{ s uint64 }

func (r *rng) next() uint64 {
	r.s += 0xa0761d6478bd642f
	hi, lo := bits.Mul64(r.s, r.s^0xe7037ed1a0b428db)
	return hi ^ lo
}

type reader struct {
	r     rng
	left  int64
	text  []byte
	block []byte
	pos   int
}

// New returns a reader of size bytes that are a pure function of seed.
func New(seed int64, size int64) io.Reader {
	g := &reader{r: rng{s: uint64(seed) ^ 0x5bd1e9955bd1e995}, left: size, block: make([]byte, 0, maxBlock)}
	g.text = textPool(&g.r)
	return g
}

// textPool builds text from a seeded vocabulary of made-up words, chosen
// with a skew so that some words are common, in lines like a log or a dump.
func textPool(r *rng) []byte {
	const letters = "etaoinshrdlucmfwypvbgkqjxz"
	vocab := make([][]byte, vocabSize)
	for i := range vocab {
		v := r.next()
		n := 2 + int(v%9)
		w := make([]byte, n)
		for j := range w {
			v = v>>5 | r.next()<<59
			// favour the first letters, as English does
			w[j] = letters[(int(v&31)*int(v>>5&31))>>5%len(letters)]
		}
		vocab[i] = w
	}
	pool := make([]byte, 0, textPoolSize+64)
	col := 0
	for len(pool) < textPoolSize {
		v := r.next()
		a, b := v&(vocabSize-1), v>>20&(vocabSize-1)
		w := vocab[a*b/vocabSize] // product of two uniforms: a skewed pick
		pool = append(pool, w...)
		col += len(w) + 1
		switch {
		case v>>40&63 == 0:
			pool = binary.AppendUvarint(pool, v>>48) // a little binary noise, like numbers in a dump
			pool = append(pool, ',')
		case col > 72:
			pool = append(pool, '\n')
			col = 0
		default:
			pool = append(pool, ' ')
		}
	}
	return pool[:textPoolSize]
}

func (g *reader) fill() {
	v := g.r.next()
	n := minBlock + int(v%(maxBlock-minBlock))
	n &^= 7
	b := g.block[:n]
	if v>>32&255 < randomShare {
		for i := 0; i < n; i += 8 {
			binary.LittleEndian.PutUint64(b[i:], g.r.next())
		}
	} else {
		off := int(v>>40) % (textPoolSize - n)
		copy(b, g.text[off:off+n])
	}
	g.block, g.pos = b, 0
}

func (g *reader) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n := 0
	for n < len(p) {
		if g.pos == len(g.block) {
			g.fill()
		}
		k := copy(p[n:], g.block[g.pos:])
		g.pos += k
		n += k
	}
	g.left -= int64(n)
	return n, nil
}
