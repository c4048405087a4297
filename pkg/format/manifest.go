package format

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/backstream/backstream/events"
)

// Object key layout in a destination. A backup is two keys side by side,
// so it can be found and restored from storage alone.
const (
	ObjectSuffix   = ".bsf"
	ManifestSuffix = ".manifest.json"
)

// Verify statuses and modes.
const (
	VerifyPending  = "pending"
	VerifyVerified = "verified"
	VerifyFailed   = "failed"

	VerifyModeFull       = "full"       // every frame opened, plaintext digest compared
	VerifyModeCiphertext = "ciphertext" // Scan: structure, CRCs and stored digest only
)

// ObjectKey is where the object of a backup lives: "<plan>/<backupID>.bsf".
func ObjectKey(plan, backupID string) string { return plan + "/" + backupID + ObjectSuffix }

// ManifestKey is where a backup's manifest lives: "<plan>/<backupID>.manifest.json".
func ManifestKey(plan, backupID string) string { return plan + "/" + backupID + ManifestSuffix }

// ParseKey is the inverse of ObjectKey and ManifestKey: it returns the plan,
// the backup id and whether key names the manifest. Any other key fails, so
// a listing can use it to pick out backups.
func ParseKey(key string) (plan, backupID string, manifest bool, err error) {
	plan, name, ok := strings.Cut(key, "/")
	if !ok || !events.ValidName(plan) {
		return "", "", false, fmt.Errorf("parse key %q: not <plan>/<backup id>%s or %s", key, ObjectSuffix, ManifestSuffix)
	}
	switch {
	case strings.HasSuffix(name, ManifestSuffix):
		backupID, manifest = strings.TrimSuffix(name, ManifestSuffix), true
	case strings.HasSuffix(name, ObjectSuffix):
		backupID = strings.TrimSuffix(name, ObjectSuffix)
	default:
		return "", "", false, fmt.Errorf("parse key %q: not <plan>/<backup id>%s or %s", key, ObjectSuffix, ManifestSuffix)
	}
	if err := validBackupID(backupID); err != nil {
		return "", "", false, fmt.Errorf("parse key %q: %w", key, err)
	}
	return plan, backupID, manifest, nil
}

// Source describes what was dumped: the plugin type and what it reports
// about itself (server version, databases, dump tool...), never secrets.
type Source struct {
	Type     string            `json:"type"`
	Describe map[string]string `json:"describe,omitempty"`
}

// VerifyResult is the outcome of reading the stored object back.
type VerifyResult struct {
	Status string    `json:"status"`         // pending | verified | failed
	Mode   string    `json:"mode,omitempty"` // full | ciphertext, once verified or failed
	At     time.Time `json:"at,omitzero"`
	Error  string    `json:"error,omitempty"` // why it failed
}

// Manifest is the JSON document stored beside each object. With the
// object it is all a restore needs besides the key; the catalog only
// indexes manifests. It holds no secret: the data key in KeyWrap is
// wrapped.
type Manifest struct {
	FormatVersion   int               `json:"formatVersion"`
	BackupID        string            `json:"backupId"`
	Plan            string            `json:"plan"`
	RunID           string            `json:"runId"`
	Trigger         string            `json:"trigger"` // schedule | cli | api | event
	Created         time.Time         `json:"created"`
	Started         time.Time         `json:"started"`
	Finished        time.Time         `json:"finished"`
	Source          Source            `json:"source"`
	Chain           []string          `json:"chain"`
	ChunkSize       int               `json:"chunkSize"`
	KeyWrap         KeyWrap           `json:"keyWrap"`
	Bytes           int64             `json:"bytes"`       // plaintext
	StoredBytes     int64             `json:"storedBytes"` // the object, header included
	Frames          uint64            `json:"frames"`
	PlaintextSHA256 string            `json:"plaintextSha256"`
	StoredSHA256    string            `json:"storedSha256"`
	ObjectKey       string            `json:"objectKey"`
	Verify          VerifyResult      `json:"verify"`
	Cycles          []string          `json:"cycles,omitempty"` // retention cycles the backup counts for: daily, weekly...
	Tags            map[string]string `json:"tags,omitempty"`
}

var (
	sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)
	cycleName = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
)

