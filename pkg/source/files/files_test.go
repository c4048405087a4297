package files_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/files"
	"github.com/backstream/backstream/pkg/source/sourcetest"
)

func writeTree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "a/b/c"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "empty"), 0o700))
	must(os.MkdirAll(filepath.Join(dir, "cache/x"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "top.txt"), []byte("top ünïcode"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "a/b/c/deep.bin"), bytes.Repeat([]byte{0, 1, 2, 255}, 50000), 0o600))
	must(os.WriteFile(filepath.Join(dir, "a/run.sh"), []byte("#!/bin/sh\n"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "a/b/skip.tmp"), []byte("tmp"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "cache/x/big"), []byte("cache"), 0o644))
	must(os.Symlink("b/c/deep.bin", filepath.Join(dir, "a/link")))
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	must(os.Chtimes(filepath.Join(dir, "top.txt"), old, old))
}

func TestConformance(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src)
	s := files.New(files.Config{Path: src})
	sourcetest.Run(t, sourcetest.Case{
		Source:            s,
		DetectsTruncation: true,
		Fresh: func(t *testing.T) (source.Source, source.RestoreOptions, func(t *testing.T)) {
			dst := filepath.Join(t.TempDir(), "restored")
			return s, source.RestoreOptions{Target: dst, Create: true}, func(t *testing.T) {
				want, got := sourcetest.ListTree(t, src), sourcetest.ListTree(t, dst)
				if strings.Join(want, "\n") != strings.Join(got, "\n") {
					t.Fatalf("restored tree differs:\nwant\n%s\ngot\n%s", strings.Join(want, "\n"), strings.Join(got, "\n"))
				}
			}
		},
	})
}

func TestIncludeExclude(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src)
	tests := []struct {
		name    string
		include []string
		exclude []string
		want    []string // regular files and symlinks restored
	}{
		{"all", nil, nil, []string{"a/b/c/deep.bin", "a/b/skip.tmp", "a/link", "a/run.sh", "cache/x/big", "top.txt"}},
		{"exclude base name and dir", nil, []string{"*.tmp", "cache"}, []string{"a/b/c/deep.bin", "a/link", "a/run.sh", "top.txt"}},
		{"include double star", []string{"a/**/*.bin"}, nil, []string{"a/b/c/deep.bin"}},
		{"include with exclude", []string{"a/**"}, []string{"a/b/**"}, []string{"a/link", "a/run.sh"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := files.New(files.Config{Path: src, Include: tt.include, Exclude: tt.exclude})
			var buf bytes.Buffer
			if _, err := s.Backup(context.Background(), &buf); err != nil {
				t.Fatal(err)
			}
			dst := t.TempDir()
			if err := s.Restore(context.Background(), &buf, source.RestoreOptions{Target: dst}); err != nil {
				t.Fatal(err)
			}
			var got []string
			_ = filepath.WalkDir(dst, func(p string, d fs.DirEntry, _ error) error {
				if !d.IsDir() {
					rel, _ := filepath.Rel(dst, p)
					got = append(got, rel)
				}
				return nil
			})
			sort.Strings(got)
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

type entry struct {
	name, link string
	typ        byte
	body       string
}

func craft(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestRestoreRefusesEscapes feeds crafted archives; each must fail with
// ErrUnsafeEntry and leave nothing outside the target.
func TestRestoreRefusesEscapes(t *testing.T) {
	tests := []struct {
		name    string
		entries []entry
	}{
		{"dot dot", []entry{{name: "../evil", typ: tar.TypeReg, body: "x"}}},
		{"nested dot dot", []entry{{name: "a/../../evil", typ: tar.TypeReg, body: "x"}}},
		{"absolute", []entry{{name: "/tmp/evil", typ: tar.TypeReg, body: "x"}}},
		{"symlink absolute", []entry{{name: "l", link: "/etc", typ: tar.TypeSymlink}}},
		{"symlink outside", []entry{{name: "a/l", link: "../../outside", typ: tar.TypeSymlink}}},
		{"hard link outside", []entry{{name: "h", link: "../outside/secret", typ: tar.TypeLink}}},
		{"hard link absolute", []entry{{name: "h", link: "/etc/passwd", typ: tar.TypeLink}}},
		{"write through earlier symlink", []entry{
			{name: "d", typ: tar.TypeDir},
			{name: "l", link: "d", typ: tar.TypeSymlink},
			{name: "l/evil", typ: tar.TypeReg, body: "x"},
		}},
		{"device", []entry{{name: "dev", typ: tar.TypeChar}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			target := filepath.Join(base, "target")
			for _, d := range []string{outside, target} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600); err != nil {
				t.Fatal(err)
			}
			s := files.New(files.Config{Path: target})
			err := s.Restore(context.Background(), bytes.NewReader(craft(t, tt.entries)), source.RestoreOptions{})
			if !errors.Is(err, files.ErrUnsafeEntry) {
				t.Fatalf("got %v, want ErrUnsafeEntry", err)
			}
			got, _ := filepath.Glob(filepath.Join(base, "*"))
			if len(got) != 2 {
				t.Fatalf("something was written beside the target: %v", got)
			}
			if o := sourcetest.ListTree(t, outside); len(o) != 1 {
				t.Fatalf("outside changed: %v", o)
			}
		})
	}
}

// TestRestoreSafeLinksInside keeps links that stay inside.
func TestRestoreSafeLinksInside(t *testing.T) {
	target := t.TempDir()
	b := craft(t, []entry{
		{name: "d/", typ: tar.TypeDir},
		{name: "d/f", typ: tar.TypeReg, body: "data"},
		{name: "d/l", link: "../d/f", typ: tar.TypeSymlink},
		{name: "h", link: "d/f", typ: tar.TypeLink},
	})
	if err := files.New(files.Config{Path: target}).Restore(context.Background(), bytes.NewReader(b), source.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"d/l", "h"} {
		if b, err := os.ReadFile(filepath.Join(target, p)); err != nil || string(b) != "data" {
			t.Fatalf("%s: %q %v", p, b, err)
		}
	}
}

func TestRestoreTruncatedAtEntryBoundary(t *testing.T) {
	b := craft(t, []entry{{name: "f", typ: tar.TypeReg, body: "abc"}})
	cut := b[:len(b)-1024] // drop exactly the end record
	err := files.New(files.Config{Path: t.TempDir()}).Restore(context.Background(), bytes.NewReader(cut), source.RestoreOptions{})
	if !errors.Is(err, source.ErrCorrupt) {
		t.Fatalf("got %v, want ErrCorrupt", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		give string
		want string
	}{
		{"ok", "path: /srv\ninclude: ['**/*.go']", ""},
		{"missing path", "exclude: ['x']", "path: required"},
		{"relative", "path: srv", "path: must be absolute"},
		{"bad glob", "path: /srv\nexclude: ['[']", "exclude[0]: bad glob"},
		{"unknown field", "path: /srv\npaths: [x]", "field paths not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := files.Plugin().Check(source.YAMLDecoder([]byte(tt.give)))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}
