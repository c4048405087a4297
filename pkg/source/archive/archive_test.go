package archive_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/source/archive"
)

type entry struct{ name, body string }

func write(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := archive.NewWriter(&buf)
	for _, e := range entries {
		ew, err := w.Create(e.name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(ew, e.body); err != nil {
			t.Fatal(err)
		}
		if err := ew.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readAll(b []byte) ([]entry, error) {
	r := archive.NewReader(bytes.NewReader(b))
	var out []entry
	for {
		name, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		body, err := io.ReadAll(r)
		if err != nil {
			return out, err
		}
		out = append(out, entry{name, string(body)})
	}
}

func TestRoundTrip(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 40000) // several chunks
	tests := []struct {
		name    string
		entries []entry
	}{
		{"none", nil},
		{"one empty entry", []entry{{"a", ""}}},
		{"several", []entry{{"globals.sql", "CREATE ROLE x;"}, {"db/ä.dump", big}, {"z", "z"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readAll(write(t, tt.entries))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.entries) {
				t.Fatalf("got %d entries, want %d", len(got), len(tt.entries))
			}
			for i := range got {
				if got[i] != tt.entries[i] {
					t.Fatalf("entry %d: got %q (%d bytes), want %q", i, got[i].name, len(got[i].body), tt.entries[i].name)
				}
			}
		})
	}
}

// TestTruncated cuts a stream at every length: none may read as complete.
func TestTruncated(t *testing.T) {
	b := write(t, []entry{{"a", "hello"}, {"bb", strings.Repeat("x", 300000)}})
	for n := 0; n < len(b); n += 1 + n/50 {
		if _, err := readAll(b[:n]); err == nil {
			t.Fatalf("stream cut at %d of %d bytes read as complete", n, len(b))
		}
	}
}

func TestBadMagic(t *testing.T) {
	_, err := readAll([]byte("NOTANARCHIVE"))
	if !errors.Is(err, archive.ErrFormat) {
		t.Fatalf("got %v, want ErrFormat", err)
	}
}

func TestSkipUnreadEntry(t *testing.T) {
	b := write(t, []entry{{"a", strings.Repeat("y", 700000)}, {"b", "second"}})
	r := archive.NewReader(bytes.NewReader(b))
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	name, err := r.Next()
	if err != nil || name != "b" {
		t.Fatalf("next = %q, %v", name, err)
	}
}
