package api

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Role is what an identity may do. Roles are ordered: each one may do what
// the roles below it may.
type Role int

// The roles, lowest first. RoleNone is no role at all (a client
// certificate whose OUs name none).
const (
	RoleNone Role = iota
	RoleRead
	RoleTrigger
	RoleRestore
	RoleAdmin
)

var roleNames = []string{"none", "read", "trigger", "restore", "admin"}

func (r Role) String() string {
	if r < 0 || int(r) >= len(roleNames) {
		return fmt.Sprintf("role(%d)", int(r))
	}
	return roleNames[r]
}

// ParseRole reads a role's name.
func ParseRole(s string) (Role, error) {
	for i, n := range roleNames[1:] {
		if s == n {
			return Role(i + 1), nil
		}
	}
	return RoleNone, fmt.Errorf("role %q is not one of read, trigger, restore, admin", s)
}

// Identity is who made a request, as authenticated.
type Identity struct {
	// Name is the token's name or the client certificate's CN.
	Name string
	Role Role
	// Via is "token" or "certificate".
	Via string
}

// RequestedBy is how the identity appears in events and run records.
func (id Identity) RequestedBy() string { return "api:" + id.Name }

// namePattern keeps a token name one field of its line and readable in
// logs and run records.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$`)

// ValidTokenName checks a token's name.
func ValidTokenName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("name %q: must be 1-64 letters, digits and . _ : @ - (no spaces), starting with a letter or digit", name)
	}
	return nil
}

const hashPrefix = "sha256:"

type tokenEntry struct {
	name string
	role Role
	hash [sha256.Size]byte
	line int
}

// parseTokens reads a tokens file: one `NAME ROLE sha256:HEX` a line, where
// HEX is the SHA-256 of the token as presented; # starts a comment. file
// names the source in errors, which report every bad line.
func parseTokens(file string, r io.Reader) ([]tokenEntry, error) {
	var out []tokenEntry
	var problems []error
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		bad := func(format string, args ...any) {
			problems = append(problems, fmt.Errorf("%s:%d: %s", file, n, fmt.Sprintf(format, args...)))
		}
		if len(f) != 3 {
			bad("want NAME ROLE sha256:HEX, got %d fields", len(f))
			continue
		}
		e := tokenEntry{name: f[0], line: n}
		if err := ValidTokenName(f[0]); err != nil {
			bad("%v", err)
			continue
		}
		if first, ok := seen[f[0]]; ok {
			bad("name %q repeats line %d", f[0], first)
			continue
		}
		role, err := ParseRole(f[1])
		if err != nil {
			bad("%v", err)
			continue
		}
		e.role = role
		h, ok := strings.CutPrefix(f[2], hashPrefix)
		raw, err := hex.DecodeString(h)
		if !ok || err != nil || len(raw) != sha256.Size {
			bad("hash of %q: want sha256: and 64 hex digits", f[0])
			continue
		}
		copy(e.hash[:], raw)
		seen[f[0]] = n
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	if len(problems) > 0 {
		return nil, errors.Join(problems...)
	}
	return out, nil
}

// tokenFile is a tokens file, read again when it changes so that a token
// added (or a file rotated by a secret mount) counts without a restart.
type tokenFile struct {
	path string

	mu      sync.Mutex
	entries []tokenEntry
	mod     time.Time
	size    int64
	// failed is the modification time of a version that did not parse, so
	// it is reported once, not on every request.
	failed time.Time
}

func loadTokenFile(path string) (*tokenFile, error) {
	t := &tokenFile{path: path}
	if err := t.refresh(); err != nil {
		return nil, err
	}
	return t, nil
}

