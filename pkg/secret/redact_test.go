package secret

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	mathrand "math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// fresh returns a value no other test registered: the redactor is
// process-wide and only grows.
func fresh(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func TestRedactForms(t *testing.T) {
	v := fresh(t, `p@ss "w/rd"+<&>:`)
	Register(v)
	tests := []struct {
		name string
		give string
	}{
		{"raw", "dial: " + v + " refused"},
		{"query escaped", "postgres://u:" + url.QueryEscape(v) + "@h/db"},
		{"userinfo escaped", url.UserPassword("u", v).String() + "@h"},
		{"base64", "Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(v))},
		{"base64 url", base64.RawURLEncoding.EncodeToString([]byte(v))},
		{"go quoted", "msg=" + strconv.Quote(v)},
		{"json", func() string { b, _ := json.Marshal(map[string]string{"x": v}); return string(b) }()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Redact(tt.give)
			if !strings.Contains(got, Mask) {
				t.Fatalf("Redact(%q) = %q, no mask", tt.give, got)
			}
			if strings.Contains(got, "ss ") || strings.Contains(got, "rd") {
				t.Fatalf("Redact(%q) = %q: part of the value is left", tt.give, got)
			}
		})
	}
}

func TestRegisterShortAndURL(t *testing.T) {
	if Register("abc") {
		t.Fatal("a 3-byte value was registered")
	}
	if got := Redact("abc"); got != "abc" {
		t.Fatalf("short value redacted: %q", got)
	}
	pw := fresh(t, "mongo-pw-")
	Register("mongodb://admin:" + pw + "@h1:27017,h2:27017/?authSource=admin")
	if got := Redact("auth error for " + pw); strings.Contains(got, pw) {
		t.Fatalf("the password of a URI value was not redacted: %q", got)
	}
	pem := fresh(t, "-----BEGIN KEY-----\nline1-") + "\n" + fresh(t, "line2-") + "\n-----END KEY-----\n"
	Register(pem)
	line := strings.Split(pem, "\n")[2]
	if got := Redact("tool printed " + line); strings.Contains(got, line) {
		t.Fatalf("one line of a multi-line value was not redacted: %q", got)
	}
}

func TestRedactJSON(t *testing.T) {
	v := fresh(t, `json"\secret`)
	Register(v)
	clean := []byte(`{"a":"nothing here","n":12345678901234567890}`)
	if got := RedactJSON(clean); &got[0] != &clean[0] {
		t.Fatal("a document without a value was copied")
	}
	doc, _ := json.Marshal(map[string]any{
		"outputTail": "echo " + v + "\nok",
		"nested":     []any{map[string]any{"err": "x" + v}},
		"size":       json.Number("12345678901234567890"),
	})
	got := RedactJSON(doc)
	if bytes.Contains(got, []byte("secret")) {
		t.Fatalf("value left in %s", got)
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(got))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("result is not JSON: %v: %s", err, got)
	}
	if m["outputTail"] != "echo "+Mask+"\nok" || m["size"] != json.Number("12345678901234567890") {
		t.Fatalf("got %s", got)
	}
	if got := RedactJSON([]byte("not json " + v)); string(got) != "not json "+Mask {
		t.Fatalf("text fallback: %s", got)
	}
}

// TestRedactJSONKeepsNames: a weak value that occurs in a name or a time is
// left there (the name is public anyway, and masking it would break lookups),
// and still masked in free text beside it.
func TestRedactJSONKeepsNames(t *testing.T) {
	weak := fresh(t, "weak")[:8] // "weak" and 4 hex digits
	Register(weak)
	doc, _ := json.Marshal(map[string]any{
		"subject": weak + "-db",
		"data": map[string]any{
			"plan":  weak + "-db",
			"ops":   []string{"sh/" + weak},
			"steps": []any{map[string]any{"name": "hook:" + weak + "/x", "error": "denied for " + weak}},
			"error": "dial " + weak,
		},
	})
	var got map[string]any
	if err := json.Unmarshal(RedactJSON(doc), &got); err != nil {
		t.Fatal(err)
	}
	data := got["data"].(map[string]any)
	step := data["steps"].([]any)[0].(map[string]any)
	if got["subject"] != weak+"-db" || data["plan"] != weak+"-db" || data["ops"].([]any)[0] != "sh/"+weak || step["name"] != "hook:"+weak+"/x" {
		t.Fatalf("a name was masked: %v", got)
	}
	if data["error"] != "dial "+Mask || step["error"] != "denied for "+Mask {
		t.Fatalf("free text was not masked: %v", got)
	}
}

