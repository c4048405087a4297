package sources

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/plugins"
	"github.com/backstream/backstream/pkg/source/redis"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

// TestExamplesValidate decodes, defaults and validates every plan in
// examples/ with the real plugin registry, as `backstream plan apply` does.
func TestExamplesValidate(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(testenv.RepoRoot(t), "examples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			plans, err := plan.LoadPath(f)
			if err != nil {
				t.Fatal(err)
			}
			if len(plans) == 0 {
				t.Fatal("no plan in the file")
			}
			for _, p := range plans {
				p.Defaults()
				if err := p.Validate(plugins.Default()); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestExamplesRun runs the postgres, redis and files examples exactly as
// their comments tell a new user to: the real `backstream serve` in an empty
// working directory, `plan apply -f`, `trigger --wait`, and `restore
// --into-source` from the plan file alone; then it checks what came back.
// (examples/mariadb.yaml is not run: it sets read_only on the whole server,
// which other tests on this machine share.)
func TestExamplesRun(t *testing.T) {
	examples := filepath.Join(testenv.RepoRoot(t), "examples")
	dir := t.TempDir()
	port := testenv.FreePort(t)
	url := "nats://" + testenv.Addr(port)
	env := []string{"BACKUP_PASSPHRASE=example passphrase for the test", "BACKSTREAM_NATS=" + url}
	srv := harness.StartProcess(t, dir, env, "serve", "--data", filepath.Join(dir, "data"),
		"--embedded", testenv.Addr(port), "--listen", "", "--passphrase-env", "BACKUP_PASSPHRASE")
	srv.WaitOutput("backstream serving", 60*time.Second)
	run := func(t *testing.T, args ...string) string {
		t.Helper()
		out, code := harness.Run(t, dir, env, args...)
		if code != 0 {
			t.Fatalf("backstream %s: exit %d:\n%s", strings.Join(args, " "), code, out)
		}
		return out
	}
	backup := func(t *testing.T, file, name string) string {
		t.Helper()
		path := filepath.Join(examples, file)
		run(t, "plan", "apply", "-f", path)
		out := run(t, "trigger", name, "--wait")
		t.Logf("trigger %s: %s", name, lastLine(out))
		return path
	}

	t.Run("postgres.yaml", func(t *testing.T) {
		fresh := testenv.Postgres(t) // the example's `createdb postgres_restored`
		path := backup(t, "postgres.yaml", "postgres-db")
		run(t, "restore", "postgres-db/latest", "--plan-file", path, "--into-source", "--target", fresh.Name)
	})

	t.Run("redis.yaml", func(t *testing.T) {
		machine := testenv.Redis(t)
		key := machine.Prefix + "example"
		rcli(t, machine.Port, "SET", key, "kept by the example backup")
		path := backup(t, "redis.yaml", "redis-cache")
		target := filepath.Join(dir, "data", "redis-restored")
		if err := os.MkdirAll(target, 0o755); err != nil {
			t.Fatal(err)
		}
		run(t, "restore", "redis-cache/latest", "--plan-file", path, "--into-source", "--target", target)
		restored := testenv.StartRedisIn(t, target, redis.DumpFile)
		if got := rcli(t, restored.Port, "GET", key); got != "kept by the example backup" {
			t.Fatalf("restored server: GET %s = %q", key, got)
		}
	})

	t.Run("files.yaml", func(t *testing.T) {
		path := backup(t, "files.yaml", "zoneinfo")
		target := filepath.Join(dir, "data", "zoneinfo-restored")
		if err := os.MkdirAll(target, 0o755); err != nil {
			t.Fatal(err)
		}
		run(t, "restore", "zoneinfo/latest", "--plan-file", path, "--passphrase-env", "BACKUP_PASSPHRASE", "--into-source", "--target", target)
		var want []string
		for _, l := range sourcetest.ListTree(t, "/usr/share/zoneinfo") {
			name := strings.Fields(l)[0]
			if filepath.Base(name) != "localtime" && !strings.HasSuffix(name, ".tab") {
				want = append(want, l)
			}
		}
		if got := sourcetest.ListTree(t, target); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("restored tree has %d entries, /usr/share/zoneinfo without the excluded ones %d; first difference: %s", len(got), len(want), firstDiff(want, got))
		}
	})
}

func firstDiff(a, b []string) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("want %q, got %q", a[i], b[i])
		}
	}
	return "one list is a prefix of the other"
}

// TestDocsPlansValidate checks the YAML in docs/sources.md: every complete
// plan validates as it is, and every `source:` block validates inside a
// minimal plan, so the documentation never shows a block the plugins refuse.
func TestDocsPlansValidate(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "docs", "sources.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := yamlBlocks(string(doc))
	if len(blocks) < 8 {
		t.Fatalf("found %d yaml blocks in docs/sources.md, want the examples of every plugin", len(blocks))
	}
	for i, b := range blocks {
		text := b
		switch {
		case strings.HasPrefix(b, "apiVersion:"):
		case strings.HasPrefix(b, "source:"):
			text = "apiVersion: backstream.io/v1alpha1\nkind: Plan\nmetadata: {name: doc}\nspec:\n" + indent(b, "  ") +
				"  destinations: [{name: local, type: filesystem, filesystem: {path: ./data/backups}}]\n  alert: {expectEvery: 24h}\n"
		default:
			continue // a fragment of another kind (spec: …) explained in prose
		}
		t.Run(fmt.Sprintf("block %d", i), func(t *testing.T) {
			p, err := plan.Parse("docs/sources.md", []byte(text))
			if err != nil {
				t.Fatalf("%v\n%s", err, text)
			}
			p.Defaults()
			if err := p.Validate(plugins.Default()); err != nil {
				t.Fatalf("%v\n%s", err, text)
			}
		})
	}
}

// yamlBlocks returns the contents of the ```yaml fences of a Markdown text.
func yamlBlocks(md string) []string {
	var out []string
	for {
		i := strings.Index(md, "```yaml\n")
		if i < 0 {
			return out
		}
		md = md[i+len("```yaml\n"):]
		j := strings.Index(md, "```")
		if j < 0 {
			return out
		}
		out = append(out, md[:j])
		md = md[j+3:]
	}
}

func indent(s, prefix string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(s, "\n") {
		if l != "" {
			b.WriteString(prefix + l)
		}
	}
	return b.String()
}
