package source_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/all"
	"github.com/backstream/backstream/pkg/source/files"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

// TestTarExtractFiles backs up a tree with the files plugin, extracts the
// stream through the registry as files.tar, and has the system tar list
// and unpack it into the same tree.
func TestTarExtractFiles(t *testing.T) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		testenv.Missing(t, "tar")
	}
	src := t.TempDir()
	for name, body := range map[string]string{"a.txt": "alpha", "sub/b.bin": strings.Repeat("\x00b", 5000), "sub/deeper/c": ""} {
		p := filepath.Join(src, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if _, err := files.New(files.Config{Path: src}).Backup(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	p, err := all.Registry().Lookup(files.Name)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	names, err := p.ExtractTo(context.Background(), bytes.NewReader(buf.Bytes()), dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"files.tar"}) {
		t.Fatalf("names %q", names)
	}
	archive := filepath.Join(dir, "files.tar")
	if got, err := os.ReadFile(archive); err != nil || !bytes.Equal(got, buf.Bytes()) {
		t.Fatalf("files.tar differs from the stream (%v)", err)
	}
	list, err := exec.Command(tarBin, "-tf", archive).CombinedOutput()
	if err != nil {
		t.Fatalf("tar -tf: %v: %s", err, list)
	}
	for _, want := range []string{"a.txt", "sub/b.bin", "sub/deeper/c"} {
		if !strings.Contains(string(list), want) {
			t.Fatalf("tar -tf lacks %s:\n%s", want, list)
		}
	}
	out := t.TempDir()
	if msg, err := exec.Command(tarBin, "-xf", archive, "-C", out).CombinedOutput(); err != nil {
		t.Fatalf("tar -xf: %v: %s", err, msg)
	}
	if got, want := sourcetest.ListTree(t, out), sourcetest.ListTree(t, src); !slices.Equal(got, want) {
		t.Fatalf("unpacked tree\n%v\nwant\n%v", got, want)
	}

	// Cut at the last entry's end (archive/tar alone sees a clean end),
	// inside an entry, or empty: ErrCorrupt, and nothing left.
	for _, cut := range []int{buf.Len() - 1024, buf.Len() - 1500, 0} {
		dir := t.TempDir()
		if _, err := p.ExtractTo(context.Background(), bytes.NewReader(buf.Bytes()[:cut]), dir); !errors.Is(err, source.ErrCorrupt) {
			t.Fatalf("cut at %d of %d: got %v, want ErrCorrupt", cut, buf.Len(), err)
		}
		if got := sourcetest.ListTree(t, dir); len(got) != 0 {
			t.Fatalf("cut at %d: left %v", cut, got)
		}
	}
}

func TestExtractToUnsupported(t *testing.T) {
	p, err := all.Registry().Lookup("command")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExtractTo(context.Background(), bytes.NewReader(nil), t.TempDir()); !errors.Is(err, source.ErrUnsupported) {
		t.Fatalf("got %v, want ErrUnsupported", err)
	}
}

func TestFileName(t *testing.T) {
	tests := []struct{ give, want string }{
		{"orders", "orders"},
		{"a/b", "a%2Fb"},
		{"..", "%2E."},
		{".hidden", "%2Ehidden"},
		{"50%", "50%25"},
		{`back\slash`, "back%5Cslash"},
		{"line\nbreak", "line%0Abreak"},
		{"Grüße", "Grüße"},
		{"", "%00"},
	}
	for _, tt := range tests {
		if got := source.FileName(tt.give); got != tt.want {
			t.Errorf("FileName(%q) = %q, want %q", tt.give, got, tt.want)
		}
	}
}
