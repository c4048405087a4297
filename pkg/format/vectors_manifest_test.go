package format_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/format"
)

// TestVectorManifests checks each vector's committed manifest: it validates,
// it is what MarshalManifest writes for it, it matches its object after a
// full read and after a scan, and its JSON is what docs/format.md describes.
func TestVectorManifests(t *testing.T) {
	plain := mustRead(t, filepath.Join(vectorDir, "plaintext.txt"))
	for _, v := range loadVectors(t) {
		t.Run(v.File, func(t *testing.T) {
			if v.Manifest != strings.TrimSuffix(v.File, ".bsf")+".manifest.json" {
				t.Fatalf("manifest file %q for object %q", v.Manifest, v.File)
			}
			raw := mustRead(t, filepath.Join(vectorDir, v.Manifest))
			obj := mustRead(t, filepath.Join(vectorDir, v.File))
			m, err := format.UnmarshalManifest(raw)
			if err != nil {
				t.Fatalf("manifest does not validate: %v", err)
			}
			if enc, err := format.MarshalManifest(m); err != nil || !bytes.Equal(enc, raw) {
				t.Fatalf("MarshalManifest writes other bytes (%v):\n%s", err, enc)
			}

			r, err := format.NewReader(bytes.NewReader(obj), vectorKeys(t, v))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, plain[:v.Bytes]) {
				t.Fatalf("read: %v (%d bytes, want %d)", err, len(got), v.Bytes)
			}
			st := r.Stats()
			if err := m.Check(r.Header(), st.Frames, st.StoredBytes, st.StoredSHA256, &st); err != nil {
				t.Fatalf("check after a full read: %v", err)
			}
			ss, err := format.Scan(bytes.NewReader(obj))
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Check(ss.Header, ss.Frames, ss.StoredBytes, ss.StoredSHA256, nil); err != nil {
				t.Fatalf("check after a scan: %v", err)
			}
			if !reflect.DeepEqual(m.KeyWrap, r.Header().KeyWrap) {
				t.Fatalf("manifest keyWrap %+v, header %+v", m.KeyWrap, r.Header().KeyWrap)
			}
			if m.KeyWrap.Scheme != format.SchemeNone {
				if _, err := format.UnwrapKey(m.KeyWrap, vectorKeys(t, v)); err != nil {
					t.Fatalf("the manifest's wrapped key does not open: %v", err)
				}
			}
			// Check must be able to fail on every vector: one frame more.
			bad := m
			bad.Frames++
			if err := bad.Check(ss.Header, ss.Frames, ss.StoredBytes, ss.StoredSHA256, nil); !errors.Is(err, format.ErrCorrupt) {
				t.Fatalf("check of a manifest with another frame count: %v", err)
			}

			independentManifest(t, raw, obj, plain[:v.Bytes])
		})
	}
}

// independentManifest checks a manifest's JSON against its object following
// docs/format.md only: the header's fields are read by hand and the keyWrap
// shapes are the page's table.
func independentManifest(t *testing.T, raw, obj, plain []byte) {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	hdrLen := 28 + int(be.Uint32(obj[24:28])) + 4
	var fields [][]byte
	for p := obj[28 : hdrLen-4]; len(p) > 0; {
		n := int(be.Uint32(p))
		fields, p = append(fields, p[4:4+n]), p[4+n:]
	}
	frames := 0
	for rest := obj[hdrLen:]; len(rest) > 0; rest = rest[16+be.Uint32(rest):] {
		frames++
	}
	var chain []any
	if c := map[byte]string{1: "snappy", 2: "zstd"}[obj[9]]; c != "" {
		chain = append(chain, c)
	}
	if obj[10] == 1 {
		chain = append(chain, "aes-256-gcm")
	}
	hexSum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	want := map[string]any{
		"formatVersion":   float64(obj[8]),
		"backupId":        string(fields[0]),
		"chunkSize":       float64(be.Uint32(obj[12:16])),
		"bytes":           float64(len(plain)),
		"storedBytes":     float64(len(obj)),
		"frames":          float64(frames),
		"plaintextSha256": hexSum(plain),
		"storedSha256":    hexSum(obj),
		"objectKey":       m["plan"].(string) + "/" + string(fields[0]) + ".bsf",
	}
	for k, w := range want {
		if m[k] != w {
			t.Errorf("manifest %s = %v, the object says %v", k, m[k], w)
		}
	}
	if got, _ := m["chain"].([]any); !reflect.DeepEqual(got, chain) && len(got)+len(chain) > 0 {
		t.Errorf("manifest chain %v, header codes say %v", got, chain)
	}

	kw, _ := m["keyWrap"].(map[string]any)
	scheme, keys := string(fields[1]), slices.Sorted(maps.Keys(kw))
	wantKeys := map[string][]string{
		"none":        {"scheme"},
		"age-x25519":  {"recipients", "scheme", "wrapped"},
		"age-scrypt":  {"scheme", "wrapped"},
		"age-keyring": {"keyring", "recipients", "scheme", "wrapped"},
	}[scheme]
	if kw["scheme"] != scheme || !slices.Equal(keys, wantKeys) {
		t.Fatalf("keyWrap %v for header scheme %q: want the fields %v", kw, scheme, wantKeys)
	}
	if scheme == "none" {
		return
	}
	wrapped, err := base64.StdEncoding.Strict().DecodeString(kw["wrapped"].(string))
	if err != nil || !bytes.Equal(wrapped, fields[3]) || !bytes.HasPrefix(wrapped, []byte("age-encryption.org/v1\n")) {
		t.Errorf("keyWrap.wrapped (%v) is not the header's wrapped key in standard base64", err)
	}
	stanza := map[string]string{"age-x25519": "\n-> X25519 ", "age-scrypt": "\n-> scrypt ", "age-keyring": "\n-> X25519 "}[scheme]
	if !bytes.Contains(wrapped, []byte(stanza)) {
		t.Errorf("wrapped key of scheme %s has no %q stanza", scheme, stanza)
	}
	if scheme == "age-keyring" {
		keyring, err := base64.StdEncoding.Strict().DecodeString(kw["keyring"].(string))
		if err != nil || len(fields) != 5 || !bytes.Equal(keyring, fields[4]) || !bytes.HasPrefix(keyring, []byte("age-encryption.org/v1\n-> scrypt ")) {
			t.Errorf("keyWrap.keyring (%v) is not the header's keyring field in standard base64, an age file with one scrypt stanza", err)
		}
	}
	if scheme == "age-x25519" || scheme == "age-keyring" {
		var rs []string
		for _, r := range kw["recipients"].([]any) {
			rs = append(rs, r.(string))
		}
		if strings.Join(rs, "\n") != string(fields[2]) || len(rs) == 0 {
			t.Errorf("keyWrap.recipients %q, header key reference %q", rs, fields[2])
		}
	}
}
