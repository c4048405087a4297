package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/runs"
)

// commandPlan backs up the stdout of argv into a filesystem destination.
func commandPlan(name, dir string, argv string, extra string) string {
	return fmt.Sprintf(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: %s}
spec:
  source:
    type: command
    command: {argv: %s}
  filters: {compression: zstd}
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: %s}
%s`, name, argv, dir, extra)
}

func TestTriggerToSuccessStoresTheSourceBytes(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	data := filepath.Join(t.TempDir(), "data.bin")
	payload := make([]byte, 3<<20+17)
	for i := range payload {
		payload[i] = byte(i * 7 % 251)
	}
	if err := os.WriteFile(data, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	env.Apply(commandPlan("smoke", dir, fmt.Sprintf(`["cat", %q]`, data), ""))
	id := env.Trigger("smoke")
	r := env.Wait(id, time.Minute)
	if r.Phase != runs.Succeeded {
		t.Fatalf("run %s: %s (%s)", id, r.Phase, r.Error)
	}
	sum := sha256.Sum256(payload)
	if r.SHA256 != hex.EncodeToString(sum[:]) || r.Bytes != int64(len(payload)) {
		t.Fatalf("run recorded %d bytes sha %s, source has %d bytes sha %x", r.Bytes, r.SHA256, len(payload), sum)
	}
	out, code := harness.Run(t, dir, nil, "restore", "smoke/"+id, "--fs", dir, "--to", filepath.Join(dir, "restored"))
	if code != 0 {
		t.Fatalf("restore exit %d: %s", code, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "restored"))
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sum {
		t.Fatalf("restored bytes differ from the source")
	}
	want := []string{"backup.requested", "snapshot.started", "snapshot.completed", "step.completed", "filter.completed", "upload.completed", "verify.completed", "backup.succeeded"}
	got2 := harness.Types(env.Events(id))
	for _, w := range want {
		found := false
		for _, g := range got2 {
			found = found || g == w
		}
		if !found {
			t.Errorf("run events %v lack %s", got2, w)
		}
	}
}
