package security

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"gopkg.in/yaml.v3"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/runs"
	sched "github.com/backstream/backstream/pkg/schedule"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/app"
	"github.com/backstream/backstream/services/control"
	"github.com/backstream/backstream/services/schedule"
	"github.com/backstream/backstream/services/stage"
)

// rolesPlan backs up a file through a command source into a directory,
// with an exec hook step before the snapshot, a schedule (far off, so the
// scheduler keeps its state but never fires), a watchdog, retention and
// verification — so every service has its part — and restores by writing
// the backup to restored. extraDest is YAML of more destinations.
func rolesPlan(name, source, dest, restored, extraDest string) string {
	return fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %[1]s}
spec:
  source:
    type: command
    command:
      argv: ["cat", %[2]q]
      restoreArgv: ["sh", "-c", "cat > %[4]s"]
  hooks:
    - name: pre
      type: exec
      ops:
        - {name: ok, command: ["true"]}
  workflows:
    - name: backup
      sequence: [{hook: pre/ok}, snapshot]
  filters: {compression: zstd}
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: %[3]q}
%[5]s  schedule: {cron: "0 0 1 1 *"}
  retention: {keepLast: 3}
  verify: {enabled: true}
  alert: {expectEvery: 24h, grace: 1h}
`, name, source, dest, restored, extraDest)
}

// TestEveryServiceRunsWithOnlyItsRole runs a split deployment the way
// deploy/ does: bin/nats-server with the shipped users and permissions,
// the admin setting up streams and buckets (`backstream setup`) and
// applying the plan, every service a `backstream serve --services X`
// process connecting as its own role, the trigger role requesting the
// backup and the API (as the api role) a restore. Both succeed, and no
// process was refused anything: a permission a role lacks shows up as a
// permissions violation in its log.
func TestEveryServiceRunsWithOnlyItsRole(t *testing.T) {
	srv := startNATSServer(t)
	dir := t.TempDir()
	admin := func(args ...string) string {
		t.Helper()
		out, code := harness.Run(t, dir, srv.env(bus.RoleAdmin), append(args, srv.flags(bus.RoleAdmin)...)...)
		if code != 0 {
			t.Fatalf("backstream %v as admin: exit %d\n%s", args, code, out)
		}
		return out
	}
	if out := admin("setup"); !strings.Contains(out, bus.EventsStream+": ready") {
		t.Fatalf("setup output:\n%s", out)
	}

	source := filepath.Join(dir, "source.bin")
	payload := bytes.Repeat([]byte("least privilege "), 1<<16)
	if err := os.WriteFile(source, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	restored := filepath.Join(dir, "restored.bin")
	planFile := filepath.Join(dir, "plan.yaml")
	// A second destination on MinIO: upload keeps its sweep records in the
	// leases bucket for S3.
	minio := testenv.MinIO(t)
	s3 := fmt.Sprintf(`    - name: s3
      type: s3
      s3: {endpoint: %s, bucket: %s, insecure: true, accessKey: {env: ROLES_S3_ACCESS}, secretKey: {env: ROLES_S3_SECRET}}
