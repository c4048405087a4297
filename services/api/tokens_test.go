package api

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodHash = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"

func TestParseTokens(t *testing.T) {
	tests := []struct {
		name      string
		give      string
		wantNames []string
		wantErr   []string
	}{
		{"empty", "", nil, nil},
		{"comments and blanks", "# tokens\n\n  \nci read " + goodHash + " # the CI\n", []string{"ci"}, nil},
		{"every role", "a read " + goodHash + "\nb trigger " + goodHash + "\nc restore " + goodHash + "\nd admin " + goodHash + "\n", []string{"a", "b", "c", "d"}, nil},
		{"unknown role", "ci root " + goodHash + "\n", nil, []string{`tokens:1: role "root" is not one of`}},
		{"fields missing", "ci read\n", nil, []string{"tokens:1: want NAME ROLE sha256:HEX, got 2 fields"}},
		{"a name with a space", "ci bot read " + goodHash + "\n", nil, []string{"tokens:1: want NAME ROLE sha256:HEX, got 4 fields"}},
		{"a plain token instead of a hash", "ci read s3cr3t-token\n", nil, []string{`tokens:1: hash of "ci": want sha256:`}},
		{"a short hash", "ci read sha256:abcd\n", nil, []string{`tokens:1: hash of "ci"`}},
		{"a repeated name", "ci read " + goodHash + "\nci admin " + goodHash + "\n", nil, []string{`tokens:2: name "ci" repeats line 1`}},
		{"every bad line is reported", "ci read x\n# ok\nbad! read " + goodHash + "\n", nil, []string{"tokens:1:", "tokens:3: name \"bad!\""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseTokens("tokens", strings.NewReader(tt.give))
			if (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			var names []string
			for _, e := range got {
				names = append(names, e.name)
			}
			if strings.Join(names, ",") != strings.Join(tt.wantNames, ",") {
				t.Errorf("names %v, want %v", names, tt.wantNames)
			}
		})
	}
}

func TestAddTokenRoundTrip(t *testing.T) {
	file := filepath.Join(t.TempDir(), "auth", "api-tokens")
	tok, err := AddToken(file, "ci", RoleTrigger)
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) != 43 {
		t.Errorf("token %d characters, want 43 (32 bytes base64url)", len(tok))
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("tokens file mode %v, want 0600", fi.Mode().Perm())
	}
	data, _ := os.ReadFile(file)
	if strings.Contains(string(data), tok) {
		t.Error("the tokens file holds the token in plain text")
	}
	tf, err := loadTokenFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := tf.lookup(tok); !ok || id.Name != "ci" || id.Role != RoleTrigger || id.RequestedBy() != "api:ci" {
		t.Errorf("lookup = %+v %v, want ci/trigger", id, ok)
	}
	if _, ok := tf.lookup(tok[:42]); ok {
		t.Error("a prefix of the token was accepted")
	}

	refusals := []struct {
		name, tokenName string
		role            Role
		want            string
	}{
		{"a duplicate name", "ci", RoleRead, `name "ci": already in`},
		{"a name with spaces", "ci bot", RoleRead, "no spaces"},
		{"no role", "other", RoleNone, "not one of read"},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := AddToken(file, tt.tokenName, tt.role); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("AddToken(%q, %v) = %v, want an error with %q", tt.tokenName, tt.role, err, tt.want)
			}
		})
	}
	after, _ := os.ReadFile(file)
	if string(after) != string(data) {
		t.Errorf("a refused token changed the file:\n%s", after)
	}
}

func TestLocalTokensAreMadeOnceWithAnAdminToken(t *testing.T) {
	data := t.TempDir()
	path, created, err := LocalTokens(data)
	if err != nil || !created {
		t.Fatalf("LocalTokens = %s %v %v", path, created, err)
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{filepath.Join(data, "auth"), 0o700 | os.ModeDir},
		{filepath.Join(data, LocalTokensFile), 0o600},
		{filepath.Join(data, LocalAdminFile), 0o600},
	} {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.path, fi.Mode(), f.mode)
		}
	}
	admin, _ := os.ReadFile(filepath.Join(data, LocalAdminFile))
	tf, err := loadTokenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := tf.lookup(strings.TrimSpace(string(admin))); !ok || id.Name != LocalAdminName || id.Role != RoleAdmin {
		t.Errorf("admin token: %+v %v", id, ok)
	}
	before, _ := os.ReadFile(path)
	again, created, err := LocalTokens(data)
	if err != nil || created || again != path {
		t.Fatalf("second start: %s %v %v, want the same file, not made again", again, created, err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Error("a second start changed the tokens file")
	}
	if _, _, err := LocalTokens(""); err == nil || !strings.Contains(err.Error(), "--data") {
		t.Errorf("no data directory: %v, want an error naming --data", err)
	}
}
