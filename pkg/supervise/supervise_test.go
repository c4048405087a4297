package supervise

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ownerEnv makes the test binary an owner: it runs the op given in
// its value (unit-separator-separated) under Run, prints its group's id and
// blocks until killed.
const ownerEnv = "SUPERVISE_TEST_OWNER"

func TestMain(m *testing.M) {
	Main()
	if os.Getenv(ownerEnv) != "" {
		os.Exit(owner(strings.Split(os.Getenv(ownerEnv), "\x1f")))
	}
	os.Exit(m.Run())
}

func owner(argv []string) int {
	_, err := Run(context.Background(), Spec{Argv: argv, Env: os.Environ(), Stdout: os.Stderr, Stderr: os.Stderr}, func(g Group) error {
		fmt.Printf("%d %d\n", g.PGID, g.Start)
		return nil
	})
	fmt.Fprintln(os.Stderr, "owner: op ended:", err)
	select {}
}

// startOwner starts the test binary as an owner of argv and returns it with
// the group it printed.
func startOwner(t *testing.T, argv ...string) (*exec.Cmd, Group) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), ownerEnv+"="+strings.Join(argv, "\x1f"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("owner printed no group: %v\n%s", err, stderr.String())
	}
	g := Group{Machine: Machine()}
	if _, err := fmt.Sscan(line, &g.PGID, &g.Start); err != nil {
		t.Fatalf("owner line %q: %v", line, err)
	}
	return cmd, g
}

// waitMembers waits until group g has at least n running processes.
func waitMembers(t *testing.T, g Group, n int) []int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, err := Members(g)
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) >= n {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("group %d has %d processes, want %d", g.PGID, len(pids), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// goneWithin fails unless group g has no running process within d, and
// returns how long that took.
func goneWithin(t *testing.T, g Group, d time.Duration) time.Duration {
	t.Helper()
	begin := time.Now()
	for {
		pids, err := Members(g)
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) == 0 {
			return time.Since(begin)
		}
		if time.Since(begin) > d {
			t.Fatalf("group %d still has %v after %s", g.PGID, pids, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestOwnerKilledKillsTheOpsWholeGroup: the owner dies by SIGKILL while
// the op and its children run; the supervisor kills the group, so nothing
// of the op runs a second later and its effect never happens.
func TestOwnerKilledKillsTheOpsWholeGroup(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "marker")
	// sh, a subshell that would touch the marker, a nested sh and its
	// sleep: 4 processes besides the supervisor.
	script := fmt.Sprintf("(sleep 2; touch %s) & sh -c 'sleep 30 & wait' & wait", marker)
	owner, g := startOwner(t, "sh", "-c", script)
	waitMembers(t, g, 5)
	began := time.Now()
	if err := owner.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	took := goneWithin(t, g, time.Second)
	t.Logf("group %d gone %s after its owner was killed", g.PGID, took.Round(time.Millisecond))
	time.Sleep(time.Until(began.Add(2500 * time.Millisecond)))
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the op took effect after its owner died (marker: %v)", err)
	}
}

// TestOpStartsOnlyAfterItsGroupIsRecorded: the callback sees the group
// before the op's program ran, and an error from it means the op never
// runs.
func TestOpStartsOnlyAfterItsGroupIsRecorded(t *testing.T) {
	tests := []struct {
		name    string
		refuse  error
		wantRan bool
	}{
		{"recorded", nil, true},
		{"record refused", errors.New("step no longer ours"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			marker := filepath.Join(t.TempDir(), "marker")
			var seen Group
			_, err := Run(context.Background(), Spec{Argv: []string{"touch", marker}}, func(g Group) error {
				seen = g
				time.Sleep(200 * time.Millisecond) // the op would have run by now
				if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the op ran before its group was recorded")
				}
				return tt.refuse
			})
			if tt.refuse != nil && (!errors.Is(err, ErrNotStarted) || !errors.Is(err, tt.refuse)) {
				t.Fatalf("err = %v, want ErrNotStarted wrapping %v", err, tt.refuse)
			}
			if tt.refuse == nil && err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(marker); (err == nil) != tt.wantRan {
				t.Fatalf("op ran: %v, want %v", err == nil, tt.wantRan)
			}
			if !seen.Supervised || seen.PGID <= 1 || seen.Start == 0 || seen.Machine != Machine() {
				t.Fatalf("group %+v", seen)
			}
			goneWithin(t, seen, time.Second)
		})
	}
}

// TestRunReportsTheOpsOwnStatus: the supervisor is invisible in exit codes,
// signals, output and start errors.
func TestRunReportsTheOpsOwnStatus(t *testing.T) {
	garbage := filepath.Join(t.TempDir(), "garbage")
	if err := os.WriteFile(garbage, []byte{0, 1, 2, 3}, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		argv     []string
		wantCode int
		wantErr  string
		wantOut  string
	}{
		{"success", []string{"sh", "-c", "echo out; echo err >&2"}, 0, "", "out\nerr\n"},
		{"exit code", []string{"sh", "-c", "exit 3"}, 3, "exit status 3", ""},
		{"terminated", []string{"sh", "-c", "kill -TERM $$"}, -1, "signal: terminated", ""},
		{"interrupted", []string{"sh", "-c", "kill -INT $$"}, -1, "signal: interrupt", ""},
		{"hung up", []string{"sh", "-c", "kill -HUP $$"}, -1, "signal: hangup", ""},
		{"other signal", []string{"sh", "-c", "kill -USR1 $$"}, 128 + 10, "exit status 138", ""},
		{"killed", []string{"sh", "-c", "kill -KILL $$"}, -1, "signal: killed", ""},
		{"environment and argv0", []string{"sh", "-c", `echo "$0 $SUPERVISE_X"`}, 0, "", "sh x-value\n"},
		{"missing program", []string{"no-such-program-here"}, 0, "executable file not found", ""},
		{"not a program", []string{garbage}, 127, "exit status 127", garbage + ": fork/exec " + garbage + ": exec format error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "hung up" && signal.Ignored(syscall.SIGHUP) {
				// Under nohup the supervisor and the op inherit SIGHUP
				// ignored, and the supervisor cannot die of it to pass
				// it on: it exits 128+1, as a shell would.
				t.Skip("SIGHUP is ignored in this process (nohup?): the supervisor cannot die of it")
			}
			var out bytes.Buffer
			st, err := Run(context.Background(), Spec{Argv: tt.argv, Env: append(os.Environ(), "SUPERVISE_X=x-value"), Stdout: &out, Stderr: &out}, func(Group) error { return nil })
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if st != nil && st.ExitCode() != tt.wantCode {
				t.Errorf("exit code %d, want %d", st.ExitCode(), tt.wantCode)
			}
			if !strings.Contains(out.String(), tt.wantOut) {
				t.Errorf("output %q, want %q in it", out.String(), tt.wantOut)
			}
		})
	}
}

