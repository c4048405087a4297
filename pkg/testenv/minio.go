package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIOServer is a MinIO server a test owns, on loopback ports of its own
// with its data in a temp dir. It is stopped on the test's cleanup.
type MinIOServer struct {
	// Endpoint is "127.0.0.1:port" of the S3 API (plain http).
	Endpoint  string
	AccessKey string
	SecretKey string
	// Dir holds the server's data; it survives Stop and Start.
	Dir string

	t testing.TB
	p *managedProc
}

// MinIO starts bin/minio for t and waits until it serves requests
// (/minio/health/cluster answers 200, which implies /minio/health/live).
// Without the binary it calls Missing. Tests may call it in parallel: each
// server gets its own ports and directory.
func MinIO(t testing.TB) *MinIOServer {
	t.Helper()
	return MinIOWithCredentials(t, "backstream", "")
}

// MinIOWithCredentials is MinIO with the root user accessKey and secretKey
// (at least 3 and 8 bytes), for a test that plants the credentials as
// canaries; an empty secretKey gets one unique to the server's port.
func MinIOWithCredentials(t testing.TB, accessKey, secretKey string) *MinIOServer {
	t.Helper()
	bin := Bin(t, "minio")
	if bin == "" {
		Missing(t, "bin/minio (run scripts/install-tools.sh)")
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	var lastErr error
	// A port found free can be taken before minio binds it: try fresh ports.
	for range 3 {
		port, console := FreePort(t), FreePort(t)
		s := &MinIOServer{
			Endpoint:  Addr(port),
			AccessKey: accessKey,
			SecretKey: secretKey,
			Dir:       data,
			t:         t,
		}
		if s.SecretKey == "" {
			s.SecretKey = "backstream-secret-" + strconv.Itoa(port)
		}
		s.p = &managedProc{
			name: "minio",
			bin:  bin,
			args: []string{"server", "--quiet", "--address", Addr(port), "--console-address", Addr(console), data},
			env: []string{
				"MINIO_ROOT_USER=" + s.AccessKey,
				"MINIO_ROOT_PASSWORD=" + s.SecretKey,
				"MINIO_UPDATE=off",
				"MINIO_BROWSER=off",
			},
			log: filepath.Join(dir, "minio.log"),
			// /minio/health/live answers 200 before the object layer, IAM
			// and bucket metadata are up ("Server not initialized yet");
			// /minio/health/cluster waits for all three.
			ready:   "http://" + Addr(port) + "/minio/health/cluster",
			timeout: 90 * time.Second,
		}
		if lastErr = s.p.start(); lastErr == nil {
			s.p.register(t)
			return s
		}
		s.p.stop()
		s.p.dump(t)
	}
	t.Fatalf("minio: %v", lastErr)
	return nil
}

// Stop kills the server with SIGKILL, as a crash would, and waits for it to
// exit. Its data stays for Start.
func (s *MinIOServer) Stop() { s.p.stop() }

// Start restarts a stopped server on the same port and directory and waits
// until it serves. It fails the test that started the server if it cannot;
// call it from that test's goroutine.
func (s *MinIOServer) Start() {
	s.t.Helper()
	if err := s.p.start(); err != nil {
		s.t.Fatalf("minio restart: %v", err)
	}
}

// Client returns a minio-go client for the server.
func (s *MinIOServer) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(s.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Secure: false,
	})
	if err != nil {
		t.Fatalf("minio client: %v", err)
	}
	return c
}

// NewBucket creates the bucket name and returns name.
func (s *MinIOServer) NewBucket(t testing.TB, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Client(t).MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("minio make bucket %s: %v", name, err)
	}
	return name
}

// managedProc is a server process a test owns: started with its output kept in a
// log file (shown when the test fails), stopped with kill -9 on demand and
// on cleanup, restartable with the same arguments.
type managedProc struct {
	name string
	bin  string
	args []string
	env  []string
	log  string // path of the process output
	// ready is the URL that answers 2xx once the server serves.
	ready   string
	timeout time.Duration

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd exits
}

func (p *managedProc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s already running", p.name)
	}
	out, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s log: %w", p.name, err)
	}
	fmt.Fprintf(out, "==== %s start %s\n", time.Now().Format(time.RFC3339Nano), p.args)
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		out.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return p.waitReady(done)
}

func (p *managedProc) waitReady(done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.ready, nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return nil
			}
		}
		select {
		case <-done:
			return fmt.Errorf("%s exited before it served %s", p.name, p.ready)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s after %s", p.name, p.ready, p.timeout)
		case <-tick.C:
		}
	}
}

// stop kills the process (SIGKILL) and waits for it to exit. Stopping a
// stopped process does nothing.
func (p *managedProc) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.done
	p.cmd, p.done = nil, nil
}

// register stops the process on cleanup and prints its output if t failed.
func (p *managedProc) register(t testing.TB) {
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			p.dump(t)
		}
	})
}

func (p *managedProc) dump(t testing.TB) {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return
	}
	const max = 16 << 10
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	t.Logf("%s output (%s, last %d bytes):\n%s", p.name, p.log, len(b), b)
}
