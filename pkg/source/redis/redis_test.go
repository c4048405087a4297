package redis_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/redis"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

// cli runs one redis-cli command against port and returns its output.
func cli(t *testing.T, port int, args ...string) string {
	t.Helper()
	argv := append([]string{"-p", strconv.Itoa(port)}, args...)
	out, err := exec.Command("redis-cli", argv...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// seed writes keys of every type, binary and unicode values, keys in a
// second database and keys with a TTL, plus n populated keys.
func seed(t *testing.T, port int, n int) {
	t.Helper()
	cli(t, port, "SET", "str", "Grüße 🚀")
	cli(t, port, "HSET", "hash", "a", "1", "b", "zwei")
	cli(t, port, "RPUSH", "list", "x", "y", "z")
	cli(t, port, "SADD", "set", "m1", "m2")
	cli(t, port, "ZADD", "zset", "1.5", "one", "2", "two")
	cli(t, port, "XADD", "stream", "*", "field", "value")
	cli(t, port, "SET", "ttl", "v", "EX", "100000")
	cli(t, port, "-n", "3", "SET", "db3key", "in db 3")
	bin := exec.Command("redis-cli", "-p", strconv.Itoa(port), "-x", "SET", "binary")
	bin.Stdin = bytes.NewReader([]byte{0, 1, 2, 0xff, '\r', '\n', 0})
	if out, err := bin.CombinedOutput(); err != nil {
		t.Fatalf("set binary: %v %s", err, out)
	}
	if n > 0 {
		cli(t, port, "DEBUG", "POPULATE", strconv.Itoa(n), "pop", "100")
	}
}

func digest(t *testing.T, port int) string {
	t.Helper()
	return cli(t, port, "DEBUG", "DIGEST") + " keys=" + cli(t, port, "DBSIZE") + " db3=" + cli(t, port, "-n", "3", "DBSIZE")
}

func TestConformance(t *testing.T) {
	src := testenv.StartRedis(t, "--enable-debug-command", "yes", "--repl-diskless-sync-delay", "0")
	seed(t, src.Port, 20000)
	want := digest(t, src.Port)
	s := redis.New(redis.Config{Addr: src.Addr})
	sourcetest.Run(t, sourcetest.Case{
		Source:            s,
		DetectsTruncation: true,
		Fresh: func(t *testing.T) (source.Source, source.RestoreOptions, func(t *testing.T)) {
			dir := filepath.Join(t.TempDir(), "data")
			return s, source.RestoreOptions{Target: dir, Create: true}, func(t *testing.T) {
				dst := testenv.StartRedisIn(t, dir, redis.DumpFile, "--enable-debug-command", "yes", "--repl-diskless-sync-delay", "0")
				if got := digest(t, dst.Port); got != want {
					t.Fatalf("restored digest %s, want %s", got, want)
				}
			}
		},
	})
}

// TestMachineRedis backs up the machine's Redis (read only, apart from the
// test's own prefixed key) and finds the key in the restored snapshot.
func TestMachineRedis(t *testing.T) {
	m := testenv.Redis(t)
	key := m.Prefix + "probe"
	cli(t, m.Port, "SET", key, "machine value")
	var buf bytes.Buffer
	desc, err := redis.New(redis.Config{Addr: m.Addr}).Backup(context.Background(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(desc["version"], "7.") {
		t.Fatalf("description %v", desc)
	}
	dir := t.TempDir()
	if err := redis.New(redis.Config{Addr: m.Addr}).Restore(context.Background(), &buf, source.RestoreOptions{Target: dir}); err != nil {
		t.Fatal(err)
	}
	own := testenv.StartRedisIn(t, dir, redis.DumpFile)
	if got := cli(t, own.Port, "GET", key); got != "machine value" {
		t.Fatalf("GET %s = %q", key, got)
	}
}

func TestRestoreRefusesOverwrite(t *testing.T) {
	src := testenv.StartRedis(t, "--repl-diskless-sync-delay", "0")
	seed(t, src.Port, 0)
	s := redis.New(redis.Config{Addr: src.Addr})
	var buf bytes.Buffer
	if _, err := s.Backup(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, redis.DumpFile), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Restore(context.Background(), bytes.NewReader(buf.Bytes()), source.RestoreOptions{Target: dir}); err == nil {
		t.Fatal("restore over an existing dump.rdb without clean returned nil")
	}
	if err := s.Restore(context.Background(), bytes.NewReader(buf.Bytes()), source.RestoreOptions{Target: dir, Clean: true}); err != nil {
		t.Fatal(err)
	}
	// A corrupt stream leaves the file and the directory as they were.
	bad := append([]byte(nil), buf.Bytes()...)
	bad[len(bad)/2] ^= 0xff
	if err := s.Restore(context.Background(), bytes.NewReader(bad), source.RestoreOptions{Target: dir, Clean: true}); !errors.Is(err, source.ErrCorrupt) {
		t.Fatalf("corrupt stream: got %v, want ErrCorrupt", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, redis.DumpFile)); !bytes.Equal(got, buf.Bytes()) {
		t.Fatal("a failed restore changed dump.rdb")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

func TestBackupFailures(t *testing.T) {
	ctx := context.Background()
	locked := testenv.StartRedis(t, "--requirepass", "right-pw", "--repl-diskless-sync-delay", "0")
	t.Setenv("BS_TEST_REDIS_WRONG", "definitely-wrong-pw")
	t.Setenv("BS_TEST_REDIS_RIGHT", "right-pw")
	tests := []struct {
		name string
		cfg  redis.Config
		want string
	}{
		{"wrong password", redis.Config{Addr: locked.Addr, Password: secret.Ref{Env: "BS_TEST_REDIS_WRONG"}}, "WRONGPASS"},
		{"no password", redis.Config{Addr: locked.Addr}, "NOAUTH"},
		{"binary missing", redis.Config{Addr: locked.Addr, BinDir: t.TempDir()}, "executable file not found"},
		{"server unreachable", redis.Config{Addr: testenv.Addr(testenv.FreePort(t))}, "onnect"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := redis.New(tt.cfg).Backup(ctx, &bytes.Buffer{})
			var se *source.Error
			if !errors.As(err, &se) {
				t.Fatalf("got %v, want *source.Error", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q lacks %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "definitely-wrong-pw") {
				t.Fatalf("error leaks the password: %q", err)
			}
		})
	}
	t.Run("right password", func(t *testing.T) {
		if _, err := redis.New(redis.Config{Addr: locked.Addr, Password: secret.Ref{Env: "BS_TEST_REDIS_RIGHT"}}).Backup(ctx, &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
	})
}

// TestServerKilledMidDump kills the test's own server after the first bytes
// of a large snapshot arrived: Backup must fail, never return nil.
func TestServerKilledMidDump(t *testing.T) {
	src := testenv.StartRedis(t, "--enable-debug-command", "yes", "--repl-diskless-sync-delay", "0")
	seed(t, src.Port, 300000) // ~40 MB, far more than the socket buffers hold
	var buf bytes.Buffer
	_, err := redis.New(redis.Config{Addr: src.Addr}).Backup(context.Background(), &sourcetest.CallbackAfter{W: &buf, F: src.Kill})
	if err == nil {
		t.Fatalf("backup of a killed server returned nil after %d bytes", buf.Len())
	}
	t.Logf("error after %d bytes: %v", buf.Len(), err)
}

func TestConfigValidate(t *testing.T) {
	tests := []struct{ name, give, want string }{
		{"ok", "addr: cache:6379\npassword: {env: REDIS_PW}\ntls: true\ncaCert: /etc/ca.pem", ""},
		{"missing addr", "tls: true", "addr: required"},
		{"addr without port", "addr: cache", "addr: want host:port"},
		{"ca without tls", "addr: c:1\ncaCert: /ca", "caCert: needs tls"},
		{"unknown field", "addr: c:1\ndb: 2", "field db not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := redis.Plugin().Check(source.YAMLDecoder([]byte(tt.give)))
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}
