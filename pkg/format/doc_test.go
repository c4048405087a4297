package format_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"hash/crc32"
	"math/bits"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/testenv"
)

// These tests hold docs/format.md to the code and the vectors: a second
// reader is written from the page, so what it states must be what the bytes
// are.

func formatDoc(t *testing.T) string {
	t.Helper()
	return string(mustRead(t, filepath.Join(testenv.RepoRoot(t), "docs", "format.md")))
}

// docSection returns the text after the heading line `heading` up to the
// next heading of the same or a higher level.
func docSection(t *testing.T, doc, heading string) string {
	t.Helper()
	_, after, ok := strings.Cut(doc, "\n"+heading+"\n")
	if !ok {
		t.Fatalf("docs/format.md: no section %q", heading)
	}
	level := strings.Repeat("#", strings.Count(strings.Fields(heading)[0], "#"))
	for _, l := range strings.Split(after, "\n") {
		if h, _, _ := strings.Cut(l, " "); strings.Trim(h, "#") == "" && h != "" && len(h) <= len(level) {
			body, _, _ := strings.Cut(after, "\n"+l+"\n")
			return body
		}
	}
	return after
}

// tableRows returns the cells of the markdown table rows in text, header and
// separator rows left out.
func tableRows(text string) [][]string {
	lines := strings.Split(text, "\n")
	var rows [][]string
	for i, l := range lines {
		if !strings.HasPrefix(l, "|") || strings.HasPrefix(l, "| ---") || i+1 < len(lines) && strings.HasPrefix(lines[i+1], "| ---") {
			continue
		}
		var cells []string
		for _, c := range strings.Split(strings.Trim(l, "|"), " | ") {
			cells = append(cells, strings.TrimSpace(c))
		}
		rows = append(rows, cells)
	}
	return rows
}

// crcModel is a CRC in the parameters docs/format.md gives for CRC-32C.
type crcModel struct {
	width              int
	poly, init, xorout uint32
	refin, refout      bool
	check              uint32
}

// sum is the textbook bitwise computation of the parametrised model: no
// table, no library, only what the page's table says.
func (m crcModel) sum(data []byte) uint32 {
	reg := m.init
	for _, b := range data {
		if m.refin {
			b = bits.Reverse8(b)
		}
		reg ^= uint32(b) << 24
		for range 8 {
			if reg&(1<<31) != 0 {
				reg = reg<<1 ^ m.poly
			} else {
				reg <<= 1
			}
		}
	}
	if m.refout {
		reg = bits.Reverse32(reg)
	}
	return reg ^ m.xorout
}

func docCRCModel(t *testing.T) crcModel {
	t.Helper()
	var m crcModel
	seen := map[string]bool{}
	num := func(s string) uint32 {
		v, err := strconv.ParseUint(strings.Fields(s)[0], 0, 32)
		if err != nil {
			t.Fatalf("docs/format.md CRC table: %q: %v", s, err)
		}
		return uint32(v)
	}
	for _, r := range tableRows(docSection(t, formatDoc(t), "### CRC-32C")) {
		seen[r[0]] = true
		switch r[0] {
		case "width":
			m.width = int(num(r[1]))
		case "poly":
			m.poly = num(r[1])
		case "init":
			m.init = num(r[1])
		case "refin":
			m.refin = r[1] == "true"
		case "refout":
			m.refout = r[1] == "true"
		case "xorout":
			m.xorout = num(r[1])
		case "check":
			m.check = num(r[1])
		default:
			t.Fatalf("docs/format.md CRC table: unknown parameter %q", r[0])
		}
	}
	if len(seen) != 7 || m.width != 32 {
		t.Fatalf("docs/format.md CRC table gives %v, width %d: want width, poly, init, refin, refout, xorout, check", seen, m.width)
	}
	return m
}

// TestDocCRC computes CRC-32C from the parameters docs/format.md states and
// checks the page's check value, Go's crc32 Castagnoli, and every header and
// frame checksum of the vectors as the page says they are computed.
func TestDocCRC(t *testing.T) {
	m := docCRCModel(t)
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	if got := m.sum([]byte("123456789")); got != m.check || got != 0xE3069283 || got != crc32.Checksum([]byte("123456789"), castagnoli) {
		t.Fatalf("CRC of 123456789 from the page's parameters is %08X; the page says %08X, crc32 Castagnoli %08X", got, m.check, crc32.Checksum([]byte("123456789"), castagnoli))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for n := range 300 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if got, want := m.sum(b), crc32.Checksum(b, castagnoli); got != want {
			t.Fatalf("%d random bytes: page's CRC %08x, crc32 Castagnoli %08x", n, got, want)
		}
	}

	be := binary.BigEndian
	for _, v := range loadVectors(t) {
		obj := mustRead(t, filepath.Join(vectorDir, v.File))
		h := 28 + int(be.Uint32(obj[24:28])) + 4
		if got, want := m.sum(obj[:h-4]), be.Uint32(obj[h-4:h]); got != want {
			t.Fatalf("%s: header CRC %08x, computed as the page says %08x", v.File, want, got)
		}
		hdrCRC := obj[h-4 : h]
		for i, rest := 0, obj[h:]; len(rest) > 0; i++ {
			l := int(be.Uint32(rest))
			msg := append(append(append([]byte{}, hdrCRC...), rest[:12]...), rest[16:16+l]...)
			if got, want := m.sum(msg), be.Uint32(rest[12:16]); got != want {
				t.Fatalf("%s frame %d: CRC %08x, computed as the page says %08x", v.File, i, want, got)
			}
			rest = rest[16+l:]
		}
	}
}

