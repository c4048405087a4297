package format_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/format"
)

// manifestFor builds the manifest a pipeline would write for obj.
func manifestFor(t *testing.T, s *format.Sealer, obj []byte, data []byte) format.Manifest {
	t.Helper()
	at := time.Date(2025, 3, 1, 2, 0, 0, 0, time.UTC)
	return format.Manifest{
		FormatVersion: format.Version, BackupID: s.HeaderInfo().BackupID, Plan: "orders-db", RunID: "01JRUN", Trigger: "schedule",
		Created: at, Started: at, Finished: at.Add(time.Minute),
		Source: format.Source{Type: "mariadb", Describe: map[string]string{"server": "11.4.2"}},
		Chain:  s.Chain(), ChunkSize: s.ChunkSize(), KeyWrap: s.KeyWrap(),
		Bytes: int64(len(data)), StoredBytes: int64(len(obj)), Frames: 3,
		PlaintextSHA256: sum(data), StoredSHA256: sum(obj),
		ObjectKey: format.ObjectKey("orders-db", s.HeaderInfo().BackupID),
		Verify:    format.VerifyResult{Status: format.VerifyVerified, Mode: format.VerifyModeFull, At: at.Add(2 * time.Minute)},
		Cycles:    []string{"daily", "weekly"}, Tags: map[string]string{"env": "prod"},
	}
}

func TestManifestRoundTripAndCheck(t *testing.T) {
	data := gen(4, 2500)
	s, err := format.NewSealer("01JMANIFEST", format.Options{Compression: "zstd", Recipients: []string{identity(t).Recipient().String()}, ChunkSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := format.NewWriter(&buf, s, 2)
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	obj := buf.Bytes()
	m := manifestFor(t, s, obj, data)
	b, err := format.MarshalManifest(m)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	back, err := format.UnmarshalManifest(b)
	if err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	b2, _ := format.MarshalManifest(back)
	if !bytes.Equal(b, b2) {
		t.Fatalf("round trip changed the manifest:\n%s\n%s", b, b2)
	}
	// the manifest's wrapped key opens the object's data key, as the header's does
	r, err := format.NewReader(bytes.NewReader(obj), keysOf(t))
	if err != nil {
		t.Fatal(err)
	}
	got := new(bytes.Buffer)
	got.ReadFrom(r)
	st := r.Stats()
	if err := back.Check(r.Header(), st.Frames, st.StoredBytes, st.StoredSHA256, &st); err != nil {
		t.Fatalf("check: %v", err)
	}
	ss, err := format.Scan(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	if err := back.Check(ss.Header, ss.Frames, ss.StoredBytes, ss.StoredSHA256, nil); err != nil {
		t.Fatalf("check scan: %v", err)
	}
	back.PlaintextSHA256 = sum(nil)
	if err := back.Check(r.Header(), st.Frames, st.StoredBytes, st.StoredSHA256, &st); !errors.Is(err, format.ErrCorrupt) || !strings.Contains(err.Error(), "plaintext sha256") {
		t.Fatalf("check with a wrong digest: %v", err)
	}
}

func keysOf(t *testing.T) format.Keys {
	return schemes[1].keys(t)
}

func TestManifestValidate(t *testing.T) {
	s, err := format.NewSealer("01JVALID", format.Options{Encryption: "none", Compression: "snappy"})
	if err != nil {
		t.Fatal(err)
	}
	good := manifestFor(t, s, []byte("x"), []byte("y"))
	if err := good.Validate(); err != nil {
		t.Fatalf("good manifest: %v", err)
	}
	tests := []struct {
		name string
		give func(m *format.Manifest)
		want string
	}{
		{"version", func(m *format.Manifest) { m.FormatVersion = 9 }, "formatVersion"},
		{"backup id", func(m *format.Manifest) { m.BackupID = "a/b" }, "backupId"},
		{"plan", func(m *format.Manifest) { m.Plan = "Orders" }, "plan"},
		{"run", func(m *format.Manifest) { m.RunID = "" }, "runId"},
		{"trigger", func(m *format.Manifest) { m.Trigger = "cron" }, "trigger"},
		{"times", func(m *format.Manifest) { m.Finished = m.Started.Add(-time.Second) }, "finished"},
		{"source", func(m *format.Manifest) { m.Source.Type = "" }, "source.type"},
		{"chain", func(m *format.Manifest) { m.Chain = []string{"lz4"} }, "chain"},
		{"key wrap vs chain", func(m *format.Manifest) { m.Chain = []string{"snappy", "aes-256-gcm"} }, "keyWrap.scheme"},
		{"chunk", func(m *format.Manifest) { m.ChunkSize = 0 }, "chunkSize"},
		{"frames", func(m *format.Manifest) { m.Frames = 0 }, "frames"},
		{"digest", func(m *format.Manifest) { m.StoredSHA256 = "ABC" }, "storedSha256"},
		{"object key", func(m *format.Manifest) { m.ObjectKey = "elsewhere.bsf" }, "objectKey"},
		{"verify status", func(m *format.Manifest) { m.Verify.Status = "ok" }, "verify.status"},
		{"verify mode", func(m *format.Manifest) { m.Verify.Mode = "" }, "verify.mode"},
		{"failed needs error", func(m *format.Manifest) { m.Verify.Status = "failed" }, "verify.error"},
		{"cycle", func(m *format.Manifest) { m.Cycles = []string{"Daily"} }, "cycles[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := good
			m.Chain = append([]string(nil), good.Chain...)
			m.Cycles = append([]string(nil), good.Cycles...)
			tt.give(&m)
			if err := m.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want mention of %q", err, tt.want)
			}
		})
	}
}

func TestKeys(t *testing.T) {
	tests := []struct {
		plan, id string
	}{
		{"orders-db", "01JABCDEF0123456789ABCDEFG"},
		{"a", "x.y_z-1"},
	}
	for _, tt := range tests {
		for _, k := range []string{format.ObjectKey(tt.plan, tt.id), format.ManifestKey(tt.plan, tt.id)} {
			plan, id, man, err := format.ParseKey(k)
			if err != nil || plan != tt.plan || id != tt.id || man != strings.HasSuffix(k, ".manifest.json") {
				t.Errorf("ParseKey(%q) = %q, %q, %v, %v", k, plan, id, man, err)
			}
		}
	}
	if got := format.ObjectKey("orders-db", "01J"); got != "orders-db/01J.bsf" {
		t.Errorf("ObjectKey = %q", got)
	}
	if got := format.ManifestKey("orders-db", "01J"); got != "orders-db/01J.manifest.json" {
		t.Errorf("ManifestKey = %q", got)
	}
	for _, bad := range []string{"", "orders/01J.txt", "Orders/01J.bsf", "orders/a/01J.bsf", "orders/.bsf", "01J.bsf"} {
		if _, _, _, err := format.ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
}
