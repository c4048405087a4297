package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// proc is a child server the bench owns: output in a log file, killed on
// stop. It is the non-test counterpart of pkg/testenv's managed process.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // exit status, set before done closes
}

// startProc starts bin with args and env, its output appended to logPath.
func startProc(name, bin string, args, env []string, logPath string) (*proc, error) {
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		out.Close()
		close(p.done)
	}()
	return p, nil
}

// pid is the child's process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop ends the child (SIGTERM, then SIGKILL after grace) and waits for it.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail is the last n bytes of the child's log, for error messages.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// waitFor polls ready every 100ms until it reports true, the child exits,
// ctx ends or timeout passes.
func (p *proc) waitFor(ctx context.Context, timeout time.Duration, what string, ready func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if ready() {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v) before %s:\n%s", p.name, p.err, what, p.tail(4096))
		case <-ctx.Done():
			return fmt.Errorf("%s: no %s within %s: %w\n%s", p.name, what, timeout, ctx.Err(), p.tail(4096))
		case <-tick.C:
		}
	}
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// minioServer is bin/minio on loopback with its data under dir.
type minioServer struct {
	*proc
	endpoint, access, secret string
}

// startMinIO starts bin/minio as pkg/testenv does and waits for
// /minio/health/cluster (liveness answers before IAM and the object layer
// are up). A port found free can be taken before minio binds it, so it
// tries fresh ports a few times.
func startMinIO(ctx context.Context, bin, dir string) (*minioServer, error) {
	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		console, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &minioServer{endpoint: addr(port), access: "backstream", secret: "backstream-bench-" + strconv.Itoa(port)}
		p, err := startProc("minio", bin,
			[]string{"server", "--quiet", "--address", addr(port), "--console-address", addr(console), filepath.Join(dir, "minio")},
			[]string{"MINIO_ROOT_USER=" + s.access, "MINIO_ROOT_PASSWORD=" + s.secret, "MINIO_UPDATE=off", "MINIO_BROWSER=off"},
			filepath.Join(dir, "minio.log"))
		if err != nil {
			return nil, err
		}
		s.proc = p
		client := &http.Client{Timeout: 2 * time.Second}
		health := "http://" + s.endpoint + "/minio/health/cluster"
		lastErr = p.waitFor(ctx, 90*time.Second, "health", func() bool {
			resp, err := client.Get(health)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode/100 == 2
		})
		if lastErr == nil {
			return s, nil
		}
		p.stop(0)
	}
	return nil, fmt.Errorf("minio: %w", lastErr)
}

// serveProc is one `backstream serve` child with its own store.
type serveProc struct {
	*proc
	natsURL string
	nkey    string // the admin credentials its embedded server generated
	pprof   string // address of its net/http/pprof listener, if any
}

// fetchProfile saves serve's profile kind ("profile?seconds=10", "heap")
// into path.
func (s *serveProc) fetchProfile(ctx context.Context, kind, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.pprof+"/debug/pprof/"+kind, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("fetch %s profile: %w", kind, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch %s profile: %s", kind, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("fetch %s profile: %w", kind, err)
	}
	return f.Close()
}

// startServe starts `backstream serve` on an embedded NATS at a free port,
// without the API, with identity for full verification and the given
// --data-plane (empty: serve's default), and waits for its "backstream
// serving" log line.
func startServe(ctx context.Context, bin, dir string, keyArgs []string, dataPlane string, pprof bool, env []string) (*serveProc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		args := append([]string{"serve", "--data", filepath.Join(dir, "data"), "--embedded", addr(port), "--listen", ""}, keyArgs...)
		if dataPlane != "" {
			args = append(args, "--data-plane", dataPlane)
		}
		pprofAddr := ""
		if pprof {
			pp, err := freePort()
			if err != nil {
				return nil, err
			}
			pprofAddr = addr(pp)
			args = append(args, "--pprof", pprofAddr)
		}
		p, err := startProc("backstream serve", bin, args, env, filepath.Join(dir, "serve.log"))
		if err != nil {
			return nil, err
		}
		lastErr = p.waitFor(ctx, time.Minute, "serving", func() bool {
			b, _ := os.ReadFile(p.log)
			return strings.Contains(string(b), "backstream serving")
		})
		if lastErr == nil {
			return &serveProc{proc: p, natsURL: "nats://" + addr(port), nkey: filepath.Join(dir, "data", "auth", "nats-admin.nk"), pprof: pprofAddr}, nil
		}
		p.stop(5 * time.Second)
	}
	return nil, lastErr
}

// peakRSS reads the high-water mark of pid's resident set (VmHWM) in bytes.
func peakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("peak rss: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				break
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("peak rss: no VmHWM line in /proc/PID/status")
}

// cpuTimes is a process's CPU use from /proc/PID/stat: its own, and that of
// its children it has waited for (serve's source command).
type cpuTimes struct{ self, children time.Duration }

func readCPU(pid int) (cpuTimes, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return cpuTimes{}, fmt.Errorf("cpu times: %w", err)
	}
	return parseStat(b)
}

// parseStat reads utime, stime, cutime and cstime from the text of
// /proc/PID/stat.
func parseStat(b []byte) (cpuTimes, error) {
	// The command name may hold spaces and parentheses; the fields follow
	// its last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return cpuTimes{}, errors.New("cpu times: no command name in /proc/PID/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return cpuTimes{}, errors.New("cpu times: short /proc/PID/stat")
	}
	var ticks [4]int64
	for k := range ticks {
		n, err := strconv.ParseInt(f[11+k], 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("cpu times: field %d: %w", 14+k, err)
		}
		ticks[k] = n
	}
	tick := func(n int64) time.Duration { return time.Duration(n) * time.Second / clockTicks }
	// f[0] is field 3 (state): utime, stime, cutime, cstime are fields 14..17.
	return cpuTimes{self: tick(ticks[0]) + tick(ticks[1]), children: tick(ticks[2]) + tick(ticks[3])}, nil
}

// clockTicks is USER_HZ, 100 on every Linux we run on.
const clockTicks = 100
