package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
)

// TestREADMECommandsWorkAsWritten runs what the README tells a new user to
// run, as written: `make run`'s serve command in a fresh directory, then
// every line of the "second terminal" block through sh, with nothing set up
// by hand — no credentials passed, no token copied. Only the addresses move
// to free ports (through $BACKSTREAM_NATS, which the README documents, and
// the API port in the curl line), and RUN-ID is filled in.
func TestREADMECommandsWorkAsWritten(t *testing.T) {
	root := testenv.RepoRoot(t)
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	serveLine, block := readmeCommands(t, string(readme))

	dir := t.TempDir()
	if out, err := exec.Command("cp", "-r", filepath.Join(root, "examples"), dir).CombinedOutput(); err != nil {
		t.Fatalf("copy examples: %v\n%s", err, out)
	}
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(harness.Binary(t), filepath.Join(dir, "bin", "backstream")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "data", "backups"), 0o755); err != nil {
		t.Fatal(err)
	}

	natsPort, apiPort := testenv.FreePort(t), testenv.FreePort(t)
	args := append(strings.Fields(serveLine)[1:], "--embedded", fmt.Sprintf("127.0.0.1:%d", natsPort), "--listen", fmt.Sprintf("127.0.0.1:%d", apiPort))
	serve := harness.StartProcess(t, dir, nil, args...)
	serve.WaitOutput("backup succeeded", 2*time.Minute)

	env := append(os.Environ(), fmt.Sprintf("BACKSTREAM_NATS=nats://127.0.0.1:%d", natsPort))
	runID := ""
	for _, line := range block {
		cmdline := strings.ReplaceAll(line, "127.0.0.1:4251", fmt.Sprintf("127.0.0.1:%d", apiPort))
		cmdline = strings.ReplaceAll(cmdline, "/tmp/demo.tar", filepath.Join(dir, "demo.tar"))
		if strings.Contains(cmdline, "RUN-ID") {
			if runID == "" {
				t.Fatalf("%q: no run id printed by the lines before it", line)
			}
			cmdline = strings.ReplaceAll(cmdline, "RUN-ID", runID)
		}
		cmd := exec.Command("sh", "-c", cmdline)
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("README line %q: %v\n%s", line, err, out)
		}
		text := string(out)
		if runID == "" {
			if m := regexp.MustCompile(`run ([0-9A-Z]{26}) of plan demo`).FindStringSubmatch(text); m != nil {
				runID = m[1]
			}
		}
		switch {
		case strings.Contains(line, "--follow") && !strings.Contains(text, "backup succeeded") && !strings.Contains(text, "phase Succeeded"),
			strings.Contains(line, "plan get demo") && !strings.Contains(text, "name: demo"),
			strings.Contains(line, "retention demo --dry-run") && !strings.Contains(text, "destination local"),
			strings.Contains(line, "trigger demo --wait") && !strings.Contains(text, "backup succeeded"),
			strings.Contains(line, "backstream runs") && !strings.Contains(text, "Succeeded"),
			strings.Contains(line, "curl") && !strings.Contains(text, `"phase"`):
			t.Errorf("README line %q printed:\n%s", line, text)
		}
	}
	if st, err := os.Stat(filepath.Join(dir, "demo.tar")); err != nil || st.Size() == 0 {
		t.Errorf("the README's restore left no demo.tar: %v", err)
	}

	// What scripts rely on: the run id alone on trigger's first line, and
	// one JSON document with -o json.
	for _, cmdline := range []string{"bin/backstream trigger demo | head -1", "bin/backstream trigger demo --wait -o json"} {
		cmd := exec.Command("sh", "-c", cmdline)
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v\n%s", cmdline, err, out)
		}
		if strings.HasSuffix(cmdline, "head -1") {
			if !regexp.MustCompile(`^[0-9A-Z]{26}\n$`).Match(out) {
				t.Errorf("%s printed %q, want the run id alone", cmdline, out)
			}
			continue
		}
		var doc struct {
			RunID string    `json:"runId"`
			Run   *runs.Run `json:"run"`
		}
		if err := json.Unmarshal(out, &doc); err != nil || doc.RunID == "" || doc.Run == nil || doc.Run.Phase != runs.Succeeded {
			t.Errorf("%s: %v, want {runId, run} of a succeeded run:\n%s", cmdline, err, out)
		}
	}

	// The README's list of commands: each line names a command whose help
	// has every flag the line shows, and no command is missing.
	help, _ := harness.Run(t, dir, nil, "--help")
	_, cmds, _ := strings.Cut(help, "Available Commands:\n")
	cmds, _, _ = strings.Cut(cmds, "\n\n")
	listed := map[string]bool{}
	for _, line := range readmeSynopsis(t, string(readme)) {
		var path []string
		for _, w := range strings.Fields(line)[1:] {
			if !regexp.MustCompile(`^[a-z][a-z-]*$`).MatchString(w) || (len(path) > 0 && w == "bash|zsh|fish|powershell") {
				break
			}
			path = append(path, w)
		}
		listed[path[0]] = true
		out, code := harness.Run(t, dir, nil, append(path, "--help")...)
		if code != 0 {
			t.Errorf("README %q: `backstream %s --help` exit %d:\n%s", line, strings.Join(path, " "), code, out)
			continue
		}
		for _, f := range regexp.MustCompile(`(?:^|[\s\[(])(--?[a-z][a-z0-9-]*)`).FindAllStringSubmatch(line, -1) {
			if !strings.Contains(out, f[1]+" ") && !strings.Contains(out, f[1]+",") {
				t.Errorf("README %q: `backstream %s` has no flag %s", line, strings.Join(path, " "), f[1])
			}
		}
	}
	for _, l := range strings.Split(cmds, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] != "help" && !listed[f[0]] {
			t.Errorf("README's command list lacks %q", f[0])
		}
	}
}

// readmeSynopsis returns the lines of the README's command list, comments
// removed.
func readmeSynopsis(t *testing.T, readme string) []string {
	t.Helper()
	_, after, ok := strings.Cut(readme, "## The command\n")
	if !ok {
		t.Fatal("README: no command list")
	}
	_, after, _ = strings.Cut(after, "```\n")
	block, _, _ := strings.Cut(after, "```")
	var lines []string
	for _, l := range strings.Split(block, "\n") {
		if i := strings.Index(l, "  #"); i >= 0 {
			l = l[:i]
		}
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "backstream ") {
			lines = append(lines, l)
		}
	}
	if len(lines) < 10 {
		t.Fatalf("README: command list has %d lines", len(lines))
	}
	return lines
}

// readmeCommands returns the serve command `make run` runs, as the README
// quotes it, and the lines of the block the README gives for a second
// terminal, comments removed.
func readmeCommands(t *testing.T, readme string) (serve string, lines []string) {
	t.Helper()
	m := regexp.MustCompile("runs `(backstream serve[^`]*)`").FindStringSubmatch(strings.ReplaceAll(readme, "\n", " "))
	if m == nil {
		t.Fatal("README: no `backstream serve …` that make run runs")
	}
	serve = m[1]
	_, after, ok := strings.Cut(readme, "in a second terminal:")
	if !ok {
		t.Fatal("README: no block for a second terminal")
	}
	_, after, _ = strings.Cut(after, "```sh\n")
	block, _, _ := strings.Cut(after, "```")
	for _, l := range strings.Split(block, "\n") {
		if i := strings.Index(l, "  #"); i >= 0 {
			l = l[:i]
		}
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) < 3 {
		t.Fatalf("README: second-terminal block has %d lines", len(lines))
	}
	return serve, lines
}
