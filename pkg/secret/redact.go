package secret

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Mask replaces a secret value wherever text leaves the process.
const Mask = "[REDACTED]"

// MinLen is the shortest value Register accepts. A shorter value would match
// innocent text everywhere (a 3-byte password "abc" hides every "abc" in every
// event, log line and run record, and breaks names and digests that contain
// it), and the pattern of masks it leaves would itself tell the value. Such a
// value is not a secret worth the name; it is not redacted, and docs/plans.md
// says so.
const MinLen = 4

// The process-wide redactor. Every value Ref.Resolve returns is in it, so
// whatever this process later writes out — an event, a run record, a log
// line, a child's output tail — can be scrubbed without knowing which plan
// or stage the text came from. Values are only ever added: a rotated secret's
// old value stays redacted, which is what an operator wants from a leaked
// old password too. It grows by the distinct values resolved, a handful per
// plan.
var std redactor

type redactor struct {
	mu     sync.Mutex
	values map[string]bool // raw values registered
	forms  map[string]bool // every pattern searched for
	snap   atomic.Pointer[snapshot]
}

// snapshot is an immutable view of the patterns, swapped whole on Register so
// readers never lock.
type snapshot struct {
	patterns [][]byte // longest first, so the longest match wins at a position
	repl     *strings.Replacer
	maxLen   int
}

// Register adds v, and the forms it takes when a program escapes or encodes
// it, to the process's redactor. Values shorter than MinLen are refused
// (false). Ref.Resolve registers what it returns; call Register for a
// secret that reaches the process another way (a token read from a flag's
// environment variable).
func Register(v string) bool {
	return std.register(v)
}

