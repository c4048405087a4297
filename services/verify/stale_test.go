package verify_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage/stagetest"
	"github.com/backstream/backstream/services/verify"
)

// TestBackupFailedOfAReplayedRunMarksNothing: a backup.failed handled
// after the run was replayed (its delivery retried while the storage was
// down, then the operator replayed the run and its verify passed) must
// leave the manifests to the new attempt. The destination here cannot
// even be opened, so a handler that went on to mark the manifest fails.
func TestBackupFailedOfAReplayedRunMarksNothing(t *testing.T) {
	ctx := context.Background()
	_, b := bustest.Start(t)
	d := stagetest.Deps(t, b)
	file := filepath.Join(t.TempDir(), "not-a-directory")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := stagetest.ApplyPlan(t, d, fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: replayed}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  destinations: [{name: local, type: filesystem, filesystem: {path: %s}}]
`, filepath.Join(file, "backups")))
	id := events.NewID()
	if _, err := d.Runs.Ensure(ctx, runs.Run{ID: id, Plan: p.Name(), Kind: runs.KindBackup, Phase: runs.Running,
		Destinations: map[string]*runs.Destination{"local": {Phase: runs.Succeeded, Key: format.ObjectKey(p.Name(), id),
			ManifestKey: format.ManifestKey(p.Name(), id)}}}); err != nil {
		t.Fatal(err)
	}
	failed, err := events.New(b.Meta(p.Name(), id, ""), events.BackupFailedData{Stage: "verify", Reason: "storage down"})
	if err != nil {
		t.Fatal(err)
	}
	handler := verify.New(d).Consumers()[1]
	if !strings.HasSuffix(handler.Name, "verify-failed") {
		t.Fatalf("consumer %q, want verify-failed", handler.Name)
	}
	if _, err := handler.Handler(ctx, failed); err != nil {
		t.Errorf("backup.failed of a run running again: %v, want nothing done", err)
	}
}
