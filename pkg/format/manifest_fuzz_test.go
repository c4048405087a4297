package format_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/format"
)

// manifestSeeds are the manifests a pipeline would write for the committed
// vectors, one per key scheme, pending and verified.
func manifestSeeds(f *testing.F) [][]byte {
	f.Helper()
	at := time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC)
	var seeds [][]byte
	for _, v := range loadVectorsFuzz(f) {
		obj, err := os.ReadFile(filepath.Join(vectorDir, v.File))
		if err != nil {
			f.Fatal(err)
		}
		ss, err := format.Scan(bytes.NewReader(obj))
		if err != nil {
			f.Fatal(err)
		}
		m := format.Manifest{
			FormatVersion: format.Version, BackupID: v.BackupID, Plan: "orders-db", RunID: "01JRUN", Trigger: "schedule",
			Created: at, Started: at, Finished: at.Add(time.Minute),
			Source: format.Source{Type: "mariadb", Describe: map[string]string{"server": "11.4.2"}},
			Chain:  v.Chain, ChunkSize: v.ChunkSize, KeyWrap: ss.Header.KeyWrap,
			Bytes: v.Bytes, StoredBytes: v.StoredBytes, Frames: v.Frames,
			PlaintextSHA256: v.PlaintextSHA256, StoredSHA256: v.StoredSHA256,
			ObjectKey: format.ObjectKey("orders-db", v.BackupID),
			Verify:    format.VerifyResult{Status: format.VerifyPending},
		}
		b, err := format.MarshalManifest(m)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b)
		m.Verify = format.VerifyResult{Status: format.VerifyFailed, Mode: format.VerifyModeCiphertext, At: at.Add(time.Hour), Error: "frame 2: checksum mismatch"}
		m.Cycles, m.Tags = []string{"daily", "weekly"}, map[string]string{"env": "prod"}
		if b, err = format.MarshalManifest(m); err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	return seeds
}

// FuzzManifest decodes arbitrary bytes as a manifest read from storage. A
// manifest that decodes must encode again, and that encoding must decode
// to the same manifest and be a fixed point.
func FuzzManifest(f *testing.F) {
	for _, s := range manifestSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := format.UnmarshalManifest(b)
		if err != nil {
			return
		}
		enc, err := format.MarshalManifest(m)
		if err != nil {
			t.Fatalf("a manifest that decoded does not encode: %v", err)
		}
		back, err := format.UnmarshalManifest(enc)
		if err != nil {
			t.Fatalf("a manifest's encoding does not decode: %v\n%s", err, enc)
		}
		if enc2, err := format.MarshalManifest(back); err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("manifest changed in a round trip (%v):\n%s\n%s", err, enc, enc2)
		}
		if _, id, isManifest, err := format.ParseKey(m.ObjectKey); err != nil || isManifest || id != m.BackupID {
			t.Fatalf("objectKey %q of a valid manifest does not parse back: %q %v %v", m.ObjectKey, id, isManifest, err)
		}
	})
}

// FuzzParseKey parses arbitrary storage keys, as a listing of a destination
// does: a key it accepts is exactly the key ObjectKey or ManifestKey makes.
func FuzzParseKey(f *testing.F) {
	for _, k := range []string{"orders-db/01JNR4S7T0000000000000000A.bsf", "orders-db/01JNR4S7T0000000000000000A.manifest.json",
		"a/b.manifest.json.bsf", "a/.bsf", "a/b/c.bsf", "../x.bsf", ""} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		plan, id, isManifest, err := format.ParseKey(key)
		if err != nil {
			return
		}
		want := format.ObjectKey(plan, id)
		if isManifest {
			want = format.ManifestKey(plan, id)
		}
		if want != key {
			t.Fatalf("ParseKey(%q) = %q, %q, %v; that names %q", key, plan, id, isManifest, want)
		}
	})
}