func (r *redactor) register(v string) bool {
	if len(v) < MinLen {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.values[v] {
		return true
	}
	if r.values == nil {
		r.values, r.forms = map[string]bool{}, map[string]bool{}
	}
	r.values[v] = true
	added := false
	for _, f := range forms(v) {
		if len(f) >= MinLen && !r.forms[f] {
			r.forms[f] = true
			added = true
		}
	}
	if added {
		r.rebuild()
	}
	return true
}

// forms lists v and the shapes it takes in text this process writes: URL
// escaping (a DSN in a driver's error), base64 (a basic-auth header, a
// value a tool prints encoded), JSON and Go quoting (the bytes of an event
// or a log line, where a quote or a control character is escaped), the
// password of a URL-shaped value (a MongoDB URI), and each line of a
// multi-line value (a PEM key a tool prints line by line).
func forms(v string) []string {
	out := []string{v,
		url.QueryEscape(v), url.PathEscape(v),
		strings.TrimPrefix(url.UserPassword("", v).String(), ":"),
		base64.StdEncoding.EncodeToString([]byte(v)), base64.URLEncoding.EncodeToString([]byte(v)),
		base64.RawStdEncoding.EncodeToString([]byte(v)), base64.RawURLEncoding.EncodeToString([]byte(v)),
		inner(strconv.Quote(v)),
	}
	if b, err := json.Marshal(v); err == nil {
		out = append(out, inner(string(b)))
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if enc.Encode(v) == nil {
		out = append(out, inner(strings.TrimSuffix(buf.String(), "\n")))
	}
	if p, ok := urlPassword(v); ok {
		out = append(out, forms(p)...)
		if u, err := url.PathUnescape(p); err == nil && u != p {
			out = append(out, forms(u)...)
		}
	}
	if strings.ContainsAny(v, "\r\n") {
		for _, line := range strings.FieldsFunc(v, func(r rune) bool { return r == '\n' || r == '\r' }) {
			if line = strings.TrimSpace(line); line != v {
				out = append(out, forms(line)...)
			}
		}
	}
	return out
}

func inner(quoted string) string { return quoted[1 : len(quoted)-1] }

// urlPassword returns the password of scheme://user:password@host…, parsed
// by hand: url.Parse refuses MongoDB's host lists (h1:27017,h2:27017).
func urlPassword(v string) (string, bool) {
	i := strings.Index(v, "://")
	if i < 0 {
		return "", false
	}
	rest := v[i+3:]
	if j := strings.IndexAny(rest, "/?#"); j >= 0 {
		rest = rest[:j]
	}
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return "", false
	}
	_, pw, ok := strings.Cut(rest[:at], ":")
	return pw, ok && pw != ""
}

func (r *redactor) rebuild() {
	s := &snapshot{}
	for f := range r.forms {
		s.patterns = append(s.patterns, []byte(f))
	}
	slices.SortFunc(s.patterns, func(a, b []byte) int {
		if len(a) != len(b) {
			return len(b) - len(a)
		}
		return bytes.Compare(a, b)
	})
	pairs := make([]string, 0, 2*len(s.patterns))
	for _, p := range s.patterns {
		pairs = append(pairs, string(p), Mask)
	}
	s.repl = strings.NewReplacer(pairs...)
	if len(s.patterns) > 0 {
		s.maxLen = len(s.patterns[0])
	}
	r.snap.Store(s)
}

// Redact returns s with every registered value replaced by Mask.
func Redact(s string) string {
	snap := std.snap.Load()
	if snap == nil {
		return s
	}
	return snap.repl.Replace(s)
}

// RedactJSON returns the JSON document b with every registered value in its
// strings replaced by Mask, or b itself when none is there. It works on the
// decoded strings, so a value is found whatever escaping the encoder chose,
// and the result stays valid JSON (a value that happens to be part of the
// document's structure is never cut out of it). Numbers keep their text.
// A b that is not JSON is redacted as text.
//
// Strings under the keys in names are left alone: they are the names, ids,
// times and targets the stages route, look up and parse by (a CloudEvent's
// envelope, a run's plan and steps, an object key). They are chosen by a
// plan's author or generated and are public by construction (subjects and
// KV keys carry them); masking a weak password that happens to occur in one
// ("prod" in plan prod-db, "2026" in a timestamp) would hide nothing and
// break the run.
func RedactJSON(b []byte) []byte {
	snap := std.snap.Load()
	if snap == nil {
		return b
	}
	// Every form the encoders write is registered, so a document the
	// replacer leaves alone holds no value: the common case costs one scan.
	if snap.repl.Replace(string(b)) == string(b) {
		return b
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return []byte(snap.repl.Replace(string(b)))
	}
	if _, err := dec.Token(); err != io.EOF {
		// More than one document: keep them all, as text.
		return []byte(snap.repl.Replace(string(b)))
	}
	out, err := json.Marshal(redactValue(snap, v, false))
	if err != nil {
		return []byte(snap.repl.Replace(string(b)))
	}
	return out
}

// names are the JSON keys whose strings RedactJSON keeps: CloudEvent
// envelope attributes, and the identifier fields of event payloads and run
// records.
var names = map[string]bool{
	// CloudEvents envelope and backstream's extensions
	"specversion": true, "id": true, "source": true, "type": true, "subject": true, "time": true,
	"datacontenttype": true, "dataschema": true, "runid": true, "step": true, "traceparent": true,
	// names from the plan, ids, object keys, restore targets
	"plan": true, "name": true, "hook": true, "op": true, "ops": true, "destination": true,
	"key": true, "manifestKey": true, "backupId": true, "dataSubject": true, "target": true,
	"owner": true, "requestedBy": true, "trigger": true, "chain": true, "onError": true,
	"stage": true, "failedStage": true, "failedStep": true, "phase": true, "kind": true,
	"mode": true, "verifyMode": true, "sha": true, "plaintextSha": true,
	// times, parsed back
	"slot": true, "created": true, "updated": true, "started": true, "finished": true,
	"deadline": true, "expectedBy": true, "lastSuccess": true,
}

// redactValue redacts the strings of v; keep is set for the value of a key
// in names (its strings, and those of an array of them, are kept; an
// object below it is walked as usual).
func redactValue(snap *snapshot, v any, keep bool) any {
	switch t := v.(type) {
	case string:
		if keep {
			return t
		}
		return snap.repl.Replace(t)
	case []any:
		for i := range t {
			t[i] = redactValue(snap, t[i], keep)
		}
		return t
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			rk := k
			if !names[k] {
				rk = snap.repl.Replace(k)
			}
			out[rk] = redactValue(snap, x, names[k])
		}
		return out
	}
	return v
}