`, minio.Endpoint, minio.NewBucket(t, "roles"))
	s3env := []string{"ROLES_S3_ACCESS=" + minio.AccessKey, "ROLES_S3_SECRET=" + minio.SecretKey}
	if err := os.WriteFile(planFile, []byte(rolesPlan("roles", source, filepath.Join(dir, "backups"), restored, s3)), 0o600); err != nil {
		t.Fatal(err)
	}
	admin("plan", "apply", "-f", planFile)

	apiPort := testenv.FreePort(t)
	procs := map[string]*harness.Process{}
	for _, svc := range app.Names {
		args := append([]string{"serve", "--services", svc, "--data", filepath.Join(dir, svc), "--listen", "", "--ack-wait", "2s"}, srv.flags(svc)...)
		if svc == "api" {
			args[6] = testenv.Addr(apiPort)
		}
		procs[svc] = harness.StartProcess(t, dir, append(srv.env(svc), s3env...), args...)
	}
	// A permission a role lacks shows up as a permissions violation in its
	// log; checked also when a wait below fails.
	defer func() {
		for _, svc := range app.Names {
			out := procs[svc].Output()
			if i := strings.Index(strings.ToLower(out), "permissions violation"); i >= 0 {
				line := out[strings.LastIndex(out[:i], "\n")+1:]
				if j := strings.Index(line, "\n"); j >= 0 {
					line = line[:j]
				}
				t.Errorf("service %s (role %s) was refused a permission it needs:\n%s", svc, svc, line)
			}
		}
	}()
	for _, p := range procs {
		p.WaitOutput("backstream serving", time.Minute)
	}

	// The trigger role requests the backup and follows it to its end.
	out, code := harness.Run(t, dir, srv.env(bus.RoleTrigger), append([]string{"trigger", "roles", "--wait"}, srv.flags(bus.RoleTrigger)...)...)
	if code != 0 || !strings.Contains(out, "backup succeeded") {
		t.Fatalf("trigger --wait as the trigger role: exit %d\n%s", code, out)
	}
	if strings.Contains(strings.ToLower(out), "permissions violation") {
		t.Errorf("trigger --wait as the trigger role was refused something:\n%s", out)
	}
	m := regexp.MustCompile(`run (\S+) of plan roles requested`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no run id in:\n%s", out)
	}
	backupID := m[1]
	b := srv.bus(t, bus.RoleAdmin)
	store := runs.NewStore(b.Runs)
	waitEvent(t, b, backupID, events.RetentionCompleted)

	// A failing run: snapshot fails it, hook compensates its hook op,
	// verify's failure consumer and metrics see the failure.
	failing := filepath.Join(dir, "failing.yaml")
	if err := os.WriteFile(failing, []byte(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: failing}
spec:
  source:
    type: command
    command: {argv: ["sh", "-c", "exit 3"]}
  hooks:
    - name: pre
      type: exec
      ops:
        - {name: ok, command: ["true"], inverseOp: undo}
        - {name: undo, command: ["true"]}
  workflows:
    - name: backup
      sequence: [{hook: pre/ok}, snapshot]
  destinations:
    - {name: local, type: filesystem, filesystem: {path: %q}}
`, filepath.Join(dir, "backups"))), 0o600); err != nil {
		t.Fatal(err)
	}
	admin("plan", "apply", "-f", failing)
	out, code = harness.Run(t, dir, srv.env(bus.RoleTrigger), append([]string{"trigger", "failing", "--wait"}, srv.flags(bus.RoleTrigger)...)...)
	m = regexp.MustCompile(`run (\S+) of plan failing requested`).FindStringSubmatch(out)
	if code == 0 || m == nil {
		t.Fatalf("trigger --wait of a failing plan: exit %d\n%s", code, out)
	}
	waitEvent(t, b, m[1], events.CompensationCompleted)

	// The API, connected as the api role, requests a restore into the
	// plan's own source.
	token, err := os.ReadFile(filepath.Join(dir, "api", "auth", "api-admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf(`{"backupId": %q, "destination": "local", "confirm": "roles"}`, backupID)
	req, _ := http.NewRequest(http.MethodPost, "http://"+testenv.Addr(apiPort)+"/v1/plans/roles/restore", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var accepted struct{ RunID string }
	_ = json.NewDecoder(resp.Body).Decode(&accepted)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || accepted.RunID == "" {
		t.Fatalf("POST restore: %s, run %q", resp.Status, accepted.RunID)
	}
	if r := harness.WaitRun(t, store, accepted.RunID, time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("restore run %s: %s (%s in %s)", r.ID, r.Phase, r.Error, r.FailedStage)
	}
	if got, err := os.ReadFile(restored); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("restored file: %d bytes, %v; want the %d source bytes", len(got), err, len(payload))
	}

	// Read-only tools read as the viewer.
	for _, args := range [][]string{{"runs"}, {"run", backupID}, {"plan", "list"}} {
		out, code := harness.Run(t, dir, srv.env(bus.RoleViewer), append(args, srv.flags(bus.RoleViewer)...)...)
		if code != 0 || strings.Contains(strings.ToLower(out), "permissions violation") {
			t.Errorf("backstream %v as the viewer: exit %d\n%s", args, code, out)
		}
	}

	// The scheduler and the watchdog keep their state in leases of their
	// own (the scheduler's first pass comes after its 5s tick).
	for _, key := range []string{"schedule.roles", "watchdog.roles"} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := b.Leases.Get(context.Background(), key); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("lease %s never written", key)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	// Each process did its own part.
	for svc, line := range map[string]string{"hook": "hook op completed", "snapshot": "snapshot completed",
		"filter": "filter completed", "upload": "upload completed", "verify": "backup verified",
		"retention": "retention applied", "restore": "restore step completed", "api": "api restore requested"} {
		if !strings.Contains(procs[svc].Output(), line) {
			t.Errorf("service %s never logged %q", svc, line)
		}
	}
	t.Logf("backup %s and restore %s succeeded with every service on its own role", backupID, accepted.RunID)
}

// waitEvent waits until the events stream holds an event of type typ of
// run id.
func waitEvent(t *testing.T, b *bus.Bus, id, typ string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		evs := harness.RunEvents(t, b, id)
		for _, e := range evs {
			if e.Type() == typ {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s: no %s within a minute; events: %v", id, typ, harness.Types(evs))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// refusal is how a role's attempt is checked: the server answers it with
// a permissions violation, or lets it through.
type refusal int

const (
	refused refusal = iota
	allowed
)

func (r refusal) String() string { return [...]string{"refused", "allowed"}[r] }

// attempt is something a role tries: publishing to a subject (events, KV
// writes, JetStream API calls, chunks, acks) or subscribing to one.
type attempt struct {
	sub     bool
	subject string
}

func pub(subject string) attempt { return attempt{subject: subject} }
func sub(subject string) attempt { return attempt{sub: true, subject: subject} }

func (a attempt) String() string {
	if a.sub {
		return "subscribe " + a.subject
	}
	return "publish " + a.subject
}

// TestRolesAreRefusedWhatTheyMustNotDo runs the shipped configuration on
// bin/nats-server and has every role try what it must not do; the server
// refuses each (and lets through a few things the role needs, so that a
// refusal is not a broken probe). Then nothing it was refused changed.
//
// No role but control writes the runs bucket or announces a run's outcome;
// stages ask control, each on its own subject only.
func TestRolesAreRefusedWhatTheyMustNotDo(t *testing.T) {
	srv := startNATSServer(t)
	admin := srv.bus(t, bus.RoleAdmin)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	planRev, err := admin.Plans.Put(ctx, "demo", []byte(`{"original":true}`))
	if err != nil {
		t.Fatal(err)
	}
	hookCfg := jetstream.ConsumerConfig{Durable: "hook", FilterSubject: events.SubjectFilter(events.BackupRequested), AckPolicy: jetstream.AckExplicitPolicy}
	if _, err := admin.JS.CreateOrUpdateConsumer(ctx, bus.EventsStream, hookCfg); err != nil {
		t.Fatal(err)
	}
	const run = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
	var (
		ev          = func(typ string) string { return events.Subject(typ, "demo") }
		plansPut    = pub("$KV." + bus.PlansBucket + ".demo")
		runsPut     = pub("$KV." + bus.RunsBucket + "." + run)
		rawChunk    = pub(bus.ReaderSubject(run, bus.KindRaw, "filter"))
		sealedChunk = pub(bus.ReaderSubject(run, bus.KindSealed, "local"))
		chunks      = sub(bus.DataRoot + ".>")
		js          = func(api string) attempt { return pub("$JS.API." + api) }
	)
	type row struct {
		role string
		try  attempt
		want refusal
	}
	var tests []row
	// What no role but admin may do.
	for _, role := range bus.RoleNames() {
		if role == bus.RoleAdmin {
			continue
		}
		tests = append(tests,
			row{role, plansPut, refused},
			row{role, pub("$KV." + bus.PlansBucket + ".evil"), refused},
			row{role, js("STREAM.DELETE." + bus.EventsStream), refused},
			row{role, js("STREAM.DELETE.KV_" + bus.PlansBucket), refused},
			row{role, js("STREAM.UPDATE." + bus.EventsStream), refused},
			row{role, js("STREAM.PURGE." + bus.EventsStream), refused},
			row{role, js("STREAM.PURGE." + bus.DeadLetterStream), refused},
			row{role, js("STREAM.MSG.DELETE." + bus.EventsStream), refused},
			row{role, js("CONSUMER.DELETE." + bus.EventsStream + ".hook"), refused},
			row{role, sub(events.SubjectWildcard), refused},
			row{role, sub(bus.InboxPrefix("admin") + ".>"), refused},
			row{role, sub("_INBOX.>"), refused},
		)
		if role != "control" {
			// Only the owner of run state writes run records and
			// announces outcomes; the stages ask it.
			tests = append(tests,
				row{role, runsPut, refused},
				row{role, pub("$KV." + bus.RunsBucket + ".>"), refused},
				row{role, pub(ev(events.BackupFailed)), refused},
				row{role, pub(ev(events.RestoreFailed)), refused},
				row{role, pub(ev(events.BackupSucceeded)), refused},
				row{role, pub(ev(events.RestoreSucceeded)), refused},
				row{role, sub(runs.ControlRoot + ".>"), refused},
				row{role, sub(runs.ControlSubject("filter")), refused},
			)
		}
		for _, other := range []string{"hook", "filter", "verify"} {
			if role != other {
				tests = append(tests, row{role, pub(runs.ControlSubject(other)), refused})
			}
		}
		if role != "api" {
			// Only the API deletes single dead letters (DELETE /v1/dlq/{seq}).
			tests = append(tests, row{role, js("STREAM.MSG.DELETE." + bus.DeadLetterStream), refused})
		}
		if role != "hook" {
			tests = append(tests,
				row{role, js("CONSUMER.CREATE." + bus.EventsStream + ".hook"), refused},
				row{role, js("CONSUMER.MSG.NEXT." + bus.EventsStream + ".hook"), refused},
				row{role, pub("$JS.ACK." + bus.EventsStream + ".hook.1.1.1.1.1.0"), refused},
				row{role, pub(events.DeadLetterRoot + ".hook"), refused},
			)
		}
	}
	tests = append(tests,
		// The owner of run state writes runs, answers the stages and
		// announces outcomes; it touches no data and requests nothing.
		// (allowed probes on another key and plan than the ones checked
		// untouched below)
		row{"control", pub("$KV." + bus.RunsBucket + ".01ARZ3NDEKTSV4RRFFQ69G5FAW"), allowed},
		row{"control", sub(runs.ControlRoot + ".*"), allowed},
		row{"control", pub(events.Subject(events.BackupSucceeded, "probe")), allowed},
		row{"control", pub(ev(events.SnapshotCompleted)), refused},
		row{"control", pub(ev(events.HookCompleted)), refused},
		row{"control", pub(ev(events.VerifyCompleted)), refused},
		row{"control", pub(runs.ControlSubject("hook")), refused},
		row{"control", chunks, refused},
		row{"control", rawChunk, refused},
		// Each stage asks on its own subject.
		row{"filter", pub(runs.ControlSubject("filter")), allowed},
		row{"hook", pub(runs.ControlSubject("hook")), allowed},
		row{"verify", pub(runs.ControlSubject("verify")), allowed},
		row{"schedule", pub(runs.ControlSubject("schedule")), allowed},
		row{"api", pub(runs.ControlSubject("api")), allowed},
		row{"api", pub(runs.ControlSubject("admin")), refused},
		// Outside publishers request backups; nothing else that matters.
		row{bus.RoleTrigger, pub(ev(events.BackupRequested)), allowed},
		row{bus.RoleTrigger, js("STREAM.INFO." + bus.EventsStream), allowed},
		row{bus.RoleTrigger, runsPut, refused},
		row{bus.RoleTrigger, pub("$KV." + bus.LeasesBucket + ".schedule.demo"), refused},
		row{bus.RoleTrigger, pub(ev(events.BackupSucceeded)), refused},
		row{bus.RoleTrigger, pub(ev(events.BackupFailed)), refused},
		row{bus.RoleTrigger, pub(ev(events.RestoreRequested)), refused},
		row{bus.RoleTrigger, pub(ev(events.StepCompleted)), refused},
		row{bus.RoleTrigger, chunks, refused},
		row{bus.RoleTrigger, rawChunk, refused},
		row{bus.RoleTrigger, js("CONSUMER.CREATE." + bus.DataStream + ".x"), refused},
		row{bus.RoleTrigger, sub(bus.InboxPrefix("filter") + ".>"), refused},
		row{bus.RoleTrigger, sub(bus.InboxPrefix("upload") + ".x"), refused},
		// Read-only tools read and publish nothing that matters.
		row{bus.RoleViewer, js("STREAM.INFO." + bus.DeadLetterStream), allowed},
		row{bus.RoleViewer, pub(ev(events.BackupRequested)), refused},
		row{bus.RoleViewer, pub(ev(events.RestoreRequested)), refused},
		row{bus.RoleViewer, pub(ev(events.BackupSucceeded)), refused},
		row{bus.RoleViewer, runsPut, refused},
		row{bus.RoleViewer, pub(events.DeadLetterRoot + ".viewer"), refused},
		row{bus.RoleViewer, chunks, refused},
		// Data-plane stages publish their own results and chunks only.
		row{"snapshot", rawChunk, allowed},
		row{"snapshot", sealedChunk, refused},
		row{"snapshot", pub(ev(events.BackupSucceeded)), refused},
		row{"snapshot", pub(ev(events.BackupRequested)), refused},
		row{"snapshot", pub(ev(events.FilterCompleted)), refused},
		row{"filter", pub(ev(events.FilterCompleted)), allowed},
		row{"filter", sealedChunk, allowed},
		row{"filter", rawChunk, refused},
		row{"filter", pub(ev(events.BackupSucceeded)), refused},
		row{"filter", pub(ev(events.UploadCompleted)), refused},
		row{"filter", pub(ev(events.BackupRequested)), refused},
		// The filter makes and replaces plan keyrings; nobody else writes them.
		row{"filter", pub("$KV." + bus.KeyringsBucket + ".demo"), allowed},
		row{"upload", pub("$KV." + bus.KeyringsBucket + ".demo"), refused},
		row{"verify", pub("$KV." + bus.KeyringsBucket + ".demo"), refused},
		row{bus.RoleTrigger, pub("$KV." + bus.KeyringsBucket + ".demo"), refused},
		row{"upload", pub(ev(events.BackupSucceeded)), refused},
		row{"upload", pub(ev(events.VerifyCompleted)), refused},
		row{"upload", sealedChunk, refused},
		row{"upload", rawChunk, refused},
		row{"upload", js("CONSUMER.CREATE." + bus.DataStream + ".raw_" + run + "_filter." + bus.ReaderSubject(run, bus.KindRaw, "filter")), refused},
		row{"upload", pub("$KV." + bus.LeasesBucket + ".schedule.demo"), refused},
		row{"verify", pub(ev(events.RestoreSucceeded)), refused},
		row{"verify", pub(ev(events.BackupRequested)), refused},
		row{"verify", rawChunk, refused},
		row{"verify", chunks, refused},
		// Retention reads runs; it neither writes them nor settles them.
		row{"retention", runsPut, refused},
		row{"retention", pub(ev(events.BackupSucceeded)), refused},
		row{"retention", pub(ev(events.BackupFailed)), refused},
		row{"retention", pub("$KV." + bus.LeasesBucket + ".schedule.demo"), refused},
		row{"retention", pub("$KV." + bus.LeasesBucket + ".retention.demo.local"), allowed},
		row{"restore", pub(ev(events.BackupSucceeded)), refused},
		row{"restore", pub(ev(events.BackupRequested)), refused},
		row{"restore", rawChunk, refused},
		row{"hook", rawChunk, refused},
		row{"hook", pub(ev(events.BackupRequested)), refused},
		row{"schedule", pub(ev(events.BackupSucceeded)), refused},
		row{"schedule", pub(ev(events.RestoreRequested)), refused},
		row{"schedule", pub("$KV." + bus.LeasesBucket + ".watchdog.demo"), refused},
		row{"metrics", pub(ev(events.BackupSucceeded)), refused},
		row{"metrics", pub(ev(events.BackupRequested)), refused},
		row{"metrics", pub("$KV." + bus.LeasesBucket + ".schedule.demo"), refused},
		row{"api", pub(ev(events.BackupRequested)), allowed},
		// The API reads and deletes dead letters, but replays only the
		// requests it may make anyway: any other event would be a forged
		// outcome (docs/security.md).
		row{"api", js("STREAM.MSG.GET." + bus.DeadLetterStream), allowed},
		row{"api", js("STREAM.MSG.DELETE." + bus.DeadLetterStream), allowed},
		row{"api", pub(ev(events.StepCompleted)), refused},
		row{"api", pub(ev(events.BackupFailed)), refused},
		row{"api", runsPut, refused},
		row{"api", pub(ev(events.BackupSucceeded)), refused},
		row{"api", pub(ev(events.RestoreSucceeded)), refused},
		row{"api", chunks, refused},
	)
	t.Run("table", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.role+" "+tt.try.String(), func(t *testing.T) {
				t.Parallel()
				if got := srv.try(t, tt.role, tt.try); got != tt.want {
					t.Errorf("%s: %s %s, want %s", tt.role, tt.try, got, tt.want)
				}
			})
		}
	})

	// A role that may create consumers (to read) can also make JetStream
	// deliver what it reads to any subject: nats-server 2.15.2 does not
	// check a push consumer's deliver subject against its creator's
	// permissions (nats-io/nats-server#8274). The server delivers only to
	// a subject someone subscribes to literally, which no backstream stream
	// or client does on these subjects, so nothing lands; should that
	// change, the checks below fail.
	t.Run("push consumer deliver subject", func(t *testing.T) {
		tr := srv.bus(t, bus.RoleTrigger)
		for stream, to := range map[string]string{
			"KV_" + bus.PlansBucket: "$KV." + bus.RunsBucket + "." + run,
			bus.EventsStream:        "$KV." + bus.PlansBucket + ".evil",
		} {
			_, err := tr.JS.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{DeliverSubject: to, AckPolicy: jetstream.AckNonePolicy})
			t.Logf("trigger's push consumer on %s delivering to %s: created (err %v)", stream, to, err)
		}
		time.Sleep(2 * time.Second)
	})

	// Nothing a role was refused took effect.
	if e, err := admin.Plans.Get(ctx, "demo"); err != nil || e.Revision() != planRev || string(e.Value()) != `{"original":true}` {
		t.Errorf("plan demo changed: %v", err)
	}
	if _, err := admin.Plans.Get(ctx, "evil"); err == nil {
		t.Error("plan evil exists")
	}
	if _, err := admin.Runs.Get(ctx, run); err == nil {
		t.Errorf("run %s exists", run)
	}
	for _, st := range []string{bus.EventsStream, bus.DeadLetterStream, "KV_" + bus.PlansBucket} {
		if _, err := admin.JS.Stream(ctx, st); err != nil {
			t.Errorf("stream %s: %v", st, err)
		}
	}
	if c, err := admin.JS.Consumer(ctx, bus.EventsStream, "hook"); err != nil || c.CachedInfo().Config.FilterSubject != hookCfg.FilterSubject {
		t.Errorf("the hook consumer was changed or deleted: %v", err)
	}
	for _, typ := range []string{events.BackupSucceeded, events.BackupFailed, events.RestoreRequested, events.StepCompleted} {
		if m, err := admin.JS.Stream(ctx, bus.EventsStream); err == nil {
			if _, err := m.GetLastMsgForSubject(ctx, ev(typ)); err == nil {
				t.Errorf("the events stream holds a %s a role was refused to publish", typ)
			}
		}
	}
}

