package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The committed schemas must be exactly what the generator makes from the
// current structs and rules; run `go generate ./...` in events/ after
// changing either.
func TestCommittedSchemasAreGenerated(t *testing.T) {
	const dir = "../../schema"
	want, err := Generate("../../payloads.go")
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range want {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: not committed (run go generate ./... in events/): %v", name, err)
			continue
		}
		if !bytes.Equal(got, b) {
			t.Errorf("%s: differs from the generator's output (run go generate ./... in events/)", name)
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, ok := want[filepath.Base(f)]; !ok {
			t.Errorf("%s: no event type makes this schema any more", filepath.Base(f))
		}
	}
}

func TestRunWritesAndPrunes(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "backup.exploded.json")
	if err := os.WriteFile(stale, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(dir, "../../payloads.go"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale schema not removed: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "backup.requested.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"trigger"`) {
		t.Errorf("backup.requested.json lacks trigger:\n%s", b)
	}
}

func TestApplyRules(t *testing.T) {
	tests := []struct {
		name         string
		give         string
		wantRequired bool
		wantKey      string
	}{
		{"required string", "required", true, "minLength"},
		{"name", "name", true, "pattern"},
		{"sha256", "sha256", true, "pattern"},
		{"non-negative", "min0", false, "minimum"},
		{"positive", "gt0", true, "exclusiveMinimum"},
		{"non-empty list", "nonempty", true, "minItems"},
		{"enum", "enum=a|b", true, "enum"},
		{"const", "const=0", false, "const"},
		{"non-zero time", "zeroless", false, "not"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prop := map[string]any{"type": "string"}
			if tt.give == "nonempty" {
				prop["type"] = []any{"array", "null"}
			}
			req, err := applyRules(prop, tt.give)
			if err != nil {
				t.Fatal(err)
			}
			if req != tt.wantRequired {
				t.Errorf("required = %v, want %v", req, tt.wantRequired)
			}
			if _, ok := prop[tt.wantKey]; !ok {
				t.Errorf("no %s in %v", tt.wantKey, prop)
			}
		})
	}
	if _, err := applyRules(map[string]any{}, "mandatory"); err == nil {
		t.Error("unknown rule accepted")
	}
}
