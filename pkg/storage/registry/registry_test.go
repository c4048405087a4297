package registry_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/registry"
)

// strict decodes a YAML block as the plan package does: unknown fields fail.
func strict(src string) registry.Decode {
	return func(v any) error {
		d := yaml.NewDecoder(strings.NewReader(src))
		d.KnownFields(true)
		return d.Decode(v)
	}
}

func TestDefaultNames(t *testing.T) {
	if got := registry.Default().Names(); !slices.Equal(got, []string{"filesystem", "s3"}) {
		t.Fatalf("names = %q", got)
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		backend string
		give    string
		want    string // substring of the error, "" for none
	}{
		{"filesystem ok", "filesystem", "path: /var/backups\n", ""},
		{"filesystem missing path", "filesystem", "{}\n", "path: required"},
		{"filesystem unknown field", "filesystem", "path: /x\npaht: /y\n", "field paht not found"},
		{"s3 ok", "s3", "endpoint: minio:9000\nbucket: b\naccessKey: {env: A}\nsecretKey: {file: /run/s}\npartSize: 8388608\n", ""},
		{"s3 every problem", "s3", "partSize: 1024\n", "bucket: required"},
		{"s3 secret by value", "s3", "endpoint: m\nbucket: b\naccessKey: AKIA\nsecretKey: {env: S}\n", "cannot unmarshal"},
		{"unknown backend", "gcs", "{}\n", "unknown storage backend"},
	}
	r := registry.Default()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := r.Check(tt.backend, strict(tt.give))
			got := ""
			if err != nil {
				got = err.Error()
			}
			if (tt.want == "") != (err == nil) || !strings.Contains(got, tt.want) {
				t.Fatalf("Check = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestUnknownIsSentinel(t *testing.T) {
	_, err := registry.Default().Open(context.Background(), "tape", strict("{}"))
	if !errors.Is(err, registry.ErrUnknownBackend) {
		t.Fatalf("open unknown: %v", err)
	}
}

func TestOpenFilesystem(t *testing.T) {
	dir := t.TempDir()
	s, err := registry.Default().Open(context.Background(), "filesystem", strict("path: "+dir+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Put(context.Background(), "a/b", strings.NewReader("x"), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestDuplicatePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("duplicate name did not panic")
		}
	}()
	registry.New(registry.Filesystem(), registry.Filesystem())
}
