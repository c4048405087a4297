// Package supervise runs an op's program so that it never outlives the
// process that started it (its owner): the program runs in a process group
// led by a small supervisor, a re-exec of the owner's own executable
// (`<exe> __supervise`), which kills the whole group as soon as the owner
// dies, however it dies (SIGKILL included).
//
// Why a supervisor process and not only the parent-death signal on the op:
// Pdeathsig reaches one process, the op's first one, and the op's children
// (`sh -c "sleep 30 & wait"`) would be orphaned and run on. Someone alive
// must kill the group after the owner is gone, and a process killed with
// SIGKILL cleans up nothing. The supervisor learns of its owner's death
// twice, independently: the parent-death signal (SIGTERM, caught) and the
// end of a pipe only the owner holds open (EOF once the kernel closes the
// owner's files). Either one makes it kill its group, itself included.
//
// The supervisor leads the group, so the group's id (its pid) is known the
// moment it starts, before the op's program runs: Run hands it to a
// callback that records it, and only then lets the op start. Whoever finds
// the owner dead later can thus check the group is gone (Alive) or kill
// what is left (Reap).
//
// It must never let the op run before the callback returned, never leave
// the op's group behind when the owner dies, and never kill a group it
// cannot prove is the op's (a reused pid is told apart by its start time).
package supervise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// command is the hidden first argument that makes an executable a
// supervisor. Nobody types it: Run passes it.
const command = "__supervise"

// exitNotStarted is the supervisor's exit code when its owner went away (or
// refused to record the group) before the op started.
const exitNotStarted = 125

// exitStartFailed is the supervisor's exit code when the op's program could
// not be started (as a shell reports a command it cannot run).
const exitStartFailed = 127

// capable is set by Main: this executable can be re-executed as a
// supervisor.
var capable atomic.Bool

// Main makes this executable a supervisor when it was started as one
// (`<exe> __supervise PATH ARGV...`): it then supervises the op and exits
// with the op's status, never returning. Otherwise it records that Run may
// re-exec this executable as a supervisor, and returns.
//
// Call it first thing in main, and in TestMain of a test binary whose tests
// run ops. A program that never calls it runs ops without a supervisor (see
// Run): the op's first process dies with the owner, its children may not.
func Main() {
	if len(os.Args) > 1 && os.Args[1] == command {
		os.Exit(supervisor(os.Args[2:]))
	}
	capable.Store(canSupervise)
}

// Group is where an op runs: its process group on one machine.
type Group struct {
	// Host is the machine's name, for people; Machine tells machines apart
	// exactly (see Machine).
	Host    string
	Machine string
	// PGID is the process group; its leader is the supervisor.
	PGID int
	// Start is the leader's start time (clock ticks since boot), which
	// tells a pid reused after the group died apart from the group.
	Start uint64
	// Supervised is false when the op runs without a supervisor (Main was
	// not called): the op leads its group itself.
	Supervised bool
}

// Spec is the op's program.
type Spec struct {
	// Argv is the program and its arguments, no shell; a name without a
	// slash is looked up in PATH.
	Argv []string
	// Dir is the working directory (empty: the owner's).
	Dir string
	// Env is the whole environment of the op.
	Env []string
	// Stdout and Stderr receive the op's output (nil: discarded).
	Stdout, Stderr io.Writer
	// WaitDelay bounds how long Run waits, once the op exited or was
	// killed, for processes it left behind to close its output (see
	// exec.Cmd.WaitDelay).
	WaitDelay time.Duration
}

// ErrNotStarted wraps the error of a started callback: the op never ran.
var ErrNotStarted = errors.New("op not started")

// Run runs the op to its end like exec.Cmd.Run and returns its process
// state (nil if it never ran) and error, or the callback's error wrapping
// ErrNotStarted.
//
// started is called once, after the op's process group exists and before
// the op's program runs, with the group to record; if it returns an error,
// the group is killed and the op never runs. When ctx ends, the whole
// group is killed with SIGKILL (the op's children die with it). When the
// calling process dies, the supervisor kills the group.
func Run(ctx context.Context, spec Spec, started func(Group) error) (*os.ProcessState, error) {
	if len(spec.Argv) == 0 {
		return nil, errors.New("command: empty")
	}
	path := spec.Argv[0]
	if !strings.Contains(path, "/") {
		// Looked up here, as exec.Command does, so a missing program
		// fails with the same error as without a supervisor.
		p, err := exec.LookPath(path)
		if err != nil {
			return nil, err
		}
		path = p
	}
	if !capable.Load() {
		return runDirect(ctx, spec, path, started)
	}

	// The parent-death signal follows the thread that forks, not the
	// process: this goroutine keeps its thread until the supervisor is
	// reaped, so no other goroutine can end that thread early.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	// The owner pipe: the supervisor reads a go byte, then EOF once this
	// process closes w or dies. Only this process holds w (os.Pipe sets
	// close-on-exec, so no other child inherits it).
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("supervise: %w", err)
	}
	defer w.Close()
	cmd := exec.CommandContext(ctx, selfExe, append([]string{command, path}, spec.Argv...)...)
	cmd.Args[0] = "backstream" // argv[0] of the supervisor, as ps shows it
	cmd.Dir, cmd.Env = spec.Dir, spec.Env
	cmd.Stdout, cmd.Stderr = spec.Stdout, spec.Stderr
	cmd.ExtraFiles = []*os.File{r}
	cmd.SysProcAttr = supervisorAttr()
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = spec.WaitDelay
	err = cmd.Start()
	r.Close()
	if err != nil {
		return nil, fmt.Errorf("supervise: %w", err)
	}
	g := Group{Host: hostname(), Machine: Machine(), PGID: cmd.Process.Pid, Supervised: true}
	g.Start, _ = startTime(g.PGID) // 0 if unreadable: Reap then trusts the pid alone
	if err := started(g); err != nil {
		_ = syscall.Kill(-g.PGID, syscall.SIGKILL)
		_ = cmd.Wait()
		return nil, fmt.Errorf("%w: %w", ErrNotStarted, err)
	}
	if _, err := w.Write([]byte{1}); err != nil {
		// The supervisor is gone already (killed by ctx, or by someone).
		_ = syscall.Kill(-g.PGID, syscall.SIGKILL)
	}
	err = cmd.Wait()
	return cmd.ProcessState, err
}

