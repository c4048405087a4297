// Package backup finds, verifies and reads backups from a storage alone: the
// object and the manifest beside it, with no NATS and no catalog, so disaster
// recovery never depends on the rest of the platform being up.
package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/storage"
)

// Sentinel errors of Find.
var (
	// ErrNotFound means no backup matches a reference.
	ErrNotFound = errors.New("backup not found")
	// ErrFailed means the manifest of the backup a reference names says
	// it is not a good backup: its run failed after the object was stored
	// (a hook after the snapshot, verify), or its verification failed.
	ErrFailed = errors.New("backup failed")
)

// Failed reports whether m is the manifest of a failed backup, which no
// reader takes for a good one: `backstream backups` does not list it,
// "latest" never picks it, Find refuses it by id, and retention never
// keeps it for a rule (it removes it once a newer backup is verified).
// Its object stays until then, for a replay of the run or an operator
// (FindFailed).
func Failed(m format.Manifest) bool { return m.Verify.Status == format.VerifyFailed }

// LoadManifest reads and validates the manifest at key.
func LoadManifest(ctx context.Context, st storage.Storage, key string) (format.Manifest, error) {
	m, _, err := readManifest(ctx, st, key)
	return m, err
}

// readManifest reads and validates the manifest at key, with the version
// it was read at (storage.Storage.ReadVersion).
func readManifest(ctx context.Context, st storage.Storage, key string) (format.Manifest, string, error) {
	data, version, err := st.ReadVersion(ctx, key, maxManifest)
	if errors.Is(err, storage.ErrNotFound) {
		return format.Manifest{}, "", fmt.Errorf("%w: no manifest %s", ErrNotFound, key)
	}
	if err != nil {
		return format.Manifest{}, "", fmt.Errorf("read manifest %s: %w", key, err)
	}
	m, err := format.UnmarshalManifest(data)
	if err != nil {
		return format.Manifest{}, "", fmt.Errorf("manifest %s: %w", key, err)
	}
	return m, version, nil
}

// MarkFailed records in m that its backup is no good, for reason, at at;
// false when m says so already (its first reason stays). The mode stays
// the one the last verify read with (ciphertext when none ran).
func MarkFailed(m *format.Manifest, at time.Time, reason string) bool {
	if Failed(*m) {
		return false
	}
	mode := m.Verify.Mode
	if mode == "" {
		mode = format.VerifyModeCiphertext
	}
	m.Verify = format.VerifyResult{Status: format.VerifyFailed, Mode: mode, At: at.UTC(), Error: reason}
	return true
}

// maxManifest is the most a manifest may hold: a few KiB in practice.
const maxManifest = 4 << 20

// maxUpdateTries bounds how often UpdateManifest reads a manifest again
// that kept changing under it: a handful of writers, each changing it
// once per event, never need many.
const maxUpdateTries = 20

// UpdateManifest changes the manifest at key and writes it back only if
// nobody wrote it since it was read (storage's PutIf); if someone did, it
// reads it again and calls change again. Several writers of one manifest
// (verify, the marking of a failed run, scrub, retention) so lose none of
// each other's changes, and a writer that decides from what else it
// reads in change (the run's phase) decides on what the manifest is at
// its write. change reports whether it changed m; false writes nothing.
// It may be called several times, each time with the manifest as it is
// then, and must decide afresh. It returns the manifest as stored after
// the call (unchanged when change said so).
func UpdateManifest(ctx context.Context, st storage.Storage, key string, change func(m *format.Manifest) (bool, error)) (format.Manifest, error) {
	for range maxUpdateTries {
		m, version, err := readManifest(ctx, st, key)
		if err != nil {
			return format.Manifest{}, err
		}
		changed, err := change(&m)
		if err != nil || !changed {
			return m, err
		}
		if got := format.ManifestKey(m.Plan, m.BackupID); got != key {
			return m, fmt.Errorf("manifest %s: changed into the manifest of %s", key, got)
		}
		out, err := format.MarshalManifest(m)
		if err != nil {
			return m, fmt.Errorf("manifest: %w", err)
		}
		o := storage.PutOptions{ContentType: "application/json"}
		if tg, ok := storage.As[storage.Tagger](st); ok {
			// A write replaces the tags with the object's bytes: keep the
			// ones retention labelled it with (lifecycle rules expire the
			// manifest by them, with its object).
			if o.Tags, err = tg.GetTags(ctx, key); errors.Is(err, storage.ErrNotFound) {
				continue // deleted since: read again, and find it gone
			} else if err != nil {
				return m, fmt.Errorf("manifest %s: tags: %w", key, err)
			}
		}
		_, err = st.PutIf(ctx, key, out, version, o)
		if err == nil {
			return m, nil
		}
		if !errors.Is(err, storage.ErrChanged) {
			return m, fmt.Errorf("put manifest %s: %w", key, err)
		}
	}
	return format.Manifest{}, fmt.Errorf("update manifest %s: changed by another writer %d times in a row", key, maxUpdateTries)
}