// Writer redacts a stream on its way to the writer it wraps. A value split
// over two Writes is still found: Writer holds back the last bytes that may
// begin a value until the next Write shows whether they do. Close writes
// what is held back; a Writer that is not closed never lets a partial value
// through, which is how Head cuts a stream. Safe for concurrent Writes.
type Writer struct {
	mu      sync.Mutex
	w       io.Writer
	pending []byte
	err     error
}

// NewWriter returns a Writer into w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write implements io.Writer. It reports len(p) unless the wrapped writer
// failed, since the bytes held back are its own business.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	w.pending = append(w.pending, p...)
	w.emit(false)
	return len(p), w.err
}

// Close writes what is held back. It does not close the wrapped writer.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.emit(true)
	}
	return w.err
}

// emit writes every byte of pending that cannot be part of a value any
// more, redacted. A match starting before len-maxLen+1 is decidable: every
// pattern that could start there fits in pending, so the longest one wins
// as in Redact.
func (w *Writer) emit(final bool) {
	snap := std.snap.Load()
	if snap == nil {
		w.write(w.pending)
		w.pending = w.pending[:0]
		return
	}
	safe := len(w.pending)
	if !final {
		safe = max(0, len(w.pending)-snap.maxLen+1)
	}
	// next[k] is where pattern k next occurs at or after i (-1: nowhere),
	// searched again only once i passes it: a stream full of values costs
	// one scan per pattern, not one per value.
	next := make([]int, len(snap.patterns))
	for k, p := range snap.patterns {
		next[k] = index(w.pending, 0, p)
	}
	i := 0
	for i < safe {
		at, n := -1, 0
		for k, p := range snap.patterns {
			if next[k] >= 0 && next[k] < i {
				next[k] = index(w.pending, i, p)
			}
			if j := next[k]; j >= 0 && (at < 0 || j < at || (j == at && len(p) > n)) {
				at, n = j, len(p)
			}
		}
		if at < 0 || at >= safe {
			break
		}
		w.write(w.pending[i:at])
		w.write([]byte(Mask))
		i = at + n
	}
	if i < safe {
		w.write(w.pending[i:safe])
		i = safe
	}
	w.pending = append(w.pending[:0], w.pending[i:]...)
}

func (w *Writer) write(p []byte) {
	if w.err != nil || len(p) == 0 {
		return
	}
	_, w.err = w.w.Write(p)
}

// index is bytes.Index of p in b from position from on, as a position in b.
func index(b []byte, from int, p []byte) int {
	j := bytes.Index(b[from:], p)
	if j < 0 {
		return -1
	}
	return from + j
}

// Head returns at most n bytes from the start of r, redacted, reading no more
// than n plus the longest value. A value cut by the limit is never shown in
// part. When reading fails, Head returns what it could read before, with the
// error.
func Head(r io.Reader, n int) (string, error) {
	extra := 0
	if snap := std.snap.Load(); snap != nil {
		extra = snap.maxLen
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	limit := int64(n + extra)
	got, err := io.Copy(w, io.LimitReader(r, limit+1))
	if err == nil && got <= limit {
		// The whole input is here: nothing held back is the start of a
		// value that goes on. (A bytes.Buffer never fails a Write.)
		_ = w.Close()
	}
	out := buf.Bytes()
	if len(out) > n {
		out = out[:n]
	}
	return string(out), err
}

// LineWriter redacts each Write as a whole, with nothing held back: for
// writers that get whole records, as a log/slog handler writes one line per
// call. It returns len(p) when the wrapped writer took the redacted line.
type LineWriter struct{ W io.Writer }

// Write implements io.Writer.
func (l LineWriter) Write(p []byte) (int, error) {
	snap := std.snap.Load()
	if snap == nil {
		return l.W.Write(p)
	}
	s := string(p)
	r := snap.repl.Replace(s)
	if r == s {
		return l.W.Write(p)
	}
	if _, err := io.WriteString(l.W, r); err != nil {
		return 0, err
	}
	return len(p), nil
}