// Validate reports every problem of m, each with its JSON field path.
func (m Manifest) Validate() error {
	var p []string
	add := func(f string, a ...any) { p = append(p, fmt.Sprintf(f, a...)) }
	if m.FormatVersion != Version {
		add("formatVersion: %d, this code knows %d", m.FormatVersion, Version)
	}
	if err := validBackupID(m.BackupID); err != nil {
		add("backupId: %v", err)
	}
	if !events.ValidName(m.Plan) {
		add("plan: %q is not a lowercase DNS label", m.Plan)
	}
	if m.RunID == "" {
		add("runId: required")
	}
	switch m.Trigger {
	case events.TriggerSchedule, events.TriggerCLI, events.TriggerAPI, events.TriggerEvent:
	default:
		add("trigger: %q is not one of schedule, cli, api, event", m.Trigger)
	}
	if m.Created.IsZero() {
		add("created: required")
	}
	if m.Started.IsZero() {
		add("started: required")
	}
	if !m.Finished.IsZero() && m.Finished.Before(m.Started) {
		add("finished: %s is before started %s", m.Finished.Format(time.RFC3339), m.Started.Format(time.RFC3339))
	}
	if m.Source.Type == "" {
		add("source.type: required")
	}
	_, enc, chainErr := ParseChain(m.Chain)
	if chainErr != nil {
		add("chain: %v", chainErr)
	}
	if m.ChunkSize < 1 || m.ChunkSize > MaxChunkSize {
		add("chunkSize: %d is not in 1..%d", m.ChunkSize, MaxChunkSize)
	}
	if err := m.KeyWrap.Validate(); err != nil {
		add("keyWrap: %v", err)
	} else if chainErr == nil && (enc == EncryptionNone) != (m.KeyWrap.Scheme == SchemeNone) {
		add("keyWrap.scheme: %s does not fit encryption %s", m.KeyWrap.Scheme, enc)
	}
	if m.Bytes < 0 {
		add("bytes: must be >= 0")
	}
	if m.StoredBytes <= 0 {
		add("storedBytes: must be > 0")
	}
	if m.Frames < 1 {
		add("frames: must be >= 1 (an empty backup is one empty final frame)")
	}
	if !sha256Hex.MatchString(m.PlaintextSHA256) {
		add("plaintextSha256: not 64 lowercase hex digits")
	}
	if !sha256Hex.MatchString(m.StoredSHA256) {
		add("storedSha256: not 64 lowercase hex digits")
	}
	if want := ObjectKey(m.Plan, m.BackupID); m.ObjectKey != want {
		add("objectKey: %q, want %q", m.ObjectKey, want)
	}
	switch m.Verify.Status {
	case VerifyPending:
	case VerifyVerified, VerifyFailed:
		if m.Verify.Mode != VerifyModeFull && m.Verify.Mode != VerifyModeCiphertext {
			add("verify.mode: %q is not one of full, ciphertext", m.Verify.Mode)
		}
		if m.Verify.At.IsZero() {
			add("verify.at: required once verified or failed")
		}
		if m.Verify.Status == VerifyFailed && m.Verify.Error == "" {
			add("verify.error: required when failed")
		}
	default:
		add("verify.status: %q is not one of pending, verified, failed", m.Verify.Status)
	}
	for i, c := range m.Cycles {
		if !cycleName.MatchString(c) {
			add("cycles[%d]: %q is not a lowercase name", i, c)
		}
	}
	for k := range m.Tags {
		if k == "" {
			add("tags: empty key")
		}
	}
	if len(p) > 0 {
		return fmt.Errorf("manifest %s: %s", m.BackupID, strings.Join(p, "; "))
	}
	return nil
}

// MarshalManifest validates m and encodes it as indented JSON.
func MarshalManifest(m Manifest) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return append(b, '\n'), nil
}

// UnmarshalManifest decodes and validates a manifest. Unknown fields are
// kept out of the result but accepted, so newer writers stay readable.
func UnmarshalManifest(b []byte) (Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Manifest{}, fmt.Errorf("decode manifest: %w", err)
	}
	if err := m.Validate(); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// Check compares a manifest with what reading or scanning its object found,
// and reports every difference. A Reader's stats check everything; Scan's
// (ciphertext mode) leave the plaintext fields alone.
func (m Manifest) Check(h HeaderInfo, frames uint64, storedBytes int64, storedSHA256 string, plain *ReadStats) error {
	var p []string
	add := func(f string, a ...any) { p = append(p, fmt.Sprintf(f, a...)) }
	if h.BackupID != m.BackupID {
		add("backup id: object %q, manifest %q", h.BackupID, m.BackupID)
	}
	if got, want := strings.Join(h.Chain(), ","), strings.Join(m.Chain, ","); got != want {
		add("chain: object %q, manifest %q", got, want)
	}
	if h.ChunkSize != m.ChunkSize {
		add("chunk size: object %d, manifest %d", h.ChunkSize, m.ChunkSize)
	}
	if frames != m.Frames {
		add("frames: object %d, manifest %d", frames, m.Frames)
	}
	if storedBytes != m.StoredBytes {
		add("stored bytes: object %d, manifest %d", storedBytes, m.StoredBytes)
	}
	if storedSHA256 != m.StoredSHA256 {
		add("stored sha256: object %s, manifest %s", storedSHA256, m.StoredSHA256)
	}
	if plain != nil {
		if plain.Bytes != m.Bytes {
			add("bytes: object %d, manifest %d", plain.Bytes, m.Bytes)
		}
		if plain.PlaintextSHA256 != m.PlaintextSHA256 {
			add("plaintext sha256: object %s, manifest %s", plain.PlaintextSHA256, m.PlaintextSHA256)
		}
	}
	if len(p) > 0 {
		return fmt.Errorf("%w: object %s does not match its manifest: %s", ErrCorrupt, m.ObjectKey, strings.Join(p, "; "))
	}
	return nil
}
