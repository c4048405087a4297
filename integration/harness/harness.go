// Package harness runs backstream for end-to-end tests: in-process on an
// embedded NATS server (the same app.Run as `backstream serve`), or as real
// `backstream` processes that tests can kill and restart. Nothing is mocked.
package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/app"
	"github.com/backstream/backstream/services/stage"
)

// Env is a running backstream for one test.
type Env struct {
	t      testing.TB
	URL    string
	Bus    *bus.Bus
	Plans  *planstore.Store
	Runs   *runs.Store
	cancel context.CancelFunc
	done   chan error
	// retention reports whether this Env runs the retention service.
	retention bool
}

// Options tune an in-process Env.
type Options struct {
	// Services to run; empty means all.
	Services []string
	// Config is applied last, to adjust anything (Keys, Wrap, Data...).
	Config func(*app.Config)
	// NATS is an existing server's URL; empty starts a fresh embedded one.
	NATS string
}

// Start runs backstream in-process and stops it when the test ends.
func Start(t testing.TB, o Options) *Env {
	t.Helper()
	url := o.NATS
	if url == "" {
		url = bustest.Server(t).URL()
	}
	auth, _ := bustest.AuthFor(url, bus.RoleAdmin)
	services := o.Services
	if len(services) > 0 && !slices.Contains(services, "control") {
		// Every deployment runs the owner of run state somewhere; each Env
		// brings a replica.
		services = append([]string{"control"}, services...)
	}
	cfg := app.Config{
		NATS:     url,
		NATSAuth: auth,
		Services: services,
		Log:      bustest.Logger(t),
		Consumer: bus.ConsumerSpec{AckWait: 5 * time.Second, Backoff: []time.Duration{100 * time.Millisecond, 300 * time.Millisecond, time.Second}, Grace: 5 * time.Second},
	}
	if o.Config != nil {
		o.Config(&cfg)
	}
	ready := make(chan struct{})
	cfg.Ready = func(string, string) { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	e := &Env{t: t, URL: url, cancel: cancel, done: make(chan error, 1),
		retention: len(o.Services) == 0 || slices.Contains(o.Services, "retention")}
	go func() { e.done <- app.Run(ctx, cfg) }()
	select {
	case <-ready:
	case err := <-e.done:
		cancel()
		t.Fatalf("backstream did not start: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("backstream did not start within 30s")
	}
	e.Bus = bustest.Connect(t, url, "test")
	e.Plans = planstore.New(e.Bus.Plans, plugins.Default())
	e.Runs = runs.NewStore(e.Bus.Runs)
	t.Cleanup(e.Stop)
	return e
}

// Stop shuts the services down and waits for them.
func (e *Env) Stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	e.cancel = nil
	select {
	case err := <-e.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			e.t.Errorf("backstream stopped with: %v", err)
		}
	case <-time.After(30 * time.Second):
		e.t.Errorf("backstream did not stop within 30s")
	}
}

// Apply validates and stores a plan given as YAML.
func (e *Env) Apply(yamlText string) *plan.Plan {
	e.t.Helper()
	p, err := plan.Parse("test.yaml", []byte(yamlText))
	if err != nil {
		e.t.Fatalf("parse plan: %v", err)
	}
	if _, err := e.Plans.Put(context.Background(), p); err != nil {
		e.t.Fatalf("apply plan: %v", err)
	}
	return p
}

// Trigger requests a backup of planName and returns the run id.
func (e *Env) Trigger(planName string) string {
	e.t.Helper()
	id, err := stage.RequestBackup(context.Background(), e.Bus, e.Plans, planName, events.TriggerCLI, "test", "")
	if err != nil {
		e.t.Fatalf("trigger %s: %v", planName, err)
	}
	return id
}

