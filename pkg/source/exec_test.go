package source_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/source"
)

func TestRunOK(t *testing.T) {
	var out bytes.Buffer
	err := source.Run(context.Background(), source.Cmd{
		Argv: []string{"sh", "-c", `cat; printf "$X"`}, Env: []string{"X=tail"},
		Stdin: strings.NewReader("head-"), Stdout: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "head-tail" {
		t.Fatalf("stdout %q", out.String())
	}
}

func TestRunFailures(t *testing.T) {
	tests := []struct {
		name       string
		cmd        source.Cmd
		wantStatus int // -1: no exit status
		wantInErr  string
		wantNot    string
	}{
		{
			name:       "exit status and scrubbed stderr",
			cmd:        source.Cmd{Op: "dump", Argv: []string{"sh", "-c", "echo 'access denied for s3cret' >&2; exit 3"}, Secrets: []string{"s3cret"}},
			wantStatus: 3, wantInErr: "dump: exit status 3", wantNot: "s3cret",
		},
		{
			name:       "missing binary",
			cmd:        source.Cmd{Argv: []string{"no-such-dump-binary"}},
			wantStatus: -1, wantInErr: "executable file not found",
		},
		{
			name:       "bin dir without the binary",
			cmd:        source.Cmd{Argv: []string{"sh"}, BinDir: os.TempDir()},
			wantStatus: -1, wantInErr: "executable file not found",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := source.Run(context.Background(), tt.cmd)
			var se *source.Error
			if !errors.As(err, &se) {
				t.Fatalf("got %v, want *source.Error", err)
			}
			gotStatus := -1
			if se.ExitStatus != nil {
				gotStatus = *se.ExitStatus
			}
			if gotStatus != tt.wantStatus {
				t.Fatalf("exit status %d, want %d", gotStatus, tt.wantStatus)
			}
			if !strings.Contains(err.Error(), tt.wantInErr) {
				t.Fatalf("error %q lacks %q", err, tt.wantInErr)
			}
			if tt.wantNot != "" && strings.Contains(err.Error(), tt.wantNot) {
				t.Fatalf("error %q leaks %q", err, tt.wantNot)
			}
		})
	}
}

func TestRunStderrTailBounded(t *testing.T) {
	err := source.Run(context.Background(), source.Cmd{Argv: []string{"sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x >&2; echo END >&2; exit 1"}})
	var se *source.Error
	if !errors.As(err, &se) {
		t.Fatalf("got %v", err)
	}
	if len(se.StderrTail) > source.StderrTailSize || !strings.HasSuffix(se.StderrTail, "END\n") {
		t.Fatalf("tail of %d bytes, ends %q", len(se.StderrTail), se.StderrTail[len(se.StderrTail)-10:])
	}
}

// killOnWrite cancels the run at the first byte, as a failing downstream would.
type failingWriter struct{ cancel func() }

func (f failingWriter) Write(p []byte) (int, error) {
	if f.cancel != nil {
		f.cancel()
		return len(p), nil
	}
	return 0, errors.New("downstream gone")
}

// TestRunKillsProcessGroup starts a child that forks a grandchild holding
// stdout; cancelling must kill both, or Run would never return.
func TestRunKillsProcessGroup(t *testing.T) {
	tests := []struct {
		name   string
		cancel bool
		want   error
	}{
		{"ctx cancel", true, context.Canceled},
		{"writer error", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			pidFile := t.TempDir() + "/pid"
			w := failingWriter{}
			if tt.cancel {
				w.cancel = cancel
			}
			err := source.Run(ctx, source.Cmd{
				Argv:   []string{"sh", "-c", `sleep 1000 & echo $! > "$0"; echo started; wait`, pidFile},
				Stdout: w,
			})
			if err == nil {
				t.Fatal("Run returned nil")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			b, rerr := os.ReadFile(pidFile)
			if rerr != nil {
				t.Fatal(rerr)
			}
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			// SIGKILL is delivered asynchronously: the grandchild may still be
			// scheduled for a moment, then linger as a zombie until init reaps
			// it. Poll (bounded) for it to be gone or a zombie.
			deadline := time.Now().Add(10 * time.Second)
			for {
				if err := syscall.Kill(pid, 0); err != nil {
					break
				}
				st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
				if strings.Contains(string(st), ") Z") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("grandchild %d still alive: %s", pid, st)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}
