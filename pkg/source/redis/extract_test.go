package redis_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/redis"
	"github.com/backstream/backstream/pkg/source/sourcetest"
	"github.com/backstream/backstream/pkg/testenv"
)

// TestExtract extracts a snapshot as dump.rdb, has redis-check-rdb accept
// it, and starts a server on it that holds the seeded data.
func TestExtract(t *testing.T) {
	check, err := exec.LookPath("redis-check-rdb")
	if err != nil {
		testenv.Missing(t, "redis-check-rdb")
	}
	src := testenv.StartRedis(t, "--enable-debug-command", "yes", "--repl-diskless-sync-delay", "0")
	seed(t, src.Port, 5000)
	want := digest(t, src.Port)
	var buf bytes.Buffer
	if _, err := redis.New(redis.Config{Addr: src.Addr}).Backup(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "out")
	names, err := redis.Plugin().ExtractTo(context.Background(), bytes.NewReader(buf.Bytes()), dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{redis.DumpFile}) {
		t.Fatalf("names %q", names)
	}
	out, err := exec.Command(check, filepath.Join(dir, redis.DumpFile)).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("RDB looks OK")) {
		t.Fatalf("redis-check-rdb: %v: %s", err, out)
	}
	dst := testenv.StartRedisIn(t, dir, redis.DumpFile, "--enable-debug-command", "yes")
	if got := digest(t, dst.Port); got != want {
		t.Fatalf("digest of a server on the extracted file %s, want %s", got, want)
	}

	t.Run("cut short", func(t *testing.T) {
		dir := t.TempDir()
		_, err := redis.Extract(context.Background(), bytes.NewReader(buf.Bytes()[:buf.Len()-3]), dir)
		if !errors.Is(err, source.ErrCorrupt) {
			t.Fatalf("got %v, want ErrCorrupt", err)
		}
		if got := sourcetest.ListTree(t, dir); len(got) != 0 {
			t.Fatalf("left %v", got)
		}
	})
	t.Run("existing dump.rdb", func(t *testing.T) {
		dir := t.TempDir()
		old := filepath.Join(dir, redis.DumpFile)
		if err := os.WriteFile(old, []byte("keep me"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := redis.Extract(context.Background(), bytes.NewReader(buf.Bytes()), dir); !errors.Is(err, os.ErrExist) {
			t.Fatalf("got %v, want os.ErrExist", err)
		}
		if b, _ := os.ReadFile(old); string(b) != "keep me" {
			t.Fatalf("dump.rdb replaced: %.20q", b)
		}
	})
}