// Wait waits until run id is final and, for a failed run, until its
// compensation is done, and until the run's closing events are in the
// events stream (stages publish them right after the record turns final).
// It returns the final record.
func (e *Env) Wait(id string, timeout time.Duration) *runs.Run {
	e.t.Helper()
	r := WaitRun(e.t, e.Runs, id, timeout)
	want := []string{events.BackupSucceeded}
	switch {
	case r.Kind == runs.KindRestore && r.Phase == runs.Succeeded:
		want = []string{events.RestoreSucceeded}
	case r.Kind == runs.KindRestore:
		want = []string{events.RestoreFailed, events.CompensationCompleted}
	case r.Phase == runs.Failed:
		want = []string{events.BackupFailed, events.CompensationCompleted}
	}
	deadline := time.Now().Add(timeout)
	for {
		seen := map[string]bool{}
		for _, ev := range e.Events(id) {
			seen[ev.Type()] = true
		}
		missing := ""
		for _, w := range want {
			if !seen[w] {
				missing = w
			}
		}
		if missing == "" {
			if r.Kind != runs.KindRestore && r.Phase == runs.Succeeded && e.retention {
				e.waitRetention(deadline)
			}
			return r
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("run %s is %s but its %s event never came", id, r.Phase, missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitRetention waits until the retention stage has handled every
// backup.succeeded published so far. It labels the backup's manifest even
// when the plan keeps everything (and then emits nothing), so a test that
// removes the backups' directory right after Wait would race with it.
func (e *Env) waitRetention(deadline time.Time) {
	e.t.Helper()
	for {
		c, err := e.Bus.JS.Consumer(context.Background(), bus.EventsStream, "retention")
		var info *jetstream.ConsumerInfo
		if err == nil {
			info, err = c.Info(context.Background())
		}
		if err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("the retention stage did not finish with the run's backup.succeeded in time (consumer %+v, err %v)", info, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitRun polls the run record until the run is final.
func WaitRun(t testing.TB, store *runs.Store, id string, timeout time.Duration) *runs.Run {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last *runs.Run
	for time.Now().Before(deadline) {
		r, err := store.Get(context.Background(), id)
		if err == nil {
			last = r
			if r.Phase == runs.Succeeded {
				return r
			}
			if r.Phase == runs.Failed && (r.CompensationDone || !hasHookSteps(r)) {
				return r
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("run %s not final after %s: %+v", id, timeout, last)
	return nil
}

func hasHookSteps(r *runs.Run) bool {
	for _, s := range r.Steps {
		if strings.HasPrefix(s.Name, "hook:") && s.Phase != runs.Pending && s.Phase != runs.Skipped {
			return true
		}
	}
	return false
}

// Events returns every event stored for a run, in order.
func (e *Env) Events(runID string) []events.Event {
	e.t.Helper()
	return RunEvents(e.t, e.Bus, runID)
}

// RunEvents reads the events stream for one run's events.
func RunEvents(t testing.TB, b *bus.Bus, runID string) []events.Event {
	t.Helper()
	ctx := context.Background()
	s, err := b.JS.Stream(ctx, bus.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []events.Event
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		ev, err := bus.Decode(m.Data)
		if err == nil && events.RunID(ev) == runID {
			out = append(out, ev)
		}
	}
	return out
}

// Types lists the event types of evs, without the io.backstream. prefix.
func Types(evs []events.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = strings.TrimPrefix(e.Type(), events.TypePrefix)
	}
	return out
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds the backstream command once per test process.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "backstream-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "backstream")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/backstream")
		cmd.Dir = filepath.Join(testenv.RepoRoot(t), "services")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build backstream: %v", buildErr)
	}
	return binPath
}

// Process is a `backstream` child process.
type Process struct {
	t    testing.TB
	Args []string
	Env  []string
	Dir  string
	cmd  *exec.Cmd
	out  *testenv.Buffer
	done chan struct{}
	// since is where the output of the current start begins.
	since int
}

// StartProcess starts `backstream args...` in dir; the test's cleanup kills
// it and prints its output if the test failed.
func StartProcess(t testing.TB, dir string, env []string, args ...string) *Process {
	t.Helper()
	p := &Process{t: t, Args: args, Env: env, Dir: dir}
	p.start()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("output of backstream %s:\n%s", strings.Join(args, " "), p.Output())
		}
	})
	return p
}

func (p *Process) start() {
	p.cmd = exec.Command(Binary(p.t), p.Args...)
	p.cmd.Dir = p.Dir
	p.cmd.Env = append(append(os.Environ(), p.Env...), credentialsEnv(p.t, p.Dir, p.Args)...)
	if p.out == nil {
		p.out = &testenv.Buffer{}
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start backstream: %v", err)
	}
	p.done = make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(p.done) }()
}

// Restart starts the process again with the same arguments.
func (p *Process) Restart() {
	p.Kill()
	p.out.Write([]byte("\n--- restarted ---\n"))
	p.since = len(p.out.String())
	p.start()
}

// Kill kills the process with SIGKILL and waits for it.
func (p *Process) Kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Terminate sends SIGTERM and waits up to timeout for the process to exit,
// returning its exit code (-1 if it had to be killed).
func (p *Process) Terminate(timeout time.Duration) int {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		p.Kill()
		return -1
	}
}

// PID is the process id of the current start (to read /proc/PID/status).
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Output is everything the process printed so far.
func (p *Process) Output() string { return p.out.String() }

// WaitOutput waits until the output of the current start contains s.
func (p *Process) WaitOutput(s string, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.Output()[p.since:], s) {
		if time.Now().After(deadline) {
			p.t.Fatalf("backstream output lacks %q after %s:\n%s", s, timeout, p.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Run runs `backstream args...` to completion and returns its combined
// output and exit code.
func Run(t testing.TB, dir string, env []string, args ...string) (string, int) {
	t.Helper()
	return run(t, dir, env, Binary(t), args...)
}

// RunCommand runs any program to completion, like Run.
func RunCommand(t testing.TB, dir string, name string, args ...string) (string, int) {
	t.Helper()
	return run(t, dir, nil, name, args...)
}

func run(t testing.TB, dir string, env []string, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if name == Binary(t) {
		cmd.Env = append(cmd.Env, credentialsEnv(t, dir, args)...)
	}
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run backstream %v: %v", args, err)
	}
	return string(out), code
}

// credentialsEnv gives a backstream command the admin credentials of the
// test server its --nats names, as an operator would through the
// environment. A `serve` with its own embedded server registers that server
// (under its --data) so later commands pointed at it find its credentials.
func credentialsEnv(t testing.TB, dir string, args []string) []string {
	url, data, embedded := "", "", "127.0.0.1:4250"
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--nats":
			url = args[i+1]
		case "--data":
			data = args[i+1]
		case "--embedded":
			embedded = args[i+1]
		}
	}
	if len(args) > 0 && args[0] == "serve" && url == "" {
		if data == "" {
			data = "data"
		}
		if !filepath.IsAbs(data) {
			data = filepath.Join(dir, data)
		}
		bustest.Register(t, "nats://"+embedded, data)
		return nil
	}
	if url == "" {
		return nil
	}
	a, ok := bustest.AuthFor(url, bus.RoleAdmin)
	if !ok {
		return nil
	}
	return []string{bus.EnvNKey + "=" + a.NKeyFile}
}
