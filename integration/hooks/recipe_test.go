package hooks

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/testenv"
)

// docBlock returns the yaml code block between <!-- marker:begin --> and
// <!-- marker:end --> in docs/hooks.md.
func docBlock(t *testing.T, marker string) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "docs", "hooks.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "<!-- "+marker+":begin -->")
	block, _, ok2 := strings.Cut(rest, "<!-- "+marker+":end -->")
	if !ok || !ok2 {
		t.Fatalf("docs/hooks.md has no %s markers", marker)
	}
	block = strings.TrimSpace(block)
	block = strings.TrimPrefix(block, "```yaml")
	return strings.TrimSuffix(block, "```")
}

// TestFusionRecipeFromTheDocsIsAccepted applies the recipe of docs/hooks.md
// as written with `backstream plan apply`, and the broken one, which must
// be refused with every problem by its path.
func TestFusionRecipeFromTheDocsIsAccepted(t *testing.T) {
	url := bustest.Server(t).URL()
	dir := t.TempDir()

	good := filepath.Join(dir, "recipe.yaml")
	if err := os.WriteFile(good, []byte(docBlock(t, "recipe")), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := harness.Run(t, dir, nil, "plan", "apply", "-f", good, "--nats", url); code != 0 {
		t.Fatalf("plan apply of the documented recipe: exit %d:\n%s", code, out)
	}
	plans, err := plan.LoadPath(good)
	if err != nil || len(plans) != 1 {
		t.Fatalf("load %s: %d plans, %v", good, len(plans), err)
	}
	p := plans[0]
	steps := func(w string) string {
		var s []string
		for _, st := range p.Sequence(w) {
			s = append(s, st.String())
		}
		return strings.Join(s, " ")
	}
	if got, want := steps("backup"), "hook:db/lock snapshot hook:db/unlock hook:db/analyze"; got != want {
		t.Errorf("backup sequence %q, want %q (group is the data step)", got, want)
	}
	if got, want := steps("restore"), "hook:mariadb-pod-exec/lock restore hook:mariadb-pod-exec/unlock"; got != want {
		t.Errorf("restore sequence %q, want %q", got, want)
	}
	if h, _, _ := p.Op("mariadb-pod-exec", "lock"); h == nil || h.Type != plan.HookKubernetes || h.Kubernetes.LabelSelector != "app=mariadb" {
		t.Errorf("the Fusion exec hook with pod selection is %+v, want a kubernetes hook selecting app=mariadb", h)
	}

	broken := filepath.Join(dir, "broken.yaml")
	if err := os.WriteFile(broken, []byte(docBlock(t, "broken-recipe")), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := harness.Run(t, dir, nil, "plan", "apply", "-f", broken, "--nats", url)
	if code == 0 {
		t.Fatalf("the broken recipe was accepted:\n%s", out)
	}
	for _, want := range []string{
		`spec.hooks[0].ops[0].inverseOp: "unlok" is not an op of hook "mariadb-pod-exec"`,
		`spec.hooks[0].ops[1].inverseOp: an op cannot be its own inverse`,
		`spec.workflows[0].sequence[1].hook: "flush" is not an op of hook "mariadb-pod-exec"`,
		`spec.workflows[0].sequence[2].hook: "pod-exec" is not a hook of this plan`,
		`spec.workflows[0].sequence: must hold exactly one snapshot step`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan apply output lacks %q:\n%s", want, out)
		}
	}
	if out, _ := harness.Run(t, dir, nil, "plan", "list", "--nats", url); strings.Contains(out, "broken-recipe") {
		t.Errorf("the refused plan was stored:\n%s", out)
	}
}