// refresh reads the file again if its size or modification time changed.
// A version that does not parse leaves the previous tokens in force and is
// reported once.
func (t *tokenFile) refresh() error {
	fi, err := os.Stat(t.path)
	if err != nil {
		return fmt.Errorf("tokens file: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.entries != nil && fi.ModTime().Equal(t.mod) && fi.Size() == t.size {
		return nil
	}
	if fi.ModTime().Equal(t.failed) {
		return nil
	}
	data, err := os.ReadFile(t.path)
	if err != nil {
		return fmt.Errorf("tokens file: %w", err)
	}
	entries, err := parseTokens(t.path, bytes.NewReader(data))
	if err != nil {
		t.failed = fi.ModTime()
		return err
	}
	if entries == nil {
		entries = []tokenEntry{}
	}
	t.entries, t.mod, t.size, t.failed = entries, fi.ModTime(), fi.Size(), time.Time{}
	return nil
}

// lookup finds the entry whose hash is the presented token's. Every entry
// is compared in constant time, so neither the match nor its position
// shows in the time taken.
func (t *tokenFile) lookup(presented string) (Identity, bool) {
	sum := sha256.Sum256([]byte(presented))
	t.mu.Lock()
	entries := t.entries
	t.mu.Unlock()
	found := -1
	for i := range entries {
		if subtle.ConstantTimeCompare(sum[:], entries[i].hash[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Identity{}, false
	}
	return Identity{Name: entries[found].name, Role: entries[found].role, Via: "token"}, true
}

// NewToken makes a token (32 random bytes, base64url without padding) and
// the hash its tokens file line holds.
func NewToken() (token, hash string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("random token: %w", err)
	}
	token = base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(token))
	return token, hashPrefix + hex.EncodeToString(sum[:]), nil
}

// AddToken makes a token for name with role, appends its hash line to the
// tokens file at path (created 0600, its directory 0700, when missing) and
// returns the token: the only time it exists in plain text. A name already
// in the file is refused.
func AddToken(path, name string, role Role) (string, error) {
	if err := ValidTokenName(name); err != nil {
		return "", err
	}
	if role <= RoleNone || role > RoleAdmin {
		return "", fmt.Errorf("role %v: not one of read, trigger, restore, admin", role)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("tokens file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", fmt.Errorf("tokens file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	entries, err := parseTokens(path, bytes.NewReader(data))
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if e.name == name {
			return "", fmt.Errorf("name %q: already in %s (line %d)", name, path, e.line)
		}
	}
	token, hash, err := NewToken()
	if err != nil {
		return "", err
	}
	line := fmt.Sprintf("%s %s %s\n", name, role, hash)
	if len(data) > 0 && data[len(data)-1] != '\n' {
		line = "\n" + line
	}
	// O_APPEND is not set: the read above left the offset at the end.
	if _, err := f.Write([]byte(line)); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return token, nil
}

// Local names the files of the local default under a data directory.
const (
	LocalTokensFile = "auth/api-tokens"
	LocalAdminFile  = "auth/api-admin.token"
	LocalAdminName  = "local-admin"
)

// LocalTokens returns the tokens file of a serve that was given none:
// DATA/auth/api-tokens. On first start it is made with one admin token,
// local-admin, whose plain text goes to DATA/auth/api-admin.token (0600)
// for the operator on the same machine. created reports a first start.
func LocalTokens(dataDir string) (path string, created bool, err error) {
	if dataDir == "" {
		return "", false, errors.New("--data: required for the API's local tokens file (or give --api-tokens or --api-client-ca)")
	}
	path = filepath.Join(dataDir, LocalTokensFile)
	if _, err := os.Stat(path); err == nil {
		return path, false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("tokens file: %w", err)
	}
	token, err := AddToken(path, LocalAdminName, RoleAdmin)
	if err != nil {
		return "", false, err
	}
	// A stale admin file from an earlier data directory must not keep its
	// mode: it is replaced, never rewritten in place.
	adminFile := filepath.Join(dataDir, LocalAdminFile)
	if err := os.Remove(adminFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("admin token: %w", err)
	}
	if err := os.WriteFile(adminFile, []byte(token+"\n"), 0o600); err != nil {
		// Without its plain text the token is of no use: start over next time.
		_ = os.Remove(path)
		return "", false, fmt.Errorf("admin token: %w", err)
	}
	return path, true, nil
}
