package hooks

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
)

// TestTwoHookReplicasRunEveryOpAndInverseOnce runs several failing runs at
// once against two hook-service replicas sharing the durable consumers (two
// in-process apps with only the hook service, plus one with the data
// stages, on one NATS). Every op records itself with its run id in a
// MariaDB table (exec ops through the mariadb client, which reads the run
// id from BACKSTREAM_RUN_ID), so the table counts each op's executions.
func TestTwoHookReplicasRunEveryOpAndInverseOnce(t *testing.T) {
	db := testenv.MariaDB(t)
	effects(t, db.SQL, "effects")
	srv := bustest.Server(t)
	url := srv.URL()
	harness.Start(t, harness.Options{NATS: url, Services: []string{"hook"}})
	harness.Start(t, harness.Options{NATS: url, Services: []string{"hook"}})
	env := harness.Start(t, harness.Options{NATS: url, Services: []string{"snapshot", "filter", "upload", "verify"}})

	record := func(op string) string {
		return fmt.Sprintf(`["sh", "-c", "mariadb -h127.0.0.1 -uroot -e \"INSERT INTO %s.effects (run, op) VALUES ('$BACKSTREAM_RUN_ID', '%s')\""]`, db.Name, op)
	}
	env.Apply(fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: replicas}
spec:
  source:
    type: command
    command: {argv: ["head", "-c", "300000", "/dev/urandom"]}
  hooks:
    - name: a
      type: exec
      ops:
        - {name: one, command: %s, inverseOp: undo-one}
        - {name: two, command: %s, inverseOp: undo-two}
        - {name: three, command: %s, inverseOp: undo-three}
        - {name: boom, command: ["sh", "-c", "exit 3"]}
        - {name: undo-one, command: %s}
        - {name: undo-two, command: %s}
        - {name: undo-three, command: %s}
  workflows:
    - name: backup
      sequence: [{hook: a/one}, {hook: a/two}, snapshot, {hook: a/three}, {hook: a/boom}]
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: %s}
`, record("one"), record("two"), record("three"), record("undo-one"), record("undo-two"), record("undo-three"), t.TempDir()))

	const n = 8
	ids := make([]string, n)
	for i := range ids {
		ids[i] = env.Trigger("replicas")
	}
	want := []string{"one", "two", "three", "undo-three", "undo-two", "undo-one"}
	owners := map[string]bool{}
	for _, id := range ids {
		r := env.Wait(id, 2*time.Minute)
		if r.Phase != runs.Failed || r.FailedStage != "hook" {
			t.Fatalf("run %s: %s in %q (%s), want Failed in hook", id, r.Phase, r.FailedStage, r.Error)
		}
		if got := ops(t, db.SQL, "effects", id); !slices.Equal(got, want) {
			t.Errorf("run %s ran %v, want each op once: %v", id, got, want)
		}
		for _, c := range r.Compensation {
			owners[c.Owner] = true
		}
		inverse, completed, _ := inverseEvents(t, env.Events(id))
		if !slices.Equal(inverse, []string{"a/undo-three", "a/undo-two", "a/undo-one"}) || !slices.Equal(completed, []string{"a/undo-three,a/undo-two,a/undo-one"}) {
			t.Errorf("run %s compensation events: inverse %v, completed %v", id, inverse, completed)
		}
	}
	t.Logf("%d runs, inverse ops run by %d replica(s)", n, len(owners))
}