func TestWriterSplits(t *testing.T) {
	v := fresh(t, "stream-secret-")
	Register(v)
	text := "before " + v + " middle " + v + " after"
	want := "before " + Mask + " middle " + Mask + " after"
	// Every way of cutting the stream in two, and byte by byte.
	for cut := 0; cut <= len(text); cut++ {
		var buf bytes.Buffer
		w := NewWriter(&buf)
		_, _ = w.Write([]byte(text[:cut]))
		_, _ = w.Write([]byte(text[cut:]))
		_ = w.Close()
		if buf.String() != want {
			t.Fatalf("cut at %d: %q", cut, buf.String())
		}
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for i := range len(text) {
		_, _ = w.Write([]byte{text[i]})
	}
	_ = w.Close()
	if buf.String() != want {
		t.Fatalf("byte by byte: %q", buf.String())
	}
}

func TestWriterHoldsPartial(t *testing.T) {
	v := fresh(t, "held-back-")
	Register(v)
	var buf bytes.Buffer
	w := NewWriter(&buf)
	_, _ = w.Write([]byte("x " + v[:len(v)-1]))
	if strings.Contains(buf.String(), v[:MinLen]) {
		t.Fatalf("a partial value went through before the stream showed its end: %q", buf.String())
	}
}

func TestHead(t *testing.T) {
	v := fresh(t, "head-secret-")
	Register(v)
	tests := []struct {
		name string
		give string
		n    int
	}{
		{"value straddles the limit", strings.Repeat("a", 10) + v + strings.Repeat("b", 100), 14},
		{"value starts at the limit", strings.Repeat("a", 10) + v, 10},
		{"value ends the input", "short " + v, 1000},
		{"many values shrink the text", strings.Repeat(v, 20) + strings.Repeat("c", 5) + v, len(v)*20 + 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Head(strings.NewReader(tt.give), tt.n)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) > tt.n {
				t.Fatalf("%d bytes, limit %d", len(got), tt.n)
			}
			for i := MinLen; i <= len(v); i++ {
				if strings.Contains(got, v[len(v)-i:]) || strings.Contains(got, v[:i]) {
					t.Fatalf("part of the value in %q", got)
				}
			}
		})
	}
}

func TestLineWriter(t *testing.T) {
	v := fresh(t, "log-secret-")
	Register(v)
	var buf bytes.Buffer
	n, err := LineWriter{W: &buf}.Write([]byte("level=INFO msg=x err=\"dial " + v + "\"\n"))
	if err != nil || n != len("level=INFO msg=x err=\"dial "+v+"\"\n") {
		t.Fatalf("n=%d err=%v", n, err)
	}
	if strings.Contains(buf.String(), v) || !strings.Contains(buf.String(), Mask) {
		t.Fatalf("got %q", buf.String())
	}
}

func TestResolveRegisters(t *testing.T) {
	v := fresh(t, "resolved-")
	t.Setenv("BACKSTREAM_TEST_SECRET_RESOLVE", v)
	got, err := Ref{Env: "BACKSTREAM_TEST_SECRET_RESOLVE"}.Resolve()
	if err != nil || got != v {
		t.Fatalf("Resolve = %q, %v", got, err)
	}
	if Redact("x"+v) != "x"+Mask {
		t.Fatalf("a resolved value is not redacted")
	}
}

// TestWriterAgreesWithRedact feeds streams built from values, their
// prefixes and noise to a Writer in random pieces: the result is always
// what Redact makes of the whole text.
func TestWriterAgreesWithRedact(t *testing.T) {
	a, b := fresh(t, "agree-a-"), fresh(t, "agree-b-")
	Register(a)
	Register(b)
	Register(a + b[:5]) // a value with another as its prefix
	pieces := []string{a, b, a[:7], b[3:], "x", "\n", a + b[:5], b[:len(b)-1]}
	rng := mathrand.New(mathrand.NewPCG(1, 2))
	for round := range 500 {
		var text strings.Builder
		for range rng.IntN(12) {
			text.WriteString(pieces[rng.IntN(len(pieces))])
		}
		s := text.String()
		var buf bytes.Buffer
		w := NewWriter(&buf)
		for rest := s; rest != ""; {
			n := min(len(rest), 1+rng.IntN(20))
			_, _ = w.Write([]byte(rest[:n]))
			rest = rest[n:]
		}
		_ = w.Close()
		if want := Redact(s); buf.String() != want {
			t.Fatalf("round %d: %q\nWriter: %q\nRedact: %q", round, s, buf.String(), want)
		}
	}
}

func TestWriterManyValuesInOneWrite(t *testing.T) {
	v := fresh(t, "many-")
	Register(v)
	var buf bytes.Buffer
	w := NewWriter(&buf)
	_, _ = w.Write([]byte(strings.Repeat(v+" ", 20000)))
	_ = w.Close()
	if got := strings.Count(buf.String(), Mask); got != 20000 || strings.Contains(buf.String(), v) {
		t.Fatalf("%d masks, want 20000", got)
	}
}
