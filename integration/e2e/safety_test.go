package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/testenv"
)

// TestASecondServeOnTheSameDataFailsAtOnce: two serves on one --data
// would each run backups the other never sees; the second one fails at
// once naming the first's pid, and a serve whose NATS port is taken says
// so with its cause instead of waiting for readiness in vain.
func TestASecondServeOnTheSameDataFailsAtOnce(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	port := testenv.FreePort(t)
	first := harness.StartProcess(t, dir, nil, "serve", "--data", data, "--embedded", testenv.Addr(port), "--listen", "")
	first.WaitOutput("backstream serving", time.Minute)

	out, code := harness.Run(t, dir, nil, "serve", "--data", data, "--embedded", testenv.Addr(testenv.FreePort(t)), "--listen", "")
	if code != 1 || !strings.Contains(out, "store directory in use") || !strings.Contains(out, fmt.Sprintf("pid %d", first.PID())) {
		t.Fatalf("second serve on the same --data: exit %d, want 1 naming pid %d:\n%s", code, first.PID(), out)
	}

	out, code = harness.Run(t, dir, nil, "serve", "--data", filepath.Join(dir, "other"), "--embedded", testenv.Addr(port), "--listen", "")
	if code != 1 || !strings.Contains(out, "address already in use") {
		t.Fatalf("serve on a taken port: exit %d, want 1 with the cause:\n%s", code, out)
	}
}