// try has role attempt a, on a connection of its own, and reports whether
// the server refused it: a permissions violation naming the subject
// arrives within two seconds.
func (s *natsServer) try(t *testing.T, role string, a attempt) refusal {
	nc, errs := s.connect(t, role)
	var err error
	if a.sub {
		_, err = nc.SubscribeSync(a.subject)
	} else {
		err = nc.Publish(a.subject, []byte(`{}`))
	}
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		t.Fatalf("%s: %v", a, err)
	}
	want := "Permissions Violation for Publish to \"" + a.subject + "\""
	if a.sub {
		want = "Permissions Violation for Subscription to \"" + a.subject + "\""
	}
	timeout := time.After(2 * time.Second)
	for {
		select {
		case err := <-errs:
			if strings.Contains(err.Error(), want) {
				return refused
			}
			t.Logf("other error: %v", err)
		case <-timeout:
			return allowed
		}
	}
}

// TestShippedNATSConfigRunsAThreeNodeCluster runs deploy/nats-server.conf
// itself — only its certificate paths point at a CA made for the test —
// as the three-node cluster of deploy/compose.yaml (the same --name,
// --cluster_name and --routes flags; ports of the test's own): the nodes
// join each other over mutually verified TLS routes, the admin sets up
// every stream with three replicas, and a node without a certificate of
// the CA cannot join.
func TestShippedNATSConfigRunsAThreeNodeCluster(t *testing.T) {
	bin := testenv.Bin(t, "nats-server")
	if bin == "" {
		testenv.Missing(t, "bin/nats-server (run scripts/install-tools.sh)")
	}
	dir := t.TempDir()
	ca, cert, key := makeCerts(t, dir)
	shipped, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "deploy", "nats-server.conf"))
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer("/run/secrets/nats-cert", cert, "/run/secrets/nats-key", key, "/run/secrets/nats-ca", ca).Replace(string(shipped))
	env := os.Environ()
	adminPassword := "pw" + randomHex(t, 16)
	for _, r := range bus.RoleNames() {
		pw := "pw" + randomHex(t, 16)
		if r == bus.RoleAdmin {
			pw = adminPassword
		}
		env = append(env, bus.PasswordEnv(r)+"="+pw)
	}
	var clients, routes []string
	var cluster []int
	for range 3 {
		clients = append(clients, fmt.Sprintf("tls://127.0.0.1:%d", testenv.FreePort(t)))
		cluster = append(cluster, testenv.FreePort(t))
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", cluster[len(cluster)-1]))
	}
	// Each node stores under a directory of its own (in compose: its own
	// /data volume).
	node := func(i int, conf string, routes []string) []string {
		file := filepath.Join(t.TempDir(), "nats-server.conf")
		conf = strings.Replace(conf, `store_dir: "/data"`, fmt.Sprintf("store_dir: %q", t.TempDir()), 1)
		if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		return []string{"-c", file, "-a", "127.0.0.1", "-p", strings.TrimPrefix(clients[i], "tls://127.0.0.1:"),
			"--cluster", fmt.Sprintf("nats://127.0.0.1:%d", cluster[i]), "--name", fmt.Sprintf("nats-%d", i+1),
			"--cluster_name", "backstream", "--routes", strings.Join(routes, ",")}
	}
	var outs []*testenv.Buffer
	for i := range 3 {
		others := append(append([]string{}, routes[:i]...), routes[i+1:]...)
		outs = append(outs, runNATSServer(t, bin, env, node(i, conf, others)...))
	}
	url := strings.Join(clients, ",")
	flags := []string{"--nats", url, "--nats-user", bus.RoleAdmin, "--nats-tls-ca", ca}
	var out string
	deadline := time.Now().Add(time.Minute)
	for {
		// JetStream answers once the nodes elected a meta leader.
		var code int
		out, code = harness.Run(t, dir, []string{bus.EnvPassword + "=" + adminPassword}, append([]string{"setup", "--replicas", "3"}, flags...)...)
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("setup --replicas 3 on the cluster: exit %d\n%s", code, out)
		}
		time.Sleep(time.Second)
	}
	if strings.Count(out, ": ready, 3 replica(s)") != 7 {
		t.Fatalf("setup output, want seven streams and buckets with three replicas:\n%s", out)
	}
	for i, o := range outs {
		if n := strings.Count(o.String(), "Route connection created"); n < 2 {
			t.Errorf("node %d made %d route connections, want 2:\n%s", i+1, n, o.String())
		}
	}

	// A node whose certificate the CA did not sign is refused by the
	// others' routes: what is published on it never reaches the cluster,
	// while what is published on a member does.
	rogueDir := t.TempDir()
	rogueCA, rogueCert, rogueKey := makeCerts(t, rogueDir)
	rogue := strings.NewReplacer(cert, rogueCert, key, rogueKey).Replace(conf)
	clients = append(clients, fmt.Sprintf("tls://127.0.0.1:%d", testenv.FreePort(t)))
	cluster = append(cluster, testenv.FreePort(t))
	runNATSServer(t, bin, env, node(3, rogue, routes)...)
	time.Sleep(2 * time.Second) // the rogue's route attempts
	conn := func(i int) *nats.Conn {
		url, ca := clients[i], ca
		if i == 3 {
			ca = rogueCA
		}
		nc, err := nats.Connect(url, nats.UserInfo(bus.RoleAdmin, adminPassword), nats.RootCAs(ca))
		if err != nil {
			t.Fatalf("connect %s: %v", url, err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	sub, err := conn(0).SubscribeSync("probe")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the subscription's interest reaches the routes
	for _, tt := range []struct {
		node    int
		arrives bool
	}{{3, false}, {1, true}} {
		nc := conn(tt.node)
		if err := nc.Publish("probe", []byte(fmt.Sprint(tt.node))); err != nil {
			t.Fatal(err)
		}
		_ = nc.Flush()
		m, err := sub.NextMsg(2 * time.Second)
		if got := err == nil; got != tt.arrives {
			t.Errorf("message published on node %d arrived %v (%v), want %v", tt.node+1, got, m, tt.arrives)
		}
	}
}

// TestDeployRunsEachServiceAsItsOwnRole checks deploy/ as far as this
// machine can (no Docker or Kubernetes here): compose and Kubernetes run
// every service as a process of its own that connects as the NATS user of
// its role with that role's password, the admin sets up, and the NATS nodes
// run nats-server.conf with every role's password in their environment.
func TestDeployRunsEachServiceAsItsOwnRole(t *testing.T) {
	root := testenv.RepoRoot(t)
	flag := func(args []string, name string) string {
		for i := 0; i+1 < len(args); i++ {
			if args[i] == name {
				return args[i+1]
			}
		}
		return ""
	}
	check := func(where string, args []string, password string, seen map[string]int) {
		t.Helper()
		switch {
		case len(args) > 0 && args[0] == "serve":
			svc := flag(args, "--services")
			seen[svc]++
			if user := flag(args, "--nats-user"); user != svc {
				t.Errorf("%s: serve --services %s connects as %q, want its own role", where, svc, user)
			}
			if !strings.Contains(password, bus.PasswordEnv(svc)) {
				t.Errorf("%s: serve --services %s takes its password from %q, want %s", where, svc, password, bus.PasswordEnv(svc))
			}
		case len(args) > 0 && args[0] == "setup":
			seen["setup"]++
			if flag(args, "--nats-user") != bus.RoleAdmin || !strings.Contains(password, bus.PasswordEnv(bus.RoleAdmin)) {
				t.Errorf("%s: setup runs as %q with password %q, want the admin", where, flag(args, "--nats-user"), password)
			}
		}
	}
	want := func(where string, seen map[string]int) {
		t.Helper()
		for _, svc := range append([]string{"setup"}, app.Names...) {
			if seen[svc] != 1 {
				t.Errorf("%s: %d processes run %s, want 1", where, seen[svc], svc)
			}
		}
	}

	var compose struct {
		Services map[string]struct {
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
		} `yaml:"services"`
	}
	data, err := os.ReadFile(filepath.Join(root, "deploy", "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &compose); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	nodes := 0
	for name, s := range compose.Services {
		check("compose "+name, s.Command, s.Environment[bus.EnvPassword], seen)
		if !strings.HasPrefix(name, "nats-") {
			continue
		}
		nodes++
		if !slices.Contains(s.Command, "/etc/nats/nats-server.conf") || !slices.Contains(s.Volumes, "./nats-server.conf:/etc/nats/nats-server.conf:ro") {
			t.Errorf("compose %s does not run deploy/nats-server.conf: %v %v", name, s.Command, s.Volumes)
		}
		for _, role := range bus.RoleNames() {
			if !strings.Contains(s.Environment[bus.PasswordEnv(role)], bus.PasswordEnv(role)) {
				t.Errorf("compose %s lacks $%s in its environment", name, bus.PasswordEnv(role))
			}
		}
	}
	if nodes != 3 {
		t.Errorf("compose runs %d NATS nodes, want 3", nodes)
	}
	want("compose", seen)

	data, err = os.ReadFile(filepath.Join(root, "deploy", "kubernetes", "backstream.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	seen = map[string]int{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc struct {
			Kind     string
			Metadata struct{ Name string }
			Spec     struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Args []string
							Env  []struct {
								Name      string
								ValueFrom struct {
									SecretKeyRef struct{ Name, Key string } `yaml:"secretKeyRef"`
								} `yaml:"valueFrom"`
							}
						}
					}
				}
			}
		}
		if err := dec.Decode(&doc); err != nil {
			break
		}
		for _, c := range doc.Spec.Template.Spec.Containers {
			password := ""
			for _, e := range c.Env {
				if e.Name == bus.EnvPassword {
					password = e.ValueFrom.SecretKeyRef.Key
				}
			}
			check("kubernetes "+doc.Kind+" "+doc.Metadata.Name, c.Args, password, seen)
		}
	}
	want("kubernetes", seen)
}

