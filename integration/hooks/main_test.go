package hooks

import (
	"os"
	"testing"

	"github.com/backstream/backstream/pkg/supervise"
)

// TestMain lets this test binary be an op's supervisor, as backstream's
// main does, so the hook service run in-process runs ops as serve does.
func TestMain(m *testing.M) {
	supervise.Main()
	os.Exit(m.Run())
}
