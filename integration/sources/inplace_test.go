package sources

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/source/sourcetest"
)

// TestRestoreIntoTheLiveSourceNeedsInPlace: `restore --into-source`
// without --target would overwrite the plan's live source. It is refused
// (exit 2, saying what to give) and leaves the live tree alone; with
// --in-place it says what it replaces and brings the backed-up tree back.
func TestRestoreIntoTheLiveSourceNeedsInPlace(t *testing.T) {
	r := newRig(t)
	src := t.TempDir()
	writeTree(t, src)
	want := sourcetest.ListTree(t, src)
	planFile := r.apply(t, "files-live", fmt.Sprintf("    type: files\n    files:\n      path: %s\n", src))
	run := r.backup(t, "files-live")
	r.mustSucceed(t, run)

	live := filepath.Join(src, "srv/run.sh")
	if err := os.WriteFile(live, []byte("changed after the backup\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"restore", "files-live/" + run.ID, "--plan-file", planFile, "--identity", r.identity, "--into-source"}
	out, code := harness.Run(t, r.dir, nil, args...)
	if code != 2 || !strings.Contains(out, "--in-place") || !strings.Contains(out, "--target") {
		t.Fatalf("restore --into-source without --target: exit %d, want 2 naming --target and --in-place:\n%s", code, out)
	}
	if b, _ := os.ReadFile(live); string(b) != "changed after the backup\n" {
		t.Fatalf("the refused restore touched the live tree: %q", b)
	}
	out, code = harness.Run(t, r.dir, nil, append(args, "--target", t.TempDir(), "--in-place")...)
	if code != 2 {
		t.Errorf("--target with --in-place: exit %d, want 2:\n%s", code, out)
	}

	out, code = harness.Run(t, r.dir, nil, append(args, "--in-place")...)
	if code != 0 || !strings.Contains(out, "IN PLACE") || !strings.Contains(out, "path "+src) {
		t.Fatalf("restore --in-place: exit %d, want 0 saying it replaces path %s:\n%s", code, src, out)
	}
	if got := sourcetest.ListTree(t, src); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the in-place restore did not bring the tree back:\nwant %q\ngot  %q", want, got)
	}
}