// TestScheduleRoleReplacesARun covers the schedule role's one write beyond
// its own leases, which the split deployment's backup does not reach:
// concurrencyPolicy replace creates and fails the run it replaces and
// announces backup.failed. A scheduler connected as the schedule role on
// the shipped configuration does so (a refused write would fail the pass).
func TestScheduleRoleReplacesARun(t *testing.T) {
	srv := startNATSServer(t)
	admin := srv.bus(t, bus.RoleAdmin)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // a refused write waits it out
	defer cancel()
	reg := plugins.Default()
	p, err := plan.Parse("busy.yaml", []byte(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: busy}
spec:
  source:
    type: command
    command: {argv: ["true"]}
  destinations:
    - {name: local, type: filesystem, filesystem: {path: /tmp/backstream-roles-schedule}}
  schedule: {cron: "@hourly", concurrencyPolicy: replace}
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := planstore.New(admin.Plans, reg).Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	first := time.Date(2025, 3, 3, 10, 0, 0, 0, time.UTC)
	clock := sched.NewFakeClock(first.Add(-time.Minute))
	// The owner of run state, as its own role: schedule asks it to create
	// and fail the run it replaces.
	cb := srv.bus(t, "control")
	ctl := control.New(&stage.Deps{Bus: cb, Runs: runs.NewStore(cb.Runs), Plans: planstore.New(cb.Plans, reg), Plugins: reg,
		Log: bustest.Logger(t), Instance: "control-roles", Now: time.Now})
	cctx, stopControl := context.WithCancel(ctx)
	defer stopControl()
	go func() { _ = ctl.Run(cctx) }()
	b := srv.bus(t, "schedule")
	s := schedule.New(&stage.Deps{Bus: b, Runs: runs.NewStore(b.Runs), Plans: planstore.New(b.Plans, reg), Plugins: reg,
		Owner: runs.Remote{NC: b.NC}, Log: bustest.Logger(t), Instance: "schedule-roles", Now: clock.Now})
	s.Clock = clock
	for _, at := range []time.Time{first.Add(-time.Minute), first.Add(time.Minute)} {
		clock.Set(at)
		if err := s.Once(ctx); err != nil {
			t.Fatalf("pass at %s as the schedule role: %v", at, err)
		}
	}
	runID := schedule.SlotRunID("busy", first)
	if _, err := runs.NewStore(admin.Runs).Ensure(ctx, runs.Run{ID: runID, Plan: "busy", Kind: runs.KindBackup, Phase: runs.Running}); err != nil {
		t.Fatal(err)
	}
	clock.Set(first.Add(time.Hour + time.Minute))
	if err := s.Once(ctx); err != nil {
		t.Fatalf("replacing slot as the schedule role: %v", err)
	}
	r, err := runs.NewStore(admin.Runs).Get(ctx, runID)
	if err != nil || r.Phase != runs.Failed || r.FailedStage != "schedule" {
		t.Fatalf("replaced run: %+v, %v; want failed by schedule", r, err)
	}
	waitEvent(t, admin, runID, events.BackupFailed)
}
