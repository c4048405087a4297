package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/backstream/backstream/pkg/secret"
)

// StderrTailSize is how much of a child's stderr an *Error keeps.
const StderrTailSize = 4 << 10

// Cmd is one child process. It is run from argv, never through a shell.
type Cmd struct {
	// Op names the child in errors; Argv[0] when empty.
	Op string
	// Argv is the program and its arguments. Argv[0] is looked up in BinDir
	// when BinDir is set, else in PATH. Never put a secret here.
	Argv []string
	// BinDir, when set, is the only place Argv[0] is looked up.
	BinDir string
	// Env is added to the parent's environment ("K=V"); secrets go here
	// (MYSQL_PWD, PGPASSWORD, REDISCLI_AUTH) or into a SecretFile.
	Env []string
	// Dir is the working directory.
	Dir    string
	Stdin  io.Reader
	Stdout io.Writer
	// Secrets are values scrubbed from the stderr tail besides those the
	// process's redactor knows (every resolved secret.Ref is there).
	Secrets []string
}

// Run runs c to its end. It returns nil only when the child exited 0 and all
// of its stdout reached c.Stdout. When ctx is cancelled or c.Stdout fails, it
// kills the child's whole process group (children of the child included) and
// returns an *Error. Every failure is an *Error carrying the exit status, if
// any, and the scrubbed stderr tail.
func Run(ctx context.Context, c Cmd) error {
	op := c.Op
	if op == "" && len(c.Argv) > 0 {
		op = c.Argv[0]
	}
	if len(c.Argv) == 0 {
		return &Error{Op: "run", Err: errors.New("empty argv")}
	}
	path, err := LookPath(c.BinDir, c.Argv[0])
	if err != nil {
		return &Error{Op: op, Err: err}
	}
	if err := ctx.Err(); err != nil {
		return &Error{Op: op, Err: err}
	}
	cmd := exec.Command(path, c.Argv[1:]...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Dir = c.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Redacted before the tail cuts it: a value the child prints is never
	// kept, not even the half of one the cut would leave.
	tail := &tailBuffer{max: StderrTailSize}
	stderr := secret.NewWriter(tail)
	cmd.Stderr = stderr
	cmd.WaitDelay = 5 * time.Second

	var stdin io.WriteCloser
	if c.Stdin != nil {
		if stdin, err = cmd.StdinPipe(); err != nil {
			return &Error{Op: op, Err: err}
		}
	}
	var stdout io.ReadCloser
	if c.Stdout != nil {
		if stdout, err = cmd.StdoutPipe(); err != nil {
			return &Error{Op: op, Err: err}
		}
		if f, ok := stdout.(*os.File); ok {
			growPipe(f)
		}
	}
	if err := cmd.Start(); err != nil {
		return &Error{Op: op, Err: err}
	}
	pgid := cmd.Process.Pid
	var once sync.Once
	kill := func() { once.Do(func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) }) }

	var wg sync.WaitGroup
	var inErr, outErr error
	stop := make(chan struct{})
	wg.Add(1)
	go func() { // owner of the cancel: kills the group when ctx ends first
		defer wg.Done()
		select {
		case <-ctx.Done():
			kill()
		case <-stop:
		}
	}()
	if stdin != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := io.Copy(stdin, c.Stdin)
			cerr := stdin.Close()
			if err == nil && cerr != nil && !errors.Is(cerr, os.ErrClosed) {
				err = cerr
			}
			// EPIPE or a pipe closed by Wait: the child stopped reading, and
			// its exit status says whether that was an error.
			if err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, os.ErrClosed) {
				// The input failed (a restore stream cut short): the child must
				// not finish as if the input were complete.
				inErr = fmt.Errorf("stdin: %w", err)
				kill()
			}
		}()
	}
	if stdout != nil {
		if _, err := io.Copy(c.Stdout, stdout); err != nil {
			outErr = fmt.Errorf("stdout: %w", err)
			kill()
		}
	}
	werr := cmd.Wait()
	close(stop)
	wg.Wait()
	_ = stderr.Close() // a tailBuffer's Write never fails

	e := &Error{Op: op, StderrTail: scrub(tail.String(), c.Secrets)}
	var xe *exec.ExitError
	if errors.As(werr, &xe) {
		if st := xe.ExitCode(); st >= 0 {
			e.ExitStatus = &st
		}
	}
	switch {
	case ctx.Err() != nil:
		e.Err = ctx.Err()
	case outErr != nil:
		e.Err = outErr
	case inErr != nil:
		e.Err = inErr
	case werr != nil:
		e.Err = werr
		if e.ExitStatus != nil {
			// The status is in the message already; keep ExitError for errors.As.
			e.Err = errExited{xe}
		}
	default:
		return nil
	}
	return e
}

// errExited keeps *exec.ExitError reachable by errors.As but prints nothing,
// since Error prints the exit status itself.
type errExited struct{ *exec.ExitError }

func (e errExited) Error() string { return "exited" }
func (e errExited) Unwrap() error { return e.ExitError }

// LookPath finds name in binDir when set, else in PATH. The error wraps
// exec.ErrNotFound for a missing binary.
func LookPath(binDir, name string) (string, error) {
	if binDir == "" || strings.ContainsRune(name, '/') {
		p, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("find %s: %w", name, err)
		}
		return p, nil
	}
	p := filepath.Join(binDir, name)
	fi, err := os.Stat(p)
	if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("find %s in %s: %w", name, binDir, exec.ErrNotFound)
	}
	return p, nil
}

// SecretFile writes content to a new 0600 file in the temp dir and returns
// its path and a function that removes it. Use it for secrets a child reads
// from a file (--defaults-extra-file), never from argv.
func SecretFile(pattern, content string) (string, func(), error) {
	f, err := os.CreateTemp("", pattern)
	if err != nil {
		return "", nil, fmt.Errorf("secret file: %w", err)
	}
	remove := func() { _ = os.Remove(f.Name()) }
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		remove()
		return "", nil, fmt.Errorf("secret file: %w", err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		remove()
		return "", nil, fmt.Errorf("secret file: %w", err)
	}
	if err := f.Close(); err != nil {
		remove()
		return "", nil, fmt.Errorf("secret file: %w", err)
	}
	return f.Name(), remove, nil
}

func scrub(s string, secrets []string) string {
	for _, v := range secrets {
		if v != "" {
			s = strings.ReplaceAll(s, v, secret.Mask)
		}
	}
	return s
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) >= t.max {
		t.buf = append(t.buf[:0], p[len(p)-t.max:]...)
		return n, nil
	}
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return n, nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// PasswordEnv passes the password ref names to a child as the environment
// variable name (never argv, where ps shows it). A zero ref passes nothing.
// The value is returned in secrets too, so Run scrubs it from stderr.
func PasswordEnv(ref secret.Ref, name string) (env, secrets []string, err error) {
	if ref.IsZero() {
		return nil, nil, nil
	}
	pw, err := ref.Resolve()
	if err != nil {
		return nil, nil, fmt.Errorf("password: %w", err)
	}
	return []string{name + "=" + pw}, []string{pw}, nil
}