// TestDocFrameCRCExample checks the page's worked frame CRC: its input is
// what aligned-snappy-none.bsf holds and its result is the stored CRC.
func TestDocFrameCRCExample(t *testing.T) {
	doc := formatDoc(t)
	m := docCRCModel(t)
	ex := regexp.MustCompile("header CRC\\s+`([0-9a-f ]+)`; the frame is `([0-9a-f ]+)`\\):\n\n```\nCRC-32C\\(([0-9a-f ]+)\\) = ([0-9a-f ]+)\n```").FindStringSubmatch(doc)
	if ex == nil {
		t.Fatal("docs/format.md: worked frame CRC example not found")
	}
	unhex := func(s string) []byte {
		b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
		if err != nil {
			t.Fatalf("docs/format.md: %q: %v", s, err)
		}
		return b
	}
	hdrCRC, frame, input, result := unhex(ex[1]), unhex(ex[2]), unhex(ex[3]), unhex(ex[4])
	obj := mustRead(t, filepath.Join(vectorDir, "aligned-snappy-none.bsf"))
	h := 28 + int(binary.BigEndian.Uint32(obj[24:28])) + 4
	if !bytes.Equal(obj[h-4:h], hdrCRC) || !bytes.HasSuffix(obj, frame) || len(frame) != 17 {
		t.Fatalf("the example's header CRC % x and final frame % x are not aligned-snappy-none.bsf's (% x, % x)", hdrCRC, frame, obj[h-4:h], obj[len(obj)-17:])
	}
	if want := append(append(append([]byte{}, hdrCRC...), frame[:12]...), frame[16:]...); !bytes.Equal(input, want) {
		t.Fatalf("the example hashes % x; the page's rule gives % x", input, want)
	}
	if got := binary.BigEndian.AppendUint32(nil, m.sum(input)); !bytes.Equal(got, result) || !bytes.Equal(result, frame[12:16]) {
		t.Fatalf("the example says % x, computed % x, stored % x", result, got, frame[12:16])
	}
}

// TestDocManifestFields checks that the page's manifest table names every
// field the vector manifests hold, and that they hold every field it names.
func TestDocManifestFields(t *testing.T) {
	documented := map[string]bool{}
	tick := regexp.MustCompile("`([A-Za-z0-9]+)`")
	for _, r := range tableRows(docSection(t, formatDoc(t), "## Manifest")) {
		if len(r) != 3 {
			continue // the keyWrap table
		}
		for _, f := range tick.FindAllStringSubmatch(r[0], -1) {
			documented[f[1]] = true
		}
	}
	if len(documented) < 20 {
		t.Fatalf("docs/format.md manifest table: only %v", documented)
	}
	held := map[string]bool{}
	for _, v := range loadVectors(t) {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(mustRead(t, filepath.Join(vectorDir, v.Manifest)), &m); err != nil {
			t.Fatal(err)
		}
		for k := range m {
			held[k] = true
			if !documented[k] {
				t.Errorf("%s: field %q is not in docs/format.md", v.Manifest, k)
			}
		}
	}
	for k := range documented {
		if !held[k] {
			t.Errorf("docs/format.md documents %q, which no vector manifest holds", k)
		}
	}
}

// TestDocKeyWrapExamples checks that the page shows one keyWrap of each
// scheme and that each is, field for field, the vector manifest it names.
func TestDocKeyWrapExamples(t *testing.T) {
	re := regexp.MustCompile("`keyWrap` of `([a-z0-9-]+\\.manifest\\.json)`[^\n]*:\n\n```json\n((?s:.*?))```")
	schemes := map[string]bool{}
	for _, ex := range re.FindAllStringSubmatch(formatDoc(t), -1) {
		var doc, file struct {
			KeyWrap map[string]any `json:"keyWrap"`
		}
		if err := json.Unmarshal([]byte(ex[2]), &doc); err != nil {
			t.Fatalf("docs/format.md example for %s: %v", ex[1], err)
		}
		if err := json.Unmarshal(mustRead(t, filepath.Join(vectorDir, ex[1])), &file); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(doc.KeyWrap, file.KeyWrap) {
			t.Errorf("docs/format.md shows for %s\n%v\nthe vector holds\n%v", ex[1], doc.KeyWrap, file.KeyWrap)
		}
		schemes[doc.KeyWrap["scheme"].(string)] = true
	}
	if !reflect.DeepEqual(schemes, map[string]bool{"none": true, "age-x25519": true, "age-scrypt": true, "age-keyring": true}) {
		t.Fatalf("docs/format.md shows keyWrap examples of %v, want none, age-x25519, age-scrypt and age-keyring", schemes)
	}
}

// TestDocVectorTable checks the page's list of vectors against vectors.json.
func TestDocVectorTable(t *testing.T) {
	rows := map[string][]string{}
	for _, r := range tableRows(docSection(t, formatDoc(t), "## Vectors")) {
		rows[strings.Trim(r[0], "`")] = r
	}
	vs := loadVectors(t)
	if len(rows) != len(vs) {
		t.Fatalf("docs/format.md lists %d vectors, vectors.json %d", len(rows), len(vs))
	}
	for _, v := range vs {
		r, ok := rows[v.File]
		if !ok {
			t.Errorf("%s is not in docs/format.md", v.File)
			continue
		}
		if r[2] != strconv.FormatUint(v.Frames, 10) {
			t.Errorf("%s: docs/format.md says %s frames, vectors.json %d", v.File, r[2], v.Frames)
		}
	}
}
