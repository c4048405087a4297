// Package sourcetest is the conformance suite every source plugin runs
// against its real server, and the seed and compare helpers that the
// end-to-end tests reuse. Nothing here is a mock: a Case is backed by a real
// service the test started or found (pkg/testenv).
package sourcetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/backstream/backstream/pkg/source"
)

// Case is one plugin under test, already seeded with data.
type Case struct {
	// Source backs up the seeded data.
	Source source.Source
	// Fresh prepares an empty restore target and returns the source that
	// restores into it, the options naming it, and a check that compares the
	// restored data with the seed. It is called once per subtest that restores.
	Fresh func(t *testing.T) (source.Source, source.RestoreOptions, func(t *testing.T))
	// DetectsTruncation says Restore must fail on a stream cut in half. Plain
	// SQL replayed by a client cannot always tell; containers can.
	DetectsTruncation bool
}

// Run runs the suite:
//   - roundtrip: Backup into memory, Restore into a fresh target, compare;
//   - cancelled: Backup under a cancelled context returns an error;
//   - writer fails: Backup whose writer fails returns an error, never nil;
//   - truncated: Restore of half the stream fails (when DetectsTruncation).
func Run(t *testing.T, c Case) {
	t.Helper()
	var dump []byte
	t.Run("roundtrip", func(t *testing.T) {
		var buf bytes.Buffer
		desc, err := c.Source.Backup(context.Background(), &buf)
		if err != nil {
			t.Fatalf("backup: %v", err)
		}
		if buf.Len() == 0 {
			t.Fatal("backup: empty dump")
		}
		for k, v := range desc {
			if k == "" || v == "" {
				t.Errorf("description has empty %q=%q", k, v)
			}
		}
		dump = buf.Bytes()
		dst, opts, check := c.Fresh(t)
		if err := dst.Restore(context.Background(), bytes.NewReader(dump), opts); err != nil {
			t.Fatalf("restore: %v", err)
		}
		check(t)
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := c.Source.Backup(ctx, io.Discard); err == nil {
			t.Fatal("backup under a cancelled context returned nil")
		}
	})
	t.Run("writer fails", func(t *testing.T) {
		_, err := c.Source.Backup(context.Background(), &failAfter{n: 100})
		if err == nil {
			t.Fatal("backup whose writer failed returned nil")
		}
	})
	if c.DetectsTruncation {
		t.Run("truncated", func(t *testing.T) {
			if dump == nil {
				t.Skip("roundtrip failed")
			}
			dst, opts, _ := c.Fresh(t)
			if err := dst.Restore(context.Background(), bytes.NewReader(dump[:len(dump)/2]), opts); err == nil {
				t.Fatal("restore of half a stream returned nil")
			}
		})
	}
}

// errWriterFailed is what failAfter returns.
var errWriterFailed = errors.New("sourcetest: writer failed")

// failAfter accepts n bytes, then fails every write, as a broken downstream does.
type failAfter struct{ n int }

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) <= f.n {
		f.n -= len(p)
		return len(p), nil
	}
	k := f.n
	f.n = 0
	return k, errWriterFailed
}

// CancelAfter is a writer that cancels a context after n bytes went through
// it to w: the way to kill a dump child mid-stream in a failure test.
type CancelAfter struct {
	W      io.Writer
	N      int
	Cancel context.CancelFunc
}

func (c *CancelAfter) Write(p []byte) (int, error) {
	n, err := c.W.Write(p)
	c.N -= n
	if c.N <= 0 {
		c.Cancel()
	}
	return n, err
}

// CallbackAfter is a writer that calls F once, after the first write: for
// killing a server while its dump streams.
type CallbackAfter struct {
	W    io.Writer
	F    func()
	done bool
}

func (c *CallbackAfter) Write(p []byte) (int, error) {
	n, err := c.W.Write(p)
	if !c.done {
		c.done = true
		c.F()
	}
	return n, err
}
