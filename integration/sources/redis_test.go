package sources

import (
	"bytes"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/source/redis"
	"github.com/backstream/backstream/pkg/testenv"
)

// redisArgs make an own server stream its snapshot at once and answer DEBUG.
var redisArgs = []string{"--enable-debug-command", "yes", "--repl-diskless-sync-delay", "0"}

func rcli(t *testing.T, port int, args ...string) string {
	t.Helper()
	out, err := exec.Command("redis-cli", append([]string{"-p", strconv.Itoa(port)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// seedRedis writes keys of every type, binary and unicode values, a key in
// a second database, one with a TTL, and n populated keys of 100 bytes.
func seedRedis(t *testing.T, port, n int) {
	t.Helper()
	rcli(t, port, "SET", "str", "Grüße 🚀 日本語")
	rcli(t, port, "HSET", "hash", "a", "1", "b", "zwei")
	rcli(t, port, "RPUSH", "list", "x", "y", "z")
	rcli(t, port, "SADD", "set", "m1", "m2")
	rcli(t, port, "ZADD", "zset", "1.5", "one", "2", "two")
	rcli(t, port, "XADD", "stream", "*", "field", "value")
	rcli(t, port, "SET", "ttl", "v", "EX", "100000")
	rcli(t, port, "-n", "3", "SET", "db3key", "in db 3")
	bin := exec.Command("redis-cli", "-p", strconv.Itoa(port), "-x", "SET", "binary")
	bin.Stdin = bytes.NewReader([]byte{0, 1, 2, 0xff, '\r', '\n', 0})
	if out, err := bin.CombinedOutput(); err != nil {
		t.Fatalf("set binary: %v %s", err, out)
	}
	rcli(t, port, "DEBUG", "POPULATE", strconv.Itoa(n), "pop", "100")
}

// redisDigest fingerprints a server's whole data set.
func redisDigest(t *testing.T, port int) string {
	t.Helper()
	return rcli(t, port, "DEBUG", "DIGEST") + " keys=" + rcli(t, port, "DBSIZE") + " db3=" + rcli(t, port, "-n", "3", "DBSIZE")
}

func redisBlock(addr, extra string) string {
	return fmt.Sprintf("    type: redis\n    redis:\n      addr: %s\n%s", addr, extra)
}

// TestRedis backs up an own Redis through the pipeline, restores the RDB
// through the restore stage into a directory, starts a new server on it
// and compares the data sets; then it fails dumps (wrong password, missing
// redis-cli, the server killed mid-dump) and checks that none leaves a backup.
func TestRedis(t *testing.T) {
	r := newRig(t)
	src := testenv.StartRedis(t, redisArgs...)
	seedRedis(t, src.Port, 50000)
	want := redisDigest(t, src.Port)

	t.Run("roundtrip", func(t *testing.T) {
		r.apply(t, "redis-full", redisBlock(src.Addr, ""))
		run := r.backup(t, "redis-full")
		r.mustSucceed(t, run)
		r.mustHaveBackup(t, run)
		t.Logf("backup %s: %d bytes of RDB, %d stored", run.ID, run.Bytes, run.StoredBytes)

		dir := t.TempDir()
		r.restoreStage(t, "redis-full", run.ID, dir)
		dst := testenv.StartRedisIn(t, dir, redis.DumpFile, redisArgs...)
		if got := redisDigest(t, dst.Port); got != want {
			t.Fatalf("restored server: %s, want %s", got, want)
		}
	})

	t.Run("failures", func(t *testing.T) {
		locked := testenv.StartRedis(t, "--requirepass", "the-right-password", "--repl-diskless-sync-delay", "0")
		const wrongPassword = "wrong-password-Kx3"
		t.Setenv("BS_SOURCES_REDIS_PW", wrongPassword)

		// A server with a large data set, killed with SIGKILL by a redis-cli
		// wrapper (of the --rdb call) once the first MiB of its snapshot went through.
		doomed := testenv.StartRedis(t, redisArgs...)
		seedRedis(t, doomed.Port, 300000)
		pid := strings.TrimSpace(strings.TrimPrefix(grepLine(rcli(t, doomed.Port, "INFO", "server"), "process_id:"), "process_id:"))
		killer := t.TempDir()
		script(t, killer, "redis-cli", fmt.Sprintf(`real=%s
case " $* " in
*" --rdb "*) "$real" "$@" | { head -c %d; kill -9 %s; cat; }; exit ${PIPESTATUS[0]} ;;
*) exec "$real" "$@" ;;
esac
`, lookPath(t, "redis-cli"), 1<<20, pid))

		tests := []struct {
			name       string
			block      string
			wantReason string
			wantTail   string
			wantBytes  int64
		}{
			{
				name:       "wrong password",
				block:      redisBlock(locked.Addr, "      password: {env: BS_SOURCES_REDIS_PW}\n"),
				wantReason: "redis-cli",
				wantTail:   "WRONGPASS",
			},
			{
				name:       "dump binary missing",
				block:      redisBlock(locked.Addr, "      binDir: "+emptyBinDir(t)+"\n"),
				wantReason: "find redis-cli in ",
			},
			{
				name:       "server killed mid-dump",
				block:      redisBlock(doomed.Addr, "      binDir: "+killer+"\n"),
				wantReason: "redis-cli --rdb: exit status 1",
				wantTail:   "I/O Error reading RDB payload",
				wantBytes:  1 << 20,
			},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				name := fmt.Sprintf("redis-fail-%d", i)
				r.apply(t, name, tt.block)
				f := r.mustFail(t, r.backup(t, name))
				checkFailure(t, f, tt.wantReason, tt.wantTail, tt.wantBytes)
				noSecret(t, f.events, wrongPassword)
			})
		}
		if out, err := exec.Command("redis-cli", "-p", strconv.Itoa(doomed.Port), "PING").CombinedOutput(); err == nil && strings.Contains(string(out), "PONG") {
			t.Errorf("the server that should have been killed mid-dump still answers")
		}
	})
}

// grepLine returns the first line of text starting with prefix.
func grepLine(text, prefix string) string {
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), prefix) {
			return strings.TrimSpace(l)
		}
	}
	return ""
}
