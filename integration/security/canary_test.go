package security

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/testenv"
)

// canary is a secret value planted in one place a plan can name a secret.
type canary struct {
	name  string // where it was planted
	value string
	core  string // the random part of value, in plain hex
}

func newCanary(name, suffix string) canary {
	core := testenv.Unique("") // 12 hex digits
	return canary{name: name, value: "cnry-" + name + "-" + core + suffix, core: core}
}

// forms are what would be found if the canary leaked: its random part,
// which survives every escaping (URL, JSON, Go quoting) and any cut that
// keeps half of it, and the value in base64 (a header, a blob).
func (c canary) forms() []string {
	return []string{c.core,
		base64.StdEncoding.EncodeToString([]byte(c.value)), base64.RawURLEncoding.EncodeToString([]byte(c.value))}
}

// leakScan collects every text the test could read and reports where a
// canary shows up.
type leakScan struct {
	canaries []canary
	mu       sync.Mutex
	searched map[string]int // place kind -> how many texts were searched
	leaks    []string
}

func (s *leakScan) check(place string, text []byte) {
	kind, _, _ := strings.Cut(place, " ")
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.searched == nil {
		s.searched = map[string]int{}
	}
	s.searched[kind]++
	for _, c := range s.canaries {
		for _, f := range c.forms() {
			if i := bytes.Index(text, []byte(f)); i >= 0 {
				lo, hi := max(0, i-80), min(len(text), i+len(f)+80)
				s.leaks = append(s.leaks, fmt.Sprintf("%s: canary %s (%q) in %q", place, c.name, f, text[lo:hi]))
			}
		}
	}
}

// psSampler runs `ps -eo args` until stopped and keeps every distinct line:
// the argv of serve and of every child it starts (dumps, hooks).
type psSampler struct {
	stop    chan struct{}
	done    chan struct{}
	lines   map[string]bool
	samples int
}

