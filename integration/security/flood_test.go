package security

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
)

// floodKind is one kind of bad message: how to make the i-th, and what its
// dead letters' reasons say. refused kinds are refused by the server when
// published (larger than an event may be) and never stored.
type floodKind struct {
	name    string
	count   int
	make    func(i int) (subject string, data []byte)
	reason  string
	refused bool
}

// floodEvent is a structured-mode CloudEvent of type typ about planName as
// JSON, valid unless set changes it (a nil value removes an attribute).
func floodEvent(typ, planName string, data any, set map[string]any) []byte {
	m := map[string]any{
		"specversion": "1.0", "id": events.NewID(), "source": "flood/test", "type": typ, "subject": planName,
		"time": time.Now().UTC().Format(time.RFC3339Nano), "datacontenttype": "application/json",
		"runid": events.NewID(), "data": data,
	}
	for k, v := range set {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func floodKinds(maxPayload int) []floodKind {
	const n = 270
	requested := events.Subject(events.BackupRequested, "flood")
	cli := map[string]any{"trigger": "cli"}
	sha := strings.Repeat("a", 64)
	success := map[string]any{"backupId": events.NewID(), "plaintextSha256": sha, "source": "command", "started": time.Now().UTC(),
		"objects": []map[string]any{{"destination": "local", "key": "k", "manifestKey": "m", "sha256": sha}}}
	badRunIDs := []string{"a.b", "../../etc/passwd", "*", ">", "run 1", strings.ToLower(events.NewID()), events.NewID() + "0", "_idx.active.x", ""}
	return []floodKind{
		{name: "invalid JSON", count: n, reason: "not a CloudEvent", make: func(i int) (string, []byte) {
			return requested, []byte(`{"specversion":"1.0","id":"` + strconv.Itoa(i))
		}},
		{name: "binary garbage", count: n, reason: "not a CloudEvent", make: func(i int) (string, []byte) {
			b := make([]byte, 64+i%512)
			_, _ = rand.Read(b)
			return events.Subject(events.StepCompleted, "flood"), b
		}},
		{name: "missing required fields", count: n, reason: "required", make: func(i int) (string, []byte) {
			return events.Subject(events.UploadCompleted, "flood"), floodEvent(events.UploadCompleted, "flood", map[string]any{}, map[string]any{"source": nil})
		}},
		{name: "unknown type", count: n, reason: "unknown event type", make: func(i int) (string, []byte) {
			return events.Subject(events.BackupFailed, "flood"), floodEvent(events.TypePrefix+"backup.exploded", "flood", cli, nil)
		}},
		{name: "subject of another type", count: n, reason: "arrived on subject", make: func(i int) (string, []byte) {
			return requested, floodEvent(events.BackupSucceeded, "flood", success, nil)
		}},
		{name: "subject of another plan", count: n, reason: "arrived on subject", make: func(i int) (string, []byte) {
			return requested, floodEvent(events.BackupRequested, "victim", cli, nil)
		}},
		{name: "bad runid", count: n, reason: "runid", make: func(i int) (string, []byte) {
			set := map[string]any{"runid": badRunIDs[i%len(badRunIDs)]}
			if set["runid"] == "" {
				set["runid"] = nil
			}
			return requested, floodEvent(events.BackupRequested, "flood", cli, set)
		}},
		{name: "specversion 0.3", count: n, reason: `specversion "0.3"`, make: func(i int) (string, []byte) {
			return requested, floodEvent(events.BackupRequested, "flood", cli, map[string]any{"specversion": "0.3"})
		}},
		{name: "time in 2099", count: n, reason: "in the future", make: func(i int) (string, []byte) {
			return events.Subject(events.BackupSucceeded, "flood"), floodEvent(events.BackupSucceeded, "flood", success, map[string]any{"time": "2099-01-01T00:00:00Z"})
		}},
		{name: "unknown plan names", count: n, reason: "does not exist", make: func(i int) (string, []byte) {
			p := fmt.Sprintf("fz-%d-%x", i, i*7919)
			return events.Subject(events.BackupFailed, p), floodEvent(events.BackupFailed, p, map[string]any{"stage": "snapshot", "reason": "forged"}, nil)
		}},
		{name: "invalid plan names", count: n, reason: "must be a plan name", make: func(i int) (string, []byte) {
			p := []string{"Bad_Plan", "UPPER", "-x", "a--" + strings.Repeat("b", 70)}[i%4]
			return events.Subject(events.BackupRequested, p), floodEvent(events.BackupRequested, p, cli, nil)
		}},
		{name: "near the event size limit", count: 30, reason: "not a CloudEvent", make: func(i int) (string, []byte) {
			return requested, bytes.Repeat([]byte{'x'}, events.MaxEventSize-512)
		}},
		{name: "near max_payload", count: 10, refused: true, make: func(i int) (string, []byte) {
			return requested, bytes.Repeat([]byte{'x'}, maxPayload-4096)
		}},
	}
}

var vmRSSLine = regexp.MustCompile(`(?m)^VmRSS:\s+(\d+) kB`)

// vmRSS is VmRSS of process pid in KiB.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	m := vmRSSLine.FindSubmatch(b)
	if m == nil {
		return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
	}
	return strconv.ParseInt(string(m[1]), 10, 64)
}

func rssKiB(t *testing.T, pid int) int64 {
	t.Helper()
	n, err := vmRSS(pid)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func total(kinds []floodKind) int {
	n := 0
	for _, k := range kinds {
		n += k.count
	}
	return n
}

func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

// TestFloodOfBadMessagesIsRefusedAndBounded runs a real `backstream serve`
// and publishes thousands of malformed messages of every kind onto event
// subjects. Every stored message is dead-lettered (found by the stream
// sequence its dead letters name), the oversized ones are refused by the
// server, nothing starts a run or makes a metric series, a normal backup
// still succeeds, and serve's RSS stays within 64 MiB of where it started.
func TestFloodOfBadMessagesIsRefusedAndBounded(t *testing.T) {
	begin := time.Now()
	ctx := context.Background()
	dir := t.TempDir()
	port, apiPort := testenv.FreePort(t), testenv.FreePort(t)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", port)
	data := filepath.Join(dir, "data")
	p := harness.StartProcess(t, dir, nil, "serve", "--data", data, "--embedded", testenv.Addr(port), "--listen", testenv.Addr(apiPort))
	p.WaitOutput("backstream serving", time.Minute)
	planFile := filepath.Join(dir, "plan.yaml")
	if err := os.WriteFile(planFile, []byte(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: flood}
spec:
  source:
    type: command
    command: {argv: ["head", "-c", "1000000", "/dev/urandom"]}
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: `+filepath.Join(dir, "backups")+`}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := harness.Run(t, dir, nil, "plan", "apply", "-f", planFile, "--nats", natsURL); code != 0 {
		t.Fatalf("plan apply: exit %d: %s", code, out)
	}
	backup := func(when string) {
		t.Helper()
		out, code := harness.Run(t, dir, nil, "trigger", "flood", "--wait", "--nats", natsURL)
		if code != 0 || !strings.Contains(out, "backup succeeded") {
			t.Fatalf("backup %s the flood: exit %d:\n%s", when, code, out)
		}
	}
	backup("before")

	auth, err := bus.LocalAuth(data, "admin")
	if err != nil {
		t.Fatal(err)
	}
	b, err := bus.Connect(ctx, natsURL, "flood-test", bus.Config{Auth: auth}, bustest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.NC.Close() })

	// RSS from before the flood until its dead letters are settled.
	pid := p.PID()
	time.Sleep(time.Second)
	startRSS := rssKiB(t, pid)
	var peakRSS atomic.Int64
	peakRSS.Store(startRSS)
	stopSampling := make(chan struct{})
	var sampling sync.WaitGroup
	sampling.Add(1)
	go func() {
		defer sampling.Done()
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(25 * time.Millisecond):
			}
			if n, err := vmRSS(pid); err == nil && n > peakRSS.Load() {
				peakRSS.Store(n)
			}
		}
	}()

	kinds := floodKinds(int(b.NC.MaxPayload()))
	kindOf := map[uint64]int{} // stream sequence → kind
	stored := make([]int, len(kinds))
	refused := make([]int, len(kinds))
	floodStart := time.Now()
	// The kinds are interleaved, as a fuzzer's output would be: every
	// round publishes the next message of each kind that has one left.
	var order [][2]int
	for i := 0; len(order) < total(kinds); i++ {
		for k, kind := range kinds {
			if i < kind.count {
				order = append(order, [2]int{k, i})
			}
		}
	}
	for _, ki := range order {
		k, i := ki[0], ki[1]
		subject, body := kinds[k].make(i)
		msg := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
		msg.Header.Set(bus.HeaderContentType, bus.ContentTypeCloudEvents)
		ack, err := b.JS.PublishMsg(ctx, msg)
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			kindOf[ack.Sequence] = k
			stored[k]++
		case errors.As(err, &apiErr) && strings.Contains(apiErr.Description, "message size exceeds maximum"):
			refused[k]++
		default:
			t.Fatalf("publish %s #%d: %v", kinds[k].name, i, err)
		}
	}
	published := time.Since(floodStart)

	// Every consumer has settled every message: nothing pending, nothing
	// waiting for an ack or a retry.
	settled := func() (bool, string) {
		s, err := b.JS.Stream(ctx, bus.EventsStream)
		if err != nil {
			return false, err.Error()
		}
		var busy []string
		lister := s.ListConsumers(ctx)
		for c := range lister.Info() {
			// Durable consumers are the stages'; an ephemeral one is a
			// CLI's that has gone away.
			if c.Config.Durable != "" && (c.NumPending > 0 || c.NumAckPending > 0) {
				busy = append(busy, fmt.Sprintf("%s (%d pending, %d unacked)", c.Name, c.NumPending, c.NumAckPending))
			}
		}
		if err := lister.Err(); err != nil {
			return false, err.Error()
		}
		return len(busy) == 0, strings.Join(busy, ", ")
	}
	deadline := time.Now().Add(40 * time.Second)
	for {
		ok, busy := settled()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumers still busy 40s after the flood: %s", busy)
		}
		time.Sleep(100 * time.Millisecond)
	}
	drained := time.Since(floodStart)
	// The flood is over once every message is settled; what follows (the
	// test reading every dead letter, a backup) is not part of it, and its
	// RSS is only logged.
	time.Sleep(time.Second)
	close(stopSampling)
	sampling.Wait()
	endRSS := rssKiB(t, pid)

	// Dead letters by the kind of the original they name.
	deadSeqs := make([]map[uint64]bool, len(kinds))
	reasons := make([]map[string]bool, len(kinds))
	for k := range kinds {
		deadSeqs[k], reasons[k] = map[uint64]bool{}, map[string]bool{}
	}
	cut := 0
	oc, err := b.JS.OrderedConsumer(ctx, bus.DeadLetterStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := oc.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	deadLetters := int(info.NumPending)
	for range deadLetters {
		m, err := oc.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("read dead letters: %v", err)
		}
		seq, _ := strconv.ParseUint(m.Headers().Get(bus.HeaderDeadSequence), 10, 64)
		k, ok := kindOf[seq]
		if !ok {
			continue // a dead letter of something else (none expected)
		}
		deadSeqs[k][seq] = true
		reasons[k][m.Headers().Get(bus.HeaderDeadReason)] = true
		if m.Headers().Get(bus.HeaderDeadCut) == "true" {
			cut++
		}
	}

	readRSS := rssKiB(t, pid)
	backup("after")
	backupRSS := rssKiB(t, pid)

	// Per kind: published = dead-lettered, or refused by the server.
	unknownPlans := 0
	for k, kind := range kinds {
		if kind.name == "unknown plan names" {
			unknownPlans = kind.count
		}
		t.Logf("%-27s published %4d: stored %4d, dead-lettered %4d, refused by the server %3d", kind.name, kind.count, stored[k], len(deadSeqs[k]), refused[k])
		if kind.refused {
			if refused[k] != kind.count {
				t.Errorf("%s: %d of %d refused by the server", kind.name, refused[k], kind.count)
			}
			continue
		}
		if stored[k] != kind.count || len(deadSeqs[k]) != stored[k] {
			t.Errorf("%s: published %d, stored %d, dead-lettered %d: some were lost", kind.name, kind.count, stored[k], len(deadSeqs[k]))
		}
		named := false
		for r := range reasons[k] {
			named = named || strings.Contains(strings.ToLower(r), strings.ToLower(kind.reason))
		}
		if !named {
			some := keys(reasons[k])
			t.Errorf("%s: no dead letter's reason names %q, e.g. %q", kind.name, kind.reason, some[:min(3, len(some))])
		}
	}
	t.Logf("%d messages published in %s, all settled after %s; %d dead letters (%d cut)", total(kinds), published.Round(time.Millisecond), drained.Round(time.Millisecond), deadLetters, cut)

	// Nothing the flood sent started a run: the two runs are the backups.
	page, err := runs.NewStore(b.Runs).List(ctx, runs.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if all := page.Runs; len(all) != 2 {
		var ids []string
		for _, r := range all {
			ids = append(ids, r.ID+" "+r.Plan+" "+string(r.Phase))
		}
		t.Errorf("runs after the flood: %v, want only the two backups", ids)
	}

	// No series for a plan that does not exist, the refusals counted, and
	// the last success not in the future.
	metrics := floodMetrics(t, data, apiPort)
	if strings.Contains(metrics, `plan="fz-`) || strings.Contains(metrics, `plan="victim"`) || strings.Contains(metrics, `plan="Bad_Plan"`) {
		t.Error("/metrics has a series for a plan that does not exist")
	}
	if m := regexp.MustCompile(`(?m)^backstream_events_refused_total\{reason="unknown_plan"\} (\S+)$`).FindStringSubmatch(metrics); m == nil {
		t.Error("/metrics lacks backstream_events_refused_total{reason=\"unknown_plan\"}")
	} else if n, _ := strconv.ParseFloat(m[1], 64); int(n) < unknownPlans {
		t.Errorf("backstream_events_refused_total{reason=\"unknown_plan\"} = %v, want >= %d", n, unknownPlans)
	}
	if m := regexp.MustCompile(`(?m)^backstream_backup_last_success_timestamp_seconds\{plan="flood"\} (\S+)$`).FindStringSubmatch(metrics); m == nil {
		t.Error("/metrics lacks the last-success gauge of plan flood")
	} else if v, _ := strconv.ParseFloat(m[1], 64); v > float64(time.Now().Unix()) {
		t.Errorf("last-success gauge %v is in the future", v)
	}

	peak := peakRSS.Load()
	t.Logf("serve RSS: start %s, peak %s (+%s), end of the flood %s (+%s); after the test read every dead letter %s, after a backup %s; test took %s",
		mib(startRSS), mib(peak), mib(peak-startRSS), mib(endRSS), mib(endRSS-startRSS), mib(readRSS), mib(backupRSS), time.Since(begin).Round(time.Second))
	if peak-startRSS > 64<<10 {
		t.Errorf("serve's RSS grew by %s during the flood, more than 64 MiB", mib(peak-startRSS))
	}
}

// floodMetrics reads serve's /metrics with the admin token it made.
func floodMetrics(t *testing.T, data string, apiPort int) string {
	t.Helper()
	token, err := os.ReadFile(filepath.Join(data, "auth", "api-admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest("GET", "http://"+testenv.Addr(apiPort)+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v: %s", resp.StatusCode, err, body)
	}
	return string(body)
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
