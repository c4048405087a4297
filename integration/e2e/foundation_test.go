package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/app"
)

func TestSameTriggerIDTwiceGivesOneRun(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	env.Apply(commandPlan("dup", t.TempDir(), `["echo", "hello"]`, ""))
	ctx := context.Background()
	slot := time.Date(2026, 11, 21, 3, 0, 0, 0, time.UTC)
	var runIDs []string
	for i := 0; i < 2; i++ {
		runID := events.NewID()
		runIDs = append(runIDs, runID)
		m := env.Bus.Meta("dup", runID, "")
		m.ID = "sched-dup-" + fmt.Sprint(slot.Unix())
		e, err := events.New(m, events.BackupRequestedData{Trigger: events.TriggerSchedule, Slot: &slot})
		if err != nil {
			t.Fatal(err)
		}
		if err := env.Bus.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	r := env.Wait(runIDs[0], time.Minute)
	if r.Phase != runs.Succeeded {
		t.Fatalf("first run: %s %s", r.Phase, r.Error)
	}
	page, err := env.Runs.List(ctx, runs.ListOptions{Plan: "dup"})
	if err != nil {
		t.Fatal(err)
	}
	if list := page.Runs; len(list) != 1 || list[0].ID != runIDs[0] {
		t.Fatalf("runs of plan dup: %d, want exactly the first one", len(list))
	}
}

// failTwice fails the first two deliveries of each event a consumer gets.
func failTwice(consumer string, calls *sync.Map) func(string, bus.Handler) bus.Handler {
	return func(name string, h bus.Handler) bus.Handler {
		if name != consumer {
			return h
		}
		return func(ctx context.Context, e events.Event) ([]events.Event, error) {
			n, _ := calls.LoadOrStore(e.ID(), new(int))
			count := n.(*int)
			*count++
			if *count <= 2 {
				return nil, fmt.Errorf("injected transient failure %d of event %s", *count, e.ID())
			}
			return h(ctx, e)
		}
	}
}

func TestHandlerFailingTwiceIsRetriedAndTheRunSucceeds(t *testing.T) {
	var calls sync.Map
	env := harness.Start(t, harness.Options{Config: func(c *app.Config) { c.Wrap = failTwice("verify", &calls) }})
	env.Apply(commandPlan("flaky", t.TempDir(), `["echo", "hello"]`, ""))
	id := env.Trigger("flaky")
	r := env.Wait(id, time.Minute)
	if r.Phase != runs.Succeeded {
		t.Fatalf("run: %s %s", r.Phase, r.Error)
	}
	tries := 0
	calls.Range(func(_, v any) bool { tries += *v.(*int); return true })
	if tries != 3 {
		t.Fatalf("verify handled its event %d times, want 3 (two injected failures, then success)", tries)
	}
}

func TestMalformedEventsAreDeadLetteredWhileRunsGoOn(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	env.Apply(commandPlan("strict", t.TempDir(), `["echo", "hello"]`, ""))
	ctx := context.Background()
	subject := events.Subject(events.BackupRequested, "strict")
	// Each bad event is built on its own: CloudEvent copies share their context.
	fresh := func(plan string) events.Event {
		return events.MustNew(env.Bus.Meta(plan, events.NewID(), ""), events.BackupRequestedData{Trigger: events.TriggerCLI})
	}
	noTrigger := fresh("strict")
	_ = noTrigger.SetData("application/json", map[string]string{"reason": "no trigger"})
	missing, _ := bus.Encode(noTrigger)
	unknown := fresh("strict")
	unknown.SetType(events.TypePrefix + "backup.exploded")
	unknownData, _ := bus.Encode(unknown)
	unknownPlanData, _ := bus.Encode(fresh("no-such-plan"))
	for _, data := range [][]byte{[]byte("{not json"), missing, unknownData} {
		if _, err := env.Bus.JS.Publish(ctx, subject, data); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := env.Bus.JS.Publish(ctx, events.Subject(events.BackupRequested, "no-such-plan"), unknownPlanData); err != nil {
		t.Fatal(err)
	}
	id := env.Trigger("strict")
	if r := env.Wait(id, time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("run after bad events: %s %s", r.Phase, r.Error)
	}
	// Every consumer of backup.requested dead-letters each bad event with its reason.
	want := []string{"not a CloudEvent", "trigger: required", "unknown event type", `plan "no-such-plan"`}
	deadline := time.Now().Add(30 * time.Second)
	for {
		reasons := deadReasons(t, env.Bus, "snapshot")
		missingReason := ""
		for _, w := range want {
			if !strings.Contains(reasons, w) {
				missingReason = w
			}
		}
		if missingReason == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead letters of the snapshot consumer lack %q; have:\n%s", missingReason, reasons)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func deadReasons(t *testing.T, b *bus.Bus, consumer string) string {
	ctx := context.Background()
	s, err := b.JS.Stream(ctx, bus.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err == nil && m.Subject == events.DeadLetterRoot+"."+consumer {
			out = append(out, m.Header.Get(bus.HeaderDeadReason))
		}
	}
	return strings.Join(out, "\n")
}

// slowSource streams a few MiB, then sleeps, so a run is mid-stream for long
// enough to kill the process running it.
const slowSource = `["sh", "-c", "head -c 4000000 /dev/zero; sleep 30; echo done"]`

func TestKilledProcessRunIsFinishedOrFailedNeverLeftRunning(t *testing.T) {
	dir := t.TempDir()
	port := testenv.FreePort(t)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", port)
	args := []string{"serve", "--data", filepath.Join(dir, "data"), "--embedded", testenv.Addr(port), "--listen", "", "--ack-wait", "2s", "--log-level", "debug"}
	p := harness.StartProcess(t, dir, nil, args...)
	p.WaitOutput("backstream serving", 30*time.Second)
	plan := filepath.Join(dir, "plan.yaml")
	if err := os.WriteFile(plan, []byte(commandPlan("killme", filepath.Join(dir, "backups"), slowSource, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := harness.Run(t, dir, nil, "plan", "apply", "-f", plan, "--nats", natsURL); code != 0 {
		t.Fatalf("plan apply: %s", out)
	}
	b := bustest.Connect(t, natsURL, "test")
	store := runs.NewStore(b.Runs)
	id, err := requestBackup(b, "killme")
	if err != nil {
		t.Fatal(err)
	}
	// Kill once the dump is streaming.
	waitStep(t, store, id, "snapshot", runs.Running)
	p.Kill()
	p.Restart()
	r := harness.WaitRun(t, store, id, 2*time.Minute)
	if r.Phase != runs.Failed || !strings.Contains(r.Error, "interrupted") {
		t.Fatalf("run after kill: phase %s error %q, want Failed with the interruption named", r.Phase, r.Error)
	}
	// Nothing that looks like a backup is left.
	entries, _ := filepath.Glob(filepath.Join(dir, "backups", "killme", "*.manifest.json"))
	if len(entries) != 0 {
		t.Fatalf("manifests left after a killed run: %v", entries)
	}
}

func requestBackup(b *bus.Bus, planName string) (string, error) {
	id := events.NewID()
	e, err := events.New(b.Meta(planName, id, ""), events.BackupRequestedData{Trigger: events.TriggerCLI})
	if err != nil {
		return "", err
	}
	return id, b.Publish(context.Background(), e)
}

func waitStep(t *testing.T, store *runs.Store, id, step string, phase runs.Phase) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if r, err := store.Get(context.Background(), id); err == nil {
			if s := r.FindStep(step); s != nil && s.Phase == phase {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("run %s: step %s never reached %s", id, step, phase)
}

func TestTwoProcessesSplittingTheServicesCompleteARun(t *testing.T) {
	dir := t.TempDir()
	port := testenv.FreePort(t)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", port)
	a := harness.StartProcess(t, dir, nil, "serve", "--data", filepath.Join(dir, "a"), "--embedded", testenv.Addr(port),
		"--services", "control,hook,snapshot,api", "--listen", "127.0.0.1:0")
	a.WaitOutput("backstream serving", 30*time.Second)
	b := harness.StartProcess(t, dir, nil, "serve", "--nats", natsURL, "--services", "filter,upload,verify,restore")
	b.WaitOutput("backstream serving", 30*time.Second)
	plan := filepath.Join(dir, "plan.yaml")
	if err := os.WriteFile(plan, []byte(commandPlan("split", filepath.Join(dir, "backups"), `["head", "-c", "3000000", "/dev/urandom"]`, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := harness.Run(t, dir, nil, "plan", "apply", "-f", plan, "--nats", natsURL); code != 0 {
		t.Fatalf("plan apply: %s", out)
	}
	out, code := harness.Run(t, dir, nil, "trigger", "split", "--wait", "--nats", natsURL)
	if code != 0 || !strings.Contains(out, "backup succeeded") {
		t.Fatalf("trigger --wait exit %d:\n%s", code, out)
	}
	// Each process did its own part. (Verify logs its part after the
	// owner of run state recorded it, which may be after the run ended.)
	b.WaitOutput("backup verified", 10*time.Second)
	if !strings.Contains(a.Output(), "snapshot completed") || strings.Contains(a.Output(), "upload completed") {
		t.Errorf("process a (hook,snapshot) output:\n%s", a.Output())
	}
	if !strings.Contains(b.Output(), "upload completed") {
		t.Errorf("process b (filter,upload,verify) output:\n%s", b.Output())
	}
}

func TestPlanApplyRefusesABrokenPlanWithEveryProblem(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	broken := `apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: Broken_Name}
spec:
  source:
    type: command
    command: {argv: []}
  destinations: []
  retention: {keepDaily: -3}
  schedule: {cron: "61 * * * *"}
`
	file := filepath.Join(dir, "broken.yaml")
	if err := os.WriteFile(file, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := harness.Run(t, dir, nil, "plan", "apply", "-f", file, "--nats", env.URL)
	if code == 0 {
		t.Fatalf("plan apply of a broken plan exited 0:\n%s", out)
	}
	for _, want := range []string{"broken.yaml", "metadata.name", "spec.source.command", "spec.destinations", "spec.retention.keepDaily", "spec.schedule.cron"} {
		if !strings.Contains(out, want) {
			t.Errorf("plan apply output lacks %q:\n%s", want, out)
		}
	}
	store := planstore.New(env.Bus.Plans, plugins.Default())
	if ps, bad, _ := store.List(context.Background()); len(ps)+len(bad) != 0 {
		t.Fatalf("a refused plan stored something: %d plans, %d invalid", len(ps), len(bad))
	}
}

func TestSIGTERMShutsDownGracefullyAndTheRunEndsWithAReason(t *testing.T) {
	dir := t.TempDir()
	port := testenv.FreePort(t)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", port)
	p := harness.StartProcess(t, dir, nil, "serve", "--data", filepath.Join(dir, "data"), "--embedded", testenv.Addr(port), "--listen", "", "--ack-wait", "2s")
	p.WaitOutput("backstream serving", 30*time.Second)
	plan := filepath.Join(dir, "plan.yaml")
	if err := os.WriteFile(plan, []byte(commandPlan("term", filepath.Join(dir, "backups"), slowSource, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := harness.Run(t, dir, nil, "plan", "apply", "-f", plan, "--nats", natsURL); code != 0 {
		t.Fatalf("plan apply: %s", out)
	}
	b := bustest.Connect(t, natsURL, "test")
	store := runs.NewStore(b.Runs)
	id, err := requestBackup(b, "term")
	if err != nil {
		t.Fatal(err)
	}
	waitStep(t, store, id, "snapshot", runs.Running)
	if code := p.Terminate(time.Minute); code != 0 {
		t.Fatalf("serve exited %d after SIGTERM, want 0:\n%s", code, p.Output())
	}
	if !strings.Contains(p.Output(), "backstream stopped") {
		t.Fatalf("serve did not stop gracefully:\n%s", p.Output())
	}
	p.Restart()
	p.WaitOutput("backstream serving", 30*time.Second)
	b2 := bustest.Connect(t, natsURL, "test2")
	r := harness.WaitRun(t, runs.NewStore(b2.Runs), id, 2*time.Minute)
	if r.Phase != runs.Failed || r.Error == "" {
		t.Fatalf("run after SIGTERM: phase %s error %q, want Failed with a reason", r.Phase, r.Error)
	}
}

func TestTriggerWaitShowsProgressAndFailsWithTheRun(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	slow := `["sh", "-c", "for i in 1 2 3 4 5 6; do head -c 1048576 /dev/urandom; sleep 0.5; done"]`
	env.Apply(commandPlan("slow", filepath.Join(dir, "b"), slow, ""))
	env.Apply(commandPlan("broken", filepath.Join(dir, "b"), `["sh", "-c", "echo partial; echo 'no such table' >&2; exit 7"]`, ""))

	// Not a terminal: plain progress lines, then the result.
	out, code := harness.Run(t, dir, nil, "trigger", "slow", "--wait", "--nats", env.URL)
	if code != 0 || !strings.Contains(out, "backup succeeded") {
		t.Fatalf("trigger --wait exit %d:\n%s", code, out)
	}
	if !strings.Contains(out, "progress snapshot") || !strings.Contains(out, "progress upload local") || !strings.Contains(out, "MiB/s over ") || strings.Contains(out, "\r") {
		t.Errorf("trigger --wait without a terminal should print plain progress lines with the step's rate:\n%s", out)
	}
	// A rate is over the step's own time, never over nothing.
	if regexp.MustCompile(`/s over 0s|0s elapsed`).MatchString(out) {
		t.Errorf("a progress line gives a rate over no time:\n%s", out)
	}

	// On a terminal (script(1) gives it a pty): one line rewritten in place.
	bin := harness.Binary(t)
	admin, _ := bustest.AuthFor(env.URL, bus.RoleAdmin)
	tty, code := harness.RunCommand(t, dir, "script", "-qec", bin+" trigger slow --wait --nats "+env.URL+" --nats-nkey "+admin.NKeyFile, "/dev/null")
	if code != 0 || !strings.Contains(tty, "\r\033[K") || !strings.Contains(tty, "backup succeeded") {
		t.Errorf("trigger --wait on a terminal exit %d, want progress rewritten in place:\n%q", code, tty)
	}

	out, code = harness.Run(t, dir, nil, "trigger", "broken", "--wait", "--nats", env.URL)
	if code != 1 || !strings.Contains(out, "exit status 7") || !strings.Contains(out, "no such table") {
		t.Fatalf("trigger --wait of a failing run: exit %d, want 1 naming the exit status and stderr:\n%s", code, out)
	}
}

func TestSchedulePrintsTheNextSlots(t *testing.T) {
	env := harness.Start(t, harness.Options{Services: []string{"api"}})
	env.Apply(commandPlan("nightly", t.TempDir(), `["echo", "x"]`, `  schedule: {cron: "30 2 * * *", timezone: Europe/Berlin, jitter: 10m}
`))
	out, code := harness.Run(t, t.TempDir(), nil, "schedule", "nightly", "--count", "3", "--nats", env.URL)
	if code != 0 {
		t.Fatalf("schedule exit %d:\n%s", code, out)
	}
	var slots []string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "fires at") {
			slots = append(slots, strings.Fields(line)[0])
		}
	}
	if len(slots) != 3 || slots[0] >= slots[1] || slots[1] >= slots[2] {
		t.Fatalf("want three increasing daily slots, got %v:\n%s", slots, out)
	}
}

func TestPlanCommandsApplyListGetDelete(t *testing.T) {
	env := harness.Start(t, harness.Options{Services: []string{"api"}})
	dir := t.TempDir()
	for _, name := range []string{"alpha", "beta"} {
		if err := os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(commandPlan(name, filepath.Join(dir, "b"), `["echo", "x"]`, "")), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	nats := []string{"--nats", env.URL}
	steps := []struct {
		args []string
		want []string
	}{
		{[]string{"plan", "apply", "-f", dir}, []string{"plan alpha applied", "plan beta applied"}},
		{[]string{"plan", "apply", "-f", dir}, []string{"plan alpha unchanged", "plan beta unchanged"}},
		{[]string{"plan", "list"}, []string{"alpha", "beta", "local(filesystem)"}},
		{[]string{"plan", "get", "alpha", "-o", "json"}, []string{`"name": "alpha"`, `"argv"`}},
		{[]string{"plan", "delete", "alpha"}, []string{"plan alpha deleted"}},
	}
	for _, s := range steps {
		out, code := harness.Run(t, dir, nil, append(s.args, nats...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d:\n%s", s.args, code, out)
		}
		for _, w := range s.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: output lacks %q:\n%s", s.args, w, out)
			}
		}
	}
	if out, code := harness.Run(t, dir, nil, append([]string{"plan", "get", "alpha"}, nats...)...); code == 0 || !strings.Contains(out, "plan not found") {
		t.Fatalf("get of a deleted plan: exit %d:\n%s", code, out)
	}
}

func TestRunsAndRunShowStepsPhasesAndErrors(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	env.Apply(commandPlan("shown", filepath.Join(dir, "b"), `["head", "-c", "300000", "/dev/zero"]`, ""))
	env.Apply(commandPlan("fails", filepath.Join(dir, "b"), `["sh", "-c", "exit 4"]`, ""))
	ok := env.Trigger("shown")
	env.Wait(ok, time.Minute)
	bad := env.Trigger("fails")
	env.Wait(bad, time.Minute)

	out, code := harness.Run(t, dir, nil, "runs", "--nats", env.URL)
	if code != 0 || !strings.Contains(out, ok) || !strings.Contains(out, bad) || !strings.Contains(out, "Succeeded") || !strings.Contains(out, "exit status 4") {
		t.Errorf("runs: exit %d:\n%s", code, out)
	}
	// A page of one: the newest run, and how to list the older ones.
	out, code = harness.Run(t, dir, nil, "runs", "--limit", "1", "--nats", env.URL)
	if code != 0 || !strings.Contains(out, bad) || strings.Contains(out, ok+" ") || !strings.Contains(out, "older runs: backstream runs --before "+bad+" --limit 1") {
		t.Errorf("runs --limit 1: exit %d:\n%s", code, out)
	}
	out, code = harness.Run(t, dir, nil, "runs", "--limit", "1", "--before", bad, "--nats", env.URL)
	if code != 0 || !strings.Contains(out, ok) || strings.Contains(out, bad) {
		t.Errorf("runs --limit 1 --before %s: exit %d:\n%s", bad, code, out)
	}
	out, _ = harness.Run(t, dir, nil, "runs", "--plan", "fails", "-o", "json", "--nats", env.URL)
	var list []runs.Run
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || list[0].ID != bad || list[0].Phase != runs.Failed {
		t.Errorf("runs --plan fails -o json: %v\n%s", err, out)
	}
	out, code = harness.Run(t, dir, nil, "run", ok, "--nats", env.URL)
	for _, want := range []string{"phase Succeeded", "snapshot", "filter", "upload:local", "verify:local", "293.0 KiB"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("run %s lacks %q:\n%s", ok, want, out)
		}
	}
}

// alwaysFail makes one consumer fail every delivery of the events it gets.
func alwaysFail(consumer string) func(string, bus.Handler) bus.Handler {
	return func(name string, h bus.Handler) bus.Handler {
		if name != consumer {
			return h
		}
		return func(ctx context.Context, e events.Event) ([]events.Event, error) {
			return nil, fmt.Errorf("injected: storage unreachable")
		}
	}
}

func TestARunWhoseEventIsDeadLetteredFailsInsteadOfHanging(t *testing.T) {
	env := harness.Start(t, harness.Options{Config: func(c *app.Config) { c.Wrap = alwaysFail("verify") }})
	env.Apply(commandPlan("given-up", t.TempDir(), `["echo", "hello"]`, ""))
	id := env.Trigger("given-up")
	r := env.Wait(id, 2*time.Minute)
	if r.Phase != runs.Failed || !strings.Contains(r.Error, "verify gave up on io.backstream.upload.completed") || !strings.Contains(r.Error, "storage unreachable") {
		t.Fatalf("run: phase %s error %q, want Failed naming the dead-lettered event", r.Phase, r.Error)
	}
	if reasons := deadReasons(t, env.Bus, "verify"); !strings.Contains(reasons, "gave up after 5 deliveries") {
		t.Fatalf("verify dead letters: %q", reasons)
	}
}