// TestContextEndKillsTheGroup: a timeout kills the op and its children at
// once.
func TestContextEndKillsTheGroup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var g Group
	begin := time.Now()
	_, err := Run(ctx, Spec{Argv: []string{"sh", "-c", "sleep 30 & sleep 30; wait"}, WaitDelay: time.Second}, func(got Group) error { g = got; return nil })
	if err == nil || ctx.Err() == nil {
		t.Fatalf("err = %v", err)
	}
	if took := time.Since(begin); took > 2*time.Second {
		t.Errorf("Run returned %s after the timeout", took)
	}
	goneWithin(t, g, time.Second)
}

// TestReapKillsWhatTheOpLeftAndNothingElse: Reap kills a group's leftover
// processes; a group whose leader pid was reused is not touched.
func TestReapKillsWhatTheOpLeftAndNothingElse(t *testing.T) {
	leftover := exec.Command("sh", "-c", "sleep 30 & sleep 30 & wait")
	leftover.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := leftover.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = leftover.Wait(); close(done) }()
	t.Cleanup(func() { _ = syscall.Kill(-leftover.Process.Pid, syscall.SIGKILL); <-done })
	start, err := startTime(leftover.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	g := Group{Machine: Machine(), PGID: leftover.Process.Pid, Start: start}
	waitMembers(t, g, 3)

	reused := g
	reused.Start++
	if pids, err := Members(reused); err != nil || len(pids) != 0 {
		t.Fatalf("a reused leader pid: members %v %v, want none", pids, err)
	}
	if err := Reap(context.Background(), reused); err != nil {
		t.Fatal(err)
	}
	if pids, _ := Members(g); len(pids) < 3 {
		t.Fatalf("Reap of a reused pid killed the group: %v left", pids)
	}
	other := g
	other.Machine = "another/boot"
	if err := Reap(context.Background(), other); !errors.Is(err, ErrOtherMachine) {
		t.Fatalf("Reap on another machine: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := Reap(ctx, g); err != nil {
		t.Fatal(err)
	}
	goneWithin(t, g, 0)
}

// TestWithoutMainTheOpStillRuns: a program that never called Main runs
// ops directly in a group of their own.
func TestWithoutMainTheOpStillRuns(t *testing.T) {
	capable.Store(false)
	t.Cleanup(func() { capable.Store(true) })
	var out bytes.Buffer
	var g Group
	st, err := Run(context.Background(), Spec{Argv: []string{"sh", "-c", "echo $$"}, Stdout: &out}, func(got Group) error { g = got; return nil })
	if err != nil || st.ExitCode() != 0 {
		t.Fatal(err)
	}
	if g.Supervised || strconv.Itoa(g.PGID) != strings.TrimSpace(out.String()) {
		t.Fatalf("group %+v, op pid %s: the op should lead its group", g, out.String())
	}
}

// TestSupervisorSignalledKillsTheGroup: SIGTERM to the supervisor alone —
// the parent-death signal it gets when its owner's thread dies — ends the
// op's whole group, as the owner pipe's end does.
func TestSupervisorSignalledKillsTheGroup(t *testing.T) {
	groups := make(chan Group, 1)
	ended := make(chan error, 1)
	go func() {
		_, err := Run(context.Background(), Spec{Argv: []string{"sh", "-c", "sleep 30 & sh -c 'sleep 30 & wait' & wait"}, WaitDelay: time.Second},
			func(g Group) error { groups <- g; return nil })
		ended <- err
	}()
	g := <-groups
	waitMembers(t, g, 5)
	if err := syscall.Kill(g.PGID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	took := goneWithin(t, g, time.Second)
	select {
	case err := <-ended:
		if err == nil || !strings.Contains(err.Error(), "signal: killed") {
			t.Errorf("Run returned %v, want the op killed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the group died")
	}
	t.Logf("group gone %s after its supervisor got SIGTERM", took.Round(time.Millisecond))
}
