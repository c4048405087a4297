package e2e

import (
	"regexp"
	"strings"
	"testing"

	"github.com/backstream/backstream/integration/harness"
)

// TestNewcomerFindsHelpOnEveryCommand does what a new user does with the
// binary: --help on every command and subcommand `backstream --help`
// lists (and theirs), version, and the first mistakes. Help exits 0 with a
// synopsis and an example; a mistake exits 2 and says where the help is.
func TestNewcomerFindsHelpOnEveryCommand(t *testing.T) {
	dir := t.TempDir()
	seen := map[string]bool{}
	var walk func(path []string)
	walk = func(path []string) {
		key := strings.Join(path, " ")
		if seen[key] {
			return
		}
		seen[key] = true
		out, code := harness.Run(t, dir, nil, append(append([]string{}, path...), "--help")...)
		if code != 0 {
			t.Errorf("backstream %s --help: exit %d, want 0:\n%s", key, code, out)
			return
		}
		if !strings.Contains(out, "Usage:\n  backstream "+key) || !strings.Contains(out, "Examples:\n  ") {
			t.Errorf("backstream %s --help lacks its synopsis or an example:\n%s", key, out)
		}
		_, list, ok := strings.Cut(out, "Available Commands:\n")
		if !ok {
			return
		}
		list, _, _ = strings.Cut(list, "\n\n")
		for _, line := range strings.Split(list, "\n") {
			if f := strings.Fields(line); len(f) > 0 {
				walk(append(append([]string{}, path...), f[0]))
			}
		}
	}
	walk(nil)
	for _, want := range []string{"serve", "plan apply", "plan get", "trigger", "restore", "retention simulate", "dlq show", "api-token create", "version", "completion bash"} {
		if !seen[want] {
			t.Errorf("`backstream --help` does not lead to %q (reached %d commands)", want, len(seen))
		}
	}
	if out, _ := harness.Run(t, dir, nil, "--help"); !strings.Contains(out, "Exit codes:") || !strings.Contains(out, "130") {
		t.Errorf("backstream --help lacks the exit codes:\n%s", out)
	}

	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, code := harness.Run(t, dir, nil, args...)
		if code != 0 || !regexp.MustCompile(`^backstream \S+ \(go1\.\d+`).MatchString(out) {
			t.Errorf("backstream %v: exit %d, want the version and the Go release:\n%s", args, code, out)
		}
	}

	mistakes := []struct {
		args []string
		want string
	}{
		{[]string{"runs", "-o", "xml"}, "want table, json, yaml"},
		{[]string{"backups", "--fs", dir, "-o", "csv"}, "want table, json, yaml"},
		{[]string{"trigger", "demo", "extra"}, `unexpected argument "extra"`},
		{[]string{"plan", "get", "demo", "other"}, `unexpected argument "other"`},
		{[]string{"plan", "lst"}, `unknown command "lst"`},
		{[]string{"restore", "demo/latest", "--fs", dir, "-plan-file", "p.yaml"}, "unknown shorthand flag"},
		{[]string{"trigger"}, "want PLAN"},
	}
	for _, m := range mistakes {
		out, code := harness.Run(t, dir, nil, m.args...)
		if code != 2 || !strings.Contains(out, m.want) || !strings.Contains(out, "--help`") {
			t.Errorf("backstream %v: exit %d, want 2 saying %q and where the help is:\n%s", m.args, code, m.want, out)
		}
	}
}
