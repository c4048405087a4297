package security

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
)

// natscli runs bin/nats (natscli, built from the Go module proxy) with no
// context of its own: only what args say.
type natscli struct {
	bin, home, url string
}

func (n natscli) run(t *testing.T, timeout time.Duration, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.bin, append([]string{"--no-context", "--server", n.url, "--timeout", "3s"}, args...)...)
	cmd.Env = []string{"HOME=" + n.home, "PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("nats %v: %v", args, err)
	}
	if ctx.Err() != nil {
		code = -1 // killed at the timeout: it kept waiting
	}
	return string(out), code
}

// as is the flags that make natscli the user of a role of a local serve:
// its nkey seed and its own inbox (the only one it may subscribe to).
func as(t *testing.T, data, role string) []string {
	t.Helper()
	seed := filepath.Join(data, bus.AuthDirName, "nats-"+role+".nk")
	b, err := os.ReadFile(seed)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return []string{"--nkey", seed, "--inbox-prefix", bus.InboxPrefix(pub)}
}

// TestNatscliAgainstServe attacks a real `backstream serve` (its embedded
// server) with the stock NATS client: an anonymous client is refused; with
// the trigger role's credentials a backup can be requested and runs to
// success; forging a success, writing the plans or runs bucket, reading
// chunk subjects and removing streams or consumers are refused by the
// server, and nothing changed.
func TestNatscliAgainstServe(t *testing.T) {
	bin := testenv.Bin(t, "nats")
	if bin == "" {
		testenv.Missing(t, "bin/nats (natscli; run scripts/install-tools.sh)")
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	port := testenv.FreePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	p := harness.StartProcess(t, dir, nil, "serve", "--data", data, "--embedded", testenv.Addr(port), "--listen", "", "--ack-wait", "2s")
	p.WaitOutput("backstream serving", time.Minute)
	plan := filepath.Join(dir, "plan.yaml")
	source := filepath.Join(dir, "source.txt")
	if err := os.WriteFile(source, []byte(strings.Repeat("natscli\n", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(plan, []byte(rolesPlan("cli", source, filepath.Join(dir, "backups"), filepath.Join(dir, "restored"), "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := harness.Run(t, dir, nil, "plan", "apply", "-f", plan, "--nats", url); code != 0 {
		t.Fatalf("plan apply: %s", out)
	}
	admin := bustest.Connect(t, url, "test")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	planBefore, err := admin.Plans.Get(ctx, "cli")
	if err != nil {
		t.Fatal(err)
	}

	n := natscli{bin: bin, home: t.TempDir(), url: url}
	trigger := as(t, data, bus.RoleTrigger)

	t.Run("anonymous connect refused", func(t *testing.T) {
		out, code := n.run(t, 20*time.Second, "pub", events.Subject(events.BackupRequested, "cli"), "{}")
		if code == 0 || !strings.Contains(out, "Authorization Violation") {
			t.Fatalf("anonymous nats pub: exit %d, want an authorization violation:\n%s", code, out)
		}
		t.Logf("anonymous nats pub: exit %d: %s", code, strings.TrimSpace(out))
	})

	t.Run("trigger role requests a backup", func(t *testing.T) {
		id := events.NewID()
		e := events.MustNew(events.Meta{Source: "natscli", Plan: "cli", RunID: id}, events.BackupRequestedData{Trigger: events.TriggerEvent, RequestedBy: "natscli"})
		body, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		out, code := n.run(t, 20*time.Second, append(trigger, "pub", "--jetstream", "-H", bus.HeaderMsgID+":"+e.ID(),
			events.Subject(events.BackupRequested, "cli"), string(body))...)
		if code != 0 {
			t.Fatalf("nats pub backup.requested as trigger: exit %d\n%s", code, out)
		}
		r := harness.WaitRun(t, runs.NewStore(admin.Runs), id, time.Minute)
		if r.Phase != runs.Succeeded {
			t.Fatalf("run %s: %s (%s)", id, r.Phase, r.Error)
		}
	})

	forged := events.MustNew(events.Meta{Source: "natscli", Plan: "cli", RunID: events.NewID()}, events.BackupSucceededData{
		BackupID: events.NewID(), Started: time.Now().Add(-time.Minute), Source: "command", Trigger: events.TriggerEvent,
		PlaintextSHA256: strings.Repeat("0", 64), Objects: []events.BackupObject{{Destination: "local", Key: "cli/forged.bsf", ManifestKey: "cli/forged.manifest.json", Size: 1, SHA256: strings.Repeat("0", 64)}}})
	forgedBody, _ := json.Marshal(forged)
	tests := []struct {
		name string
		args []string
		// want is what natscli says when the server refuses.
		want string
	}{
		{"forged backup.succeeded", []string{"pub", events.Subject(events.BackupSucceeded, "cli"), string(forgedBody)}, "Permissions Violation for Publish"},
		{"forged backup.succeeded to JetStream", []string{"pub", "--jetstream", events.Subject(events.BackupSucceeded, "cli"), string(forgedBody)}, "Permissions Violation for Publish"},
		{"kv put into the plans bucket", []string{"kv", "put", bus.PlansBucket, "cli", `{"evil":true}`}, "Permissions Violation for Publish"},
		{"kv put into the runs bucket", []string{"kv", "put", bus.RunsBucket, forged.ID(), `{"phase":"Succeeded"}`}, "Permissions Violation for Publish"},
		{"subscribe to chunk subjects", []string{"sub", bus.DataRoot + ".>", "--count", "1"}, "Permissions Violation for Subscription"},
		{"remove the events stream", []string{"stream", "rm", bus.EventsStream, "--force"}, "Permissions Violation for Publish"},
		{"remove a stage's consumer", []string{"consumer", "rm", bus.EventsStream, "hook", "--force"}, "Permissions Violation for Publish"},
	}
	for _, tt := range tests {
		t.Run("trigger role refused "+tt.name, func(t *testing.T) {
			out, code := n.run(t, 15*time.Second, append(trigger, tt.args...)...)
			if !strings.Contains(out, tt.want) {
				t.Fatalf("nats %s as trigger: exit %d, want %q from the server:\n%s", strings.Join(tt.args, " "), code, tt.want, out)
			}
			t.Logf("nats %s: exit %d: %s", tt.args[0], code, strings.TrimSpace(out))
			if code == 0 {
				t.Errorf("nats %s exited 0 although refused", tt.args[0])
			}
		})
	}

	// Nothing changed.
	if e, err := admin.Plans.Get(ctx, "cli"); err != nil || e.Revision() != planBefore.Revision() {
		t.Errorf("plan cli changed: %v", err)
	}
	if _, err := admin.Runs.Get(ctx, forged.ID()); err == nil {
		t.Errorf("run %s exists", forged.ID())
	}
	s, err := admin.JS.Stream(ctx, bus.EventsStream)
	if err != nil {
		t.Fatalf("events stream: %v", err)
	}
	if m, err := s.GetLastMsgForSubject(ctx, events.Subject(events.BackupSucceeded, "cli")); err == nil && strings.Contains(string(m.Data), forged.ID()) {
		t.Error("the forged backup.succeeded is in the events stream")
	}
	if _, err := admin.JS.Consumer(ctx, bus.EventsStream, "hook"); err != nil {
		t.Errorf("hook consumer: %v", err)
	}
}
