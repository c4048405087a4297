package sources

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/upload"
)

// TestDumpFailsBeforeFilterStarts pins an order of events that happens by
// chance when a dump fails within milliseconds: the upload stage claims its
// step and waits on the sealed stream, then the dump fails, and only then
// does the filter look at the run — and skips it, since the run failed. The
// upload must still end (skipped, its multipart upload aborted) instead of
// waiting forever on a sealed stream nobody writes.
func TestDumpFailsBeforeFilterStarts(t *testing.T) {
	var r *rig
	// The filter handles snapshot.started only once the run has failed.
	wrap := func(consumer string, h bus.Handler) bus.Handler {
		if consumer != "filter" {
			return h
		}
		return func(ctx context.Context, e events.Event) ([]events.Event, error) {
			for {
				run, err := r.env.Runs.Get(ctx, events.RunID(e))
				if err == nil && run.Phase == runs.Failed {
					return h(ctx, e)
				}
				select {
				case <-ctx.Done():
					return nil, ctx.Err()
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
	}
	r = newRigWrapped(t, wrap)
	src := testenv.StartRedis(t)

	// A redis-cli that waits on a FIFO, then fails without output.
	bin := t.TempDir()
	gate := filepath.Join(bin, "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	script(t, bin, "redis-cli", fmt.Sprintf(`read -r _ < %s
echo "redis-cli: simulated failure before any output" >&2
exit 1
`, gate))
	r.apply(t, "early-fail", redisBlock(src.Addr, "      binDir: "+bin+"\n"))
	id := r.trigger(t, "early-fail")
	waitStep(t, r, id, upload.StepName(destName), runs.Running)
	release(t, gate)

	f := r.mustFail(t, harness.WaitRun(t, r.env.Runs, id, time.Minute))
	checkFailure(t, f, "exit status 1", "simulated failure before any output", 0)
	run, err := r.env.Runs.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if st := run.FindStep(upload.StepName(destName)); st == nil || st.Phase != runs.Skipped {
		t.Errorf("upload step: %+v, want skipped", st)
	}
}

// waitStep polls the run record until step name reaches phase.
func waitStep(t *testing.T, r *rig, runID, name string, phase runs.Phase) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		run, err := r.env.Runs.Get(context.Background(), runID)
		if err == nil {
			if st := run.FindStep(name); st != nil && st.Phase == phase {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("run %s: step %s never %s", runID, name, phase)
}
