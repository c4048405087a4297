package hook

import (
	"os"
	"testing"

	"github.com/backstream/backstream/pkg/supervise"
)

// TestMain lets this test binary be an op's supervisor, as backstream's
// main does, so exec ops run here as they run in serve.
func TestMain(m *testing.M) {
	supervise.Main()
	os.Exit(m.Run())
}