func startPS(t *testing.T) *psSampler {
	p := &psSampler{stop: make(chan struct{}), done: make(chan struct{}), lines: map[string]bool{}}
	go func() {
		defer close(p.done)
		for {
			out, err := exec.Command("ps", "-eo", "args").Output()
			if err == nil {
				p.samples++
				for _, l := range strings.Split(string(out), "\n") {
					p.lines[l] = true
				}
			}
			select {
			case <-p.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(p.finish)
	return p
}

func (p *psSampler) finish() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// api is an authenticated client of serve's HTTP API.
type api struct {
	t     *testing.T
	base  string
	token string
	scan  *leakScan
}

func (a *api) do(method, path string, body any, want int) []byte {
	a.t.Helper()
	code, out := a.call(method, path, body)
	if code != want {
		a.t.Fatalf("%s %s: status %d, want %d: %s", method, path, code, want, out)
	}
	return out
}

// call sends one request and returns the status and the body, searched.
func (a *api) call(method, path string, body any) (int, []byte) {
	a.t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.base+path, r)
	if err != nil {
		a.t.Fatal(err)
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	a.scan.check("api "+method+" "+path, out)
	return resp.StatusCode, out
}

func (a *api) run(id string) runs.Run {
	a.t.Helper()
	var r runs.Run
	if err := json.Unmarshal(a.do("GET", "/v1/runs/"+id, nil, http.StatusOK), &r); err != nil {
		a.t.Fatalf("run %s: %v", id, err)
	}
	return r
}

// wait polls a run through the API until it is over. The record may not
// exist yet: the stage that starts the run creates it.
func (a *api) wait(id string, timeout time.Duration) runs.Run {
	a.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		code, out := a.call("GET", "/v1/runs/"+id, nil)
		var r runs.Run
		switch {
		case code == http.StatusOK:
			if err := json.Unmarshal(out, &r); err != nil {
				a.t.Fatalf("run %s: %v", id, err)
			}
			if r.Phase.Done() {
				return r
			}
		case code != http.StatusNotFound:
			a.t.Fatalf("run %s: status %d: %s", id, code, out)
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("run %s not over after %s: status %d, phase %q", id, timeout, code, r.Phase)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (a *api) trigger(planName string) string {
	a.t.Helper()
	var out struct {
		RunID string `json:"runId"`
	}
	if err := json.Unmarshal(a.do("POST", "/v1/plans/"+planName+"/trigger", map[string]string{"reason": "canary"}, http.StatusAccepted), &out); err != nil || out.RunID == "" {
		a.t.Fatalf("trigger %s: %v", planName, err)
	}
	return out.RunID
}

// TestCanarySecretsNeverLeak plants a distinct canary value in every place
// a plan or serve takes a secret — the source's password (also the DSN of
// an sql hook), the S3 access and secret keys, an exec hook's environment
// (from an env and a file reference), an http hook's secret header, a
// command source's environment, the encryption passphrase — runs backups
// that succeed and fail (a failing dump and a failing hook that print their
// secret, compensation that echoes one) and a restore, with a real `serve`
// process, and then looks for the canaries everywhere text is kept or shown:
// every message of every stream (events, dead letters, every KV bucket's
// history), every file of serve's data directory, serve's output, CLI
// output, every API response and /metrics, the objects in the bucket, and
// the argv of every process sampled while the runs were going on.
func TestCanarySecretsNeverLeak(t *testing.T) {
	ctx := context.Background()
	begin := time.Now()
	dir := t.TempDir()
	c := map[string]canary{}
	for _, n := range []string{"db", "s3access", "s3secret", "hookfile", "http", "source", "hookfail", "undo"} {
		c[n] = newCanary(n, "")
	}
	// Characters that escape differently in URLs, JSON and Go quoting; the
	// DB password and the access key stay plain (a DSN, a MinIO user name).
	c["hookenv"] = newCanary("hookenv", `+/"&x`)
	c["pass"] = newCanary("pass", " +/x")
	scan := &leakScan{}
	for _, v := range c {
		scan.canaries = append(scan.canaries, v)
	}

	// The source: a database on the machine's MariaDB that only a user with
	// the canary password can reach, dropped with the user at the end.
	db := testenv.MariaDBNamed(t, testenv.Unique("bs_cnry_"))
	dbUser := db.Name // a unique name, also fine as a user name
	restored := db.Name + "_r"
	for _, q := range []string{
		// 8 MiB, so the dump lives long enough for ps to see its argv.
		"CREATE TABLE t (id INT PRIMARY KEY, v LONGTEXT)",
		"INSERT INTO t VALUES (1, REPEAT('one ', 1 << 19)), (2, REPEAT('two ', 1 << 19)), (3, REPEAT('six ', 1 << 19)), (4, REPEAT('ten ', 1 << 19))",
		"CREATE USER '" + dbUser + "'@'%' IDENTIFIED BY '" + c["db"].value + "'",
		"GRANT ALL ON `" + db.Name + "%`.* TO '" + dbUser + "'@'%'",
	} {
		if _, err := db.SQL.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		_, _ = db.SQL.ExecContext(context.Background(), "DROP USER IF EXISTS '"+dbUser+"'@'%'")
		_, _ = db.SQL.ExecContext(context.Background(), "DROP DATABASE IF EXISTS `"+restored+"`")
	})

	// The destination: MinIO whose only credentials are the canaries.
	mc := testenv.MinIOWithCredentials(t, c["s3access"].value, c["s3secret"].value)
	bucket := mc.NewBucket(t, "canary")

	// The http hook's server answers with the header it got: a server that
	// echoes a credential.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "got %s", r.Header.Get("Authorization"))
	}))
	defer echo.Close()

	secretFile := func(name, value string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(value+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	s3SecretFile := secretFile("s3-secret", c["s3secret"].value)
	hookFile := secretFile("hook-token", c["hookfile"].value)
	env := []string{
		"CNRY_DB_PW=" + c["db"].value,
		"CNRY_S3_ACCESS=" + c["s3access"].value,
		"CNRY_HOOK=" + c["hookenv"].value,
		"CNRY_HTTP=Bearer " + c["http"].value,
		"CNRY_PASS=" + c["pass"].value,
		"CNRY_SOURCE=" + c["source"].value,
		"CNRY_HOOKFAIL=" + c["hookfail"].value,
		"CNRY_UNDO=" + c["undo"].value,
	}
	s3 := fmt.Sprintf(`
    - name: s3
      type: s3
      s3:
        endpoint: %s
        bucket: %s
        insecure: true
        accessKey: {env: CNRY_S3_ACCESS}
        secretKey: {file: %s}`, mc.Endpoint, bucket, s3SecretFile)
	filters := `
  filters:
    compression: zstd
    encryption:
      type: aes-256-gcm
      passphrase: {env: CNRY_PASS}`
	plans := fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: cnry-ok}
spec:
  source:
    type: mariadb
    mariadb:
      host: 127.0.0.1
      port: 3306
      user: %[1]s
      password: {env: CNRY_DB_PW}
      databases: [%[2]s]
  hooks:
    - name: sh
      type: exec
      exec:
        env:
          TOKEN: {env: CNRY_HOOK}
          FTOKEN: {file: %[3]s}
      ops:
        - name: echo
          command: ["sh", "-c", "sleep 0.3; echo \"hook-stdout $TOKEN $FTOKEN\"; echo \"hook-stderr $TOKEN\" >&2"]
    - name: db
      type: sql
      ops:
        - name: ping
          sql: "SELECT 1"
    - name: web
      type: http
      http:
        baseURL: %[4]s
        secretHeaders:
          Authorization: {env: CNRY_HTTP}
      ops:
        - name: call
          http: {url: /hook}
  workflows:
    - name: backup
      sequence: [{hook: sh/echo}, {hook: db/ping}, {hook: web/call}, snapshot]
%[5]s
  destinations:%[6]s
  retention: {keepLast: 3}
---
apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: cnry-fail}
spec:
  source:
    type: command
    command:
      argv: ["sh", "-c", "sleep 0.3; echo \"dump failed: $SRC\" >&2; exit 3"]
      env: {SRC: {env: CNRY_SOURCE}}
  hooks:
    - name: sh
      type: exec
      exec:
        env: {UNDO: {env: CNRY_UNDO}}
      ops:
        - name: pre
          command: ["sh", "-c", "echo prepared"]
          inverseOp: undo
        - name: undo
          command: ["sh", "-c", "echo \"undone with $UNDO\""]
  workflows:
    - name: backup
      sequence: [{hook: sh/pre}, snapshot]
%[5]s
  destinations:%[6]s
---
apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: cnry-hookfail}
spec:
  source:
    type: command
    command: {argv: ["echo", "data"]}
  hooks:
    - name: sh
      type: exec
      exec:
        env: {TOKEN: {env: CNRY_HOOKFAIL}}
      ops:
        - name: bad
          command: ["sh", "-c", "sleep 0.3; echo \"denied for $TOKEN\"; exit 4"]
  workflows:
    - name: backup
      sequence: [{hook: sh/bad}, snapshot]
%[5]s
  destinations:%[6]s
`, dbUser, db.Name, hookFile, echo.URL, filters, s3)
	planFile := filepath.Join(dir, "plans.yaml")
	if err := os.WriteFile(planFile, []byte(plans), 0o600); err != nil {
		t.Fatal(err)
	}

	port, apiPort := testenv.FreePort(t), testenv.FreePort(t)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", port)
	data := filepath.Join(dir, "data")
	ps := startPS(t)
	p := harness.StartProcess(t, dir, env, "serve", "--data", data, "--embedded", testenv.Addr(port),
		"--listen", testenv.Addr(apiPort), "--passphrase-env", "CNRY_PASS", "--log-level", "debug")
	p.WaitOutput("backstream serving", time.Minute)
	t.Logf("serving after %s", time.Since(begin).Round(time.Millisecond))
	out, code := harness.Run(t, dir, nil, "plan", "apply", "-f", planFile, "--nats", natsURL)
	scan.check("cli plan apply", []byte(out))
	if code != 0 {
		t.Fatalf("plan apply: exit %d: %s", code, out)
	}

	token, err := os.ReadFile(filepath.Join(data, "auth", "api-admin.token"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	a := &api{t: t, base: "http://" + testenv.Addr(apiPort), token: strings.TrimSpace(string(token)), scan: scan}

	okID, failID, hookFailID := a.trigger("cnry-ok"), a.trigger("cnry-fail"), a.trigger("cnry-hookfail")
	if r := a.wait(okID, 2*time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("cnry-ok: %s: %s", r.Phase, r.Error)
	}
	for _, id := range []string{failID, hookFailID} {
		if r := a.wait(id, 2*time.Minute); r.Phase != runs.Failed {
			t.Fatalf("run %s: %s, want Failed", id, r.Phase)
		}
	}
	var rs struct {
		RunID string `json:"runId"`
	}
	body := map[string]any{"backupId": okID, "destination": "s3", "target": restored, "create": true}
	if err := json.Unmarshal(a.do("POST", "/v1/plans/cnry-ok/restore", body, http.StatusAccepted), &rs); err != nil {
		t.Fatal(err)
	}
	if r := a.wait(rs.RunID, 2*time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("restore: %s: %s", r.Phase, r.Error)
	}
	t.Logf("restored after %s", time.Since(begin).Round(time.Millisecond))

	// Every stage is done with the runs before the search: retention after
	// the success, compensation after the failures.
	b := bustest.Connect(t, natsURL, "canary")
	settled := map[string]string{okID: events.RetentionCompleted, failID: events.CompensationCompleted, hookFailID: events.CompensationCompleted}
	deadline := time.Now().Add(time.Minute)
	for id, typ := range settled {
		for !hasType(harness.RunEvents(t, b, id), typ) {
			if time.Now().After(deadline) {
				t.Fatalf("run %s never got %s", id, typ)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	ps.finish()
	t.Logf("runs settled after %s", time.Since(begin).Round(time.Millisecond))

	// The runs' failures are the canaries' failures, and the output the
	// hooks echoed is kept, redacted: the test saw the paths it meant to.
	failR, hookFailR := a.run(failID), a.run(hookFailID)
	want := []struct{ what, text, sub string }{
		{"cnry-fail's error", failR.Error, "dump failed: " + secret.Mask},
		{"cnry-hookfail's error", hookFailR.Error, "denied for " + secret.Mask},
	}
	var allEvents strings.Builder
	for _, id := range []string{okID, failID, hookFailID, rs.RunID} {
		for _, e := range harness.RunEvents(t, b, id) {
			j, _ := json.Marshal(e)
			allEvents.Write(j)
			allEvents.WriteByte('\n')
		}
	}
	for _, sub := range []string{
		`hook-stdout ` + secret.Mask + ` ` + secret.Mask + `\nhook-stderr ` + secret.Mask, // exec hook, both references
		`got ` + secret.Mask,                      // http hook echo of the secret header
		`undone with ` + secret.Mask,              // compensation's output
		`denied for ` + secret.Mask,               // the failing hook's output tail
		`dump failed: ` + secret.Mask,             // the dump's stderr in the failure reason
		`"outputTail":"denied for ` + secret.Mask, // kept, not dropped
	} {
		want = append(want, struct{ what, text, sub string }{"the runs' events", allEvents.String(), sub})
	}
	for _, w := range want {
		if !strings.Contains(w.text, w.sub) {
			t.Errorf("%s lack %q:\n%s", w.what, w.sub, w.text)
		}
	}

	// Streams: every message kept, with its headers (dead letters carry
	// their reason there), of events, dead letters, KV history, chunks.
	streams := b.JS.StreamNames(ctx)
	var names []string
	for n := range streams.Name() {
		names = append(names, n)
	}
	if err := streams.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	for _, n := range names {
		s, err := b.JS.Stream(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := s.GetMsg(ctx, seq)
			if err != nil {
				continue // deleted or purged
			}
			scan.check("stream "+n+" "+m.Subject, m.Data)
			for k, vs := range m.Header {
				scan.check("stream "+n+" "+m.Subject+" header "+k, []byte(strings.Join(vs, "\n")))
			}
		}
	}

	// The API, as an operator's tools read it, and the metrics.
	a.do("GET", "/v1/plans", nil, http.StatusOK)
	a.do("GET", "/v1/runs", nil, http.StatusOK)
	for _, pl := range []string{"cnry-ok", "cnry-fail", "cnry-hookfail"} {
		a.do("GET", "/v1/runs?plan="+pl, nil, http.StatusOK)
	}
	for _, id := range []string{okID, failID, hookFailID, rs.RunID} {
		a.run(id)
	}
	a.do("GET", "/metrics", nil, http.StatusOK)
	for _, args := range [][]string{{"runs"}, {"run", failID}, {"run", hookFailID, "-o", "json"}, {"plan", "get", "cnry-ok"}} {
		out, code := harness.Run(t, dir, nil, append(args, "--nats", natsURL)...)
		scan.check("cli "+strings.Join(args, " "), []byte(out))
		if code != 0 {
			t.Errorf("backstream %s: exit %d: %s", strings.Join(args, " "), code, out)
		}
	}

	// The bucket: the backup's object and manifest.
	for o := range mc.Client(t).ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		obj, err := mc.Client(t).GetObject(ctx, bucket, o.Key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(obj)
		obj.Close()
		if err != nil {
			t.Fatal(err)
		}
		scan.check("object "+o.Key, body)
	}

	// Serve's files on disk (the JetStream store as written), leaving out
	// auth/: the NATS and API credentials are secrets by design.
	err = filepath.WalkDir(data, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "auth" {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			scan.check("file "+strings.TrimPrefix(path, data), b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	scan.check("log serve", []byte(p.Output()))
	var argv []string
	for l := range ps.lines {
		argv = append(argv, l)
	}
	sort.Strings(argv)
	scan.check("ps argv", []byte(strings.Join(argv, "\n")))
	for _, child := range []string{"backstream serve", "mariadb-dump", "hook-stdout $TOKEN"} {
		if !strings.Contains(strings.Join(argv, "\n"), child) {
			t.Errorf("ps never saw %q in %d samples", child, ps.samples)
		}
	}

	kinds := make([]string, 0, len(scan.searched))
	for k, n := range scan.searched {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(kinds)
	t.Logf("searched %d canaries (%d forms each) in: %s; ps: %d samples, %d distinct argv lines", len(scan.canaries), len(c["db"].forms()), strings.Join(kinds, " "), ps.samples, len(argv))
	for _, l := range scan.leaks {
		t.Error(l)
	}
}

func hasType(evs []events.Event, typ string) bool {
	for _, e := range evs {
		if e.Type() == typ {
			return true
		}
	}
	return false
}