// selfExe is this process's own executable: /proc/self/exe runs the same
// binary even after an upgrade replaced or deleted the file.
const selfExe = "/proc/self/exe"

// runDirect runs the op without a supervisor: it leads its own group and
// gets the parent-death signal itself, so its first process dies with the
// owner, but its children are only killed by a timeout or by Reap. The
// group is recorded right after the op started, not before.
func runDirect(ctx context.Context, spec Spec, path string, started func(Group) error) (*os.ProcessState, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.CommandContext(ctx, path, spec.Argv[1:]...)
	cmd.Args[0] = spec.Argv[0]
	cmd.Dir, cmd.Env = spec.Dir, spec.Env
	cmd.Stdout, cmd.Stderr = spec.Stdout, spec.Stderr
	cmd.SysProcAttr = directAttr()
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = spec.WaitDelay
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	g := Group{Host: hostname(), Machine: Machine(), PGID: cmd.Process.Pid}
	g.Start, _ = startTime(g.PGID)
	if err := started(g); err != nil {
		_ = syscall.Kill(-g.PGID, syscall.SIGKILL)
		_ = cmd.Wait()
		return nil, fmt.Errorf("%w: %w", ErrNotStarted, err)
	}
	err := cmd.Wait()
	return cmd.ProcessState, err
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// supervisor is the supervisor process: args are the op's resolved path
// and its argv. Its stdin, stdout, stderr, working directory and
// environment are the op's; fd 3 is the owner pipe.
func supervisor(args []string) int {
	// The op's parent-death signal follows this thread (see Run).
	runtime.LockOSThread()
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "backstream: "+command+" is started by backstream itself")
		return 2
	}
	owner := os.NewFile(3, "owner")
	if owner == nil {
		fmt.Fprintln(os.Stderr, "backstream: "+command+": no owner pipe")
		return 2
	}
	syscall.CloseOnExec(3) // the op must not hold the owner pipe
	// SIGTERM is the parent-death signal Run sets; SIGINT and SIGHUP are
	// someone stopping the op's group: each ends the whole group.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)

	proceed := make(chan bool, 1)
	ownerGone := make(chan struct{})
	go func() {
		var b [1]byte
		n, _ := owner.Read(b[:])
		proceed <- n == 1
		for n == 1 {
			n, _ = owner.Read(b[:]) // EOF: the owner closed it or died
		}
		close(ownerGone)
	}()
	select {
	case ok := <-proceed:
		if !ok {
			return exitNotStarted
		}
	case <-stop:
		return exitNotStarted
	}

	cmd := exec.Command(args[0])
	cmd.Args = args[1:]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = opAttr()
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", args[1], err)
		return exitStartFailed
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-ownerGone:
		killOwnGroup()
	case <-stop:
		killOwnGroup()
	}
	return exitAs(cmd.ProcessState)
}

// killOwnGroup kills this process's group, this process included.
func killOwnGroup() {
	_ = syscall.Kill(0, syscall.SIGKILL)
	select {} // SIGKILL is on its way
}

// exitAs ends the supervisor the way the op ended, so its owner sees the
// op's exit code or signal.
func exitAs(st *os.ProcessState) int {
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return st.ExitCode()
	}
	sig := ws.Signal()
	switch sig {
	case syscall.SIGKILL, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP:
		// The signals the Go runtime lets end the process once no
		// handler is registered; others it ignores or turns into a crash
		// report in the op's output, so they end as 128+n, as a shell
		// reports them.
		signal.Reset(sig)
		_ = syscall.Kill(os.Getpid(), sig)
		time.Sleep(time.Second)
	}
	return 128 + int(sig)
}
