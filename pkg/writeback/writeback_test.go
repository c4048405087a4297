package writeback_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/backstream/backstream/pkg/writeback"
)

// What goes through a File is the file's content, whatever the sizes of
// the writes and wherever the file's offset was when it began.
func TestFileWritesEveryByte(t *testing.T) {
	for _, size := range []int{0, 1, writeback.Window - 1, writeback.Window, 3*writeback.Window + 5} {
		data := make([]byte, size)
		rng := rand.New(rand.NewPCG(uint64(size), 1))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		path := filepath.Join(t.TempDir(), "out")
		head := []byte("already here\n")
		if err := os.WriteFile(path, head, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Seek(0, io.SeekEnd); err != nil {
			t.Fatal(err)
		}
		w := writeback.New(f)
		// Writes of uneven sizes straddle the windows.
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(3<<20))
			if _, err := w.Write(rest[:n]); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, append(head, data...)) {
			t.Fatalf("%d bytes written: the file holds %d bytes, not what was written", size, len(got)-len(head))
		}
	}
}

// A pipe takes no range writeback: a File on one is a plain writer.
func TestFileOnAPipe(t *testing.T) {
	r, wp, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data := bytes.Repeat([]byte("pipe"), 3*writeback.Window/4)
	done := make(chan []byte)
	go func() {
		got, _ := io.ReadAll(r)
		done <- got
	}()
	w := writeback.New(wp)
	if _, err := io.Copy(w, bytes.NewReader(data)); err != nil {
		t.Fatalf("copy into a pipe through a File: %v", err)
	}
	wp.Close()
	if got := <-done; !bytes.Equal(got, data) {
		t.Fatalf("the pipe carried %d bytes, want %d", len(got), len(data))
	}
}
