package e2e

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/testenv"
	"github.com/backstream/backstream/services/app"
)

// TestDeployManifestsUseRealFlagsAndServices checks what can be checked here
// of deploy/ (no Docker or Kubernetes on this machine): every file parses,
// and every `backstream serve` command line in it names existing services
// and flags.
func TestDeployManifestsUseRealFlagsAndServices(t *testing.T) {
	root := testenv.RepoRoot(t)
	help, _ := harness.Run(t, root, nil, "serve", "-h")
	var commands [][]string
	for _, file := range []string{"deploy/compose.yaml", "deploy/kubernetes/backstream.yaml"} {
		data, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var doc any
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			collectServe(doc, &commands)
		}
	}
	if len(commands) < 4 {
		t.Fatalf("found %d serve command lines in deploy/, want the control and data planes of both", len(commands))
	}
	for _, args := range commands {
		for i, a := range args {
			if !strings.HasPrefix(a, "--") {
				continue
			}
			if !strings.Contains(help, "-"+strings.TrimPrefix(a, "--")+" ") && !strings.Contains(help, "-"+strings.TrimPrefix(a, "--")+"\n") {
				t.Errorf("serve has no flag %s (command %v)", a, args)
			}
			if a == "--services" {
				if _, err := app.ParseServices(args[i+1]); err != nil {
					t.Errorf("%v: %v", args, err)
				}
			}
		}
	}
}

// collectServe finds string lists that start with "serve".
func collectServe(v any, out *[][]string) {
	switch x := v.(type) {
	case map[string]any:
		for _, e := range x {
			collectServe(e, out)
		}
	case []any:
		if len(x) > 0 {
			if s, ok := x[0].(string); ok && s == "serve" {
				args := make([]string, len(x))
				for i, e := range x {
					args[i], _ = e.(string)
				}
				*out = append(*out, args)
				return
			}
		}
		for _, e := range x {
			collectServe(e, out)
		}
	}
}
