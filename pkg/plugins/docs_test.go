package plugins_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/plugins"
)

// docBlock is one ```yaml block of the docs.
type docBlock struct {
	file string
	line int
	text string
}

var yamlBlock = regexp.MustCompile("(?s)```yaml\n(.*?)```")

// docBlocks returns every yaml block of README.md and docs/*.md, and every
// plan of examples/ as one block.
func docBlocks(t *testing.T) []docBlock {
	t.Helper()
	root := filepath.Join("..", "..")
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join(root, "README.md"))
	var out []docBlock
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, m := range yamlBlock.FindAllStringSubmatchIndex(s, -1) {
			out = append(out, docBlock{file: f, line: strings.Count(s[:m[0]], "\n") + 1, text: s[m[2]:m[3]]})
		}
	}
	examples, err := filepath.Glob(filepath.Join(root, "examples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range examples {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, docBlock{file: f, line: 1, text: string(b)})
	}
	if len(out) < 20 {
		t.Fatalf("found %d yaml blocks; the docs have more", len(out))
	}
	return out
}

// placeholder marks a skeleton that shows a shape, not a value: `source:
// ...`, `{...}`, an elided recipient.
var placeholder = regexp.MustCompile(`\.\.\.|…`)

// fragmentBase is the plan a spec fragment of the docs is completed with:
// the fragment's own top-level keys replace these.
const fragmentBase = `apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: doc-fragment}
spec:
  source: {type: files, files: {path: /srv/data}}
  destinations: [{name: local, type: filesystem, filesystem: {path: /var/lib/backstream/backups}}]
`

// TestEveryYAMLBlockOfTheDocsIsAccepted: what the docs show is what `plan
// apply` accepts. A whole plan is parsed, defaulted and validated with the
// real registry; a fragment (a spec field such as `retention:` or
// `destinations:`, or the filters' `encryption:`) is put into a small plan
// and validated there; a skeleton with placeholders (... or …) must at
// least be YAML. A plan named broken-* shows a refusal and must be refused.
func TestEveryYAMLBlockOfTheDocsIsAccepted(t *testing.T) {
	reg := plugins.Default()
	for _, b := range docBlocks(t) {
		name := fmt.Sprintf("%s:%d", filepath.Base(b.file), b.line)
		t.Run(name, func(t *testing.T) {
			var top map[string]yaml.Node
			if err := yaml.Unmarshal([]byte(b.text), &top); err != nil {
				t.Fatalf("not YAML: %v\n%s", err, b.text)
			}
			if placeholder.MatchString(uncommented(b.text)) {
				return
			}
			text := b.text
			if _, whole := top["apiVersion"]; !whole {
				text = fragment(t, top, strings.Contains(b.text, "sql:"))
			}
			p, err := plan.Parse(name, []byte(text))
			if err == nil {
				p.Defaults()
				err = p.Validate(reg)
			}
			broken := p != nil && strings.HasPrefix(p.Name(), "broken")
			switch {
			case broken && err == nil:
				t.Errorf("plan %s is shown as refused, and is accepted", p.Name())
			case !broken && err != nil:
				t.Errorf("refused: %v\n%s", err, b.text)
			}
		})
	}
}

var comment = regexp.MustCompile(`(?m)(^|\s)#.*$`)

// uncommented is text without its YAML comments (an ellipsis in a comment
// is prose, not a placeholder).
func uncommented(text string) string { return comment.ReplaceAllString(text, "") }

// fragment completes a spec fragment into a plan (on a database source
// when it runs SQL).
func fragment(t *testing.T, top map[string]yaml.Node, sql bool) string {
	t.Helper()
	var base map[string]any
	if err := yaml.Unmarshal([]byte(fragmentBase), &base); err != nil {
		t.Fatal(err)
	}
	spec := base["spec"].(map[string]any)
	if sql {
		spec["source"] = map[string]any{"type": "postgres", "postgres": map[string]any{"host": "127.0.0.1", "databases": []string{"orders"}}}
	}
	if s, ok := top["spec"]; ok {
		var m map[string]any
		if err := s.Decode(&m); err != nil {
			t.Fatal(err)
		}
		for k, v := range m {
			spec[k] = v
		}
	}
	for k, n := range top {
		if k == "spec" {
			continue
		}
		var v any
		if err := n.Decode(&v); err != nil {
			t.Fatal(err)
		}
		if k == "encryption" {
			spec["filters"] = map[string]any{"encryption": v}
			continue
		}
		spec[k] = v
	}
	out, err := yaml.Marshal(base)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