// SaveManifest writes m at its manifest key, whatever is there: for the
// first manifest of a copy (upload, a copy from another destination).
// A manifest that may be there already is changed with UpdateManifest.
func SaveManifest(ctx context.Context, st storage.Storage, m format.Manifest) error {
	data, err := format.MarshalManifest(m)
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	key := format.ManifestKey(m.Plan, m.BackupID)
	if _, err := st.Put(ctx, key, bytes.NewReader(data), storage.PutOptions{ContentType: "application/json"}); err != nil {
		return fmt.Errorf("put manifest %s: %w", key, err)
	}
	return nil
}

// List returns the manifests of plan's backups (every plan when plan is
// ""), oldest first. A manifest that cannot be read is returned in bad with
// its error rather than hidden.
func List(ctx context.Context, st storage.Storage, plan string) (good []format.Manifest, bad map[string]error, err error) {
	prefix := ""
	if plan != "" {
		prefix = plan + "/"
	}
	var keys []string
	err = st.List(ctx, prefix, func(i storage.Info) error {
		if strings.HasSuffix(i.Key, format.ManifestSuffix) {
			keys = append(keys, i.Key)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list backups: %w", err)
	}
	bad = map[string]error{}
	for _, k := range keys {
		m, err := LoadManifest(ctx, st, k)
		if err != nil {
			bad[k] = err
			continue
		}
		good = append(good, m)
	}
	sort.Slice(good, func(i, j int) bool {
		if !good[i].Created.Equal(good[j].Created) {
			return good[i].Created.Before(good[j].Created)
		}
		return good[i].BackupID < good[j].BackupID
	})
	return good, bad, nil
}

// Find resolves a backup reference: "PLAN/BACKUPID", a bare BACKUPID (any
// plan), or "PLAN/latest" for the newest verified backup of PLAN. A
// reference to a failed backup (Failed) is an error wrapping ErrFailed.
func Find(ctx context.Context, st storage.Storage, ref string) (format.Manifest, error) {
	m, err := FindFailed(ctx, st, ref)
	if err == nil && Failed(m) {
		return format.Manifest{}, fmt.Errorf("%w: backup %s of plan %s: %s", ErrFailed, m.BackupID, m.Plan, m.Verify.Error)
	}
	return m, err
}

// FindFailed is Find that also returns a failed backup named by id (never
// for "latest"), for an operator who wants what a failed run stored.
func FindFailed(ctx context.Context, st storage.Storage, ref string) (format.Manifest, error) {
	plan, id, hasPlan := strings.Cut(ref, "/")
	if !hasPlan {
		plan, id = "", ref
	}
	if hasPlan && id == "latest" {
		ms, _, err := List(ctx, st, plan)
		if err != nil {
			return format.Manifest{}, err
		}
		for i := len(ms) - 1; i >= 0; i-- {
			if ms[i].Verify.Status == format.VerifyVerified {
				return ms[i], nil
			}
		}
		return format.Manifest{}, fmt.Errorf("%w: plan %s has no verified backup", ErrNotFound, plan)
	}
	if hasPlan {
		return LoadManifest(ctx, st, format.ManifestKey(plan, id))
	}
	ms, _, err := List(ctx, st, "")
	if err != nil {
		return format.Manifest{}, err
	}
	for _, m := range ms {
		if m.BackupID == id {
			return m, nil
		}
	}
	return format.Manifest{}, fmt.Errorf("%w: no backup with id %s", ErrNotFound, id)
}

// CanOpen reports whether keys can open the backups of m: an unencrypted
// backup needs none. It says whether keys are of the kind the scheme needs,
// not whether they are the right ones.
func CanOpen(m format.Manifest, keys format.Keys) bool {
	switch m.KeyWrap.Scheme {
	case format.SchemeNone:
		return true
	case format.SchemeAgeScrypt:
		return keys.Passphrase != ""
	case format.SchemeAgeKeyring:
		// The passphrase unlocks the keyring the object carries; the
		// keyring's identity opens it directly.
		return keys.Passphrase != "" || len(keys.Identities) > 0
	default:
		return len(keys.Identities) > 0
	}
}

// Result of a verification.
type Result struct {
	format.VerifyResult
	Frames          uint64
	StoredBytes     int64
	StoredSHA256    string
	PlaintextSHA256 string
}

// Verify reads the object of m back and checks it against m: its size and
// stored SHA-256, the structure of every frame and, when keys can open it,
// every frame's authentication, the plaintext size and SHA-256 ("full");
// otherwise the ciphertext only ("ciphertext"). A mismatch is returned as
// an error and in the result.
func Verify(ctx context.Context, st storage.Storage, m format.Manifest, keys format.Keys, now time.Time) (Result, error) {
	res := Result{VerifyResult: format.VerifyResult{Status: format.VerifyFailed, At: now.UTC()}}
	rc, err := st.Open(ctx, m.ObjectKey)
	if err != nil {
		res.Error = fmt.Sprintf("open object: %v", err)
		return res, fmt.Errorf("verify %s: open: %w", m.ObjectKey, err)
	}
	defer rc.Close()
	var checkErr error
	if CanOpen(m, keys) {
		res.Mode = format.VerifyModeFull
		r, err := format.NewReader(rc, keys)
		if err == nil {
			_, err = io.Copy(io.Discard, r)
		}
		if err != nil {
			checkErr = err
		} else {
			stats := r.Stats()
			res.Frames, res.StoredBytes, res.StoredSHA256, res.PlaintextSHA256 = stats.Frames, stats.StoredBytes, stats.StoredSHA256, stats.PlaintextSHA256
			checkErr = m.Check(r.Header(), stats.Frames, stats.StoredBytes, stats.StoredSHA256, &stats)
		}
	} else {
		res.Mode = format.VerifyModeCiphertext
		stats, err := format.Scan(rc)
		if err != nil {
			checkErr = err
		} else {
			res.Frames, res.StoredBytes, res.StoredSHA256 = stats.Frames, stats.StoredBytes, stats.StoredSHA256
			checkErr = m.Check(stats.Header, stats.Frames, stats.StoredBytes, stats.StoredSHA256, nil)
		}
	}
	if checkErr != nil {
		res.Error = checkErr.Error()
		return res, fmt.Errorf("verify %s: %w", m.ObjectKey, checkErr)
	}
	res.Status = format.VerifyVerified
	return res, nil
}

// ErrCopyMismatch means the bytes read from a copy's source do not hash to
// the stored SHA-256 its manifest records: the source copy is damaged.
var ErrCopyMismatch = errors.New("source copy does not match its manifest")

// Copy copies backup m from one destination's storage to another's: the
// object, hashed as it is written and checked against m.StoredSHA256, then
// the manifest (m, verify pending: the new copy has not been read back). A
// copy whose digest does not match is deleted again and no manifest is
// written, so nothing that looks like a backup is left; the error wraps
// ErrCopyMismatch. Put overwrites, so Copy may be called again for the same
// backup (a redelivery, a repair of a damaged copy).
func Copy(ctx context.Context, from, to storage.Storage, m format.Manifest) (storage.Info, format.Manifest, error) {
	rc, err := from.Open(ctx, m.ObjectKey)
	if err != nil {
		return storage.Info{}, m, fmt.Errorf("open source copy %s: %w", m.ObjectKey, err)
	}
	defer rc.Close()
	sum := sha256.New()
	info, err := to.Put(ctx, m.ObjectKey, io.TeeReader(rc, sum), storage.PutOptions{ContentType: "application/vnd.backstream.object"})
	if err != nil {
		return storage.Info{}, m, fmt.Errorf("copy %s: %w", m.ObjectKey, err)
	}
	if digest := hex.EncodeToString(sum.Sum(nil)); digest != m.StoredSHA256 || info.Size != m.StoredBytes {
		_ = to.Delete(context.WithoutCancel(ctx), m.ObjectKey)
		return storage.Info{}, m, fmt.Errorf("%w: %s read %d bytes with SHA-256 %s, the manifest says %d bytes with %s: not copied",
			ErrCopyMismatch, m.ObjectKey, info.Size, digest, m.StoredBytes, m.StoredSHA256)
	}
	m.Verify = format.VerifyResult{Status: format.VerifyPending}
	if err := SaveManifest(ctx, to, m); err != nil {
		return info, m, err
	}
	return info, m, nil
}
