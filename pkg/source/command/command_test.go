package command_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/command"
	"github.com/backstream/backstream/pkg/source/sourcetest"
)

// TestConformance backs a directory up with the system's tar and restores
// it with tar into a fresh directory.
func TestConformance(t *testing.T) {
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f.txt"), bytes.Repeat([]byte("data ü\n"), 10000), 0o644); err != nil {
		t.Fatal(err)
	}
	s := command.New(command.Config{Argv: []string{"tar", "-C", src, "-cf", "-", "."}})
	sourcetest.Run(t, sourcetest.Case{
		Source: s,
		Fresh: func(t *testing.T) (source.Source, source.RestoreOptions, func(t *testing.T)) {
			dst := t.TempDir()
			r := command.New(command.Config{Argv: []string{"true"}, RestoreArgv: []string{"tar", "-C", dst, "-xf", "-"}})
			return r, source.RestoreOptions{}, func(t *testing.T) {
				want, _ := os.ReadFile(filepath.Join(src, "f.txt"))
				got, err := os.ReadFile(filepath.Join(dst, "f.txt"))
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("restored file differs: %v", err)
				}
			}
		},
	})
}

// TestSecretsOnlyInEnvironment passes a secret through Env: the child sees
// it, and it never appears in the error's stderr tail.
func TestSecretsOnlyInEnvironment(t *testing.T) {
	t.Setenv("BS_TEST_CMD_SECRET", "hunter2")
	s := command.New(command.Config{
		Argv: []string{"sh", "-c", `printf '%s' "$TOKEN"; echo "bad token $TOKEN" >&2; exit 7`},
		Env:  map[string]secret.Ref{"TOKEN": {Env: "BS_TEST_CMD_SECRET"}},
	})
	var out bytes.Buffer
	_, err := s.Backup(context.Background(), &out)
	var se *source.Error
	if !errors.As(err, &se) || se.ExitStatus == nil || *se.ExitStatus != 7 {
		t.Fatalf("got %v, want exit status 7", err)
	}
	if out.String() != "hunter2" {
		t.Fatalf("child did not get the secret: %q", out.String())
	}
	if strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "bad token "+secret.Mask) {
		t.Fatalf("stderr tail not scrubbed: %q", err)
	}
}

func TestFailures(t *testing.T) {
	tests := []struct {
		name string
		cfg  command.Config
		want string
	}{
		{"binary missing", command.Config{Argv: []string{"no-such-dumper-bs"}}, "executable file not found"},
		{"secret missing", command.Config{Argv: []string{"true"}, Env: map[string]secret.Ref{"X": {Env: "BS_TEST_UNSET_VAR"}}}, "environment variable not set"},
		{"non-zero exit", command.Config{Argv: []string{"sh", "-c", "echo partial; echo 'dump failed' >&2; exit 2"}}, "exit status 2: stderr: dump failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := command.New(tt.cfg).Backup(context.Background(), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
	err := command.New(command.Config{Argv: []string{"true"}}).Restore(context.Background(), strings.NewReader("x"), source.RestoreOptions{})
	if !errors.Is(err, source.ErrUnsupported) {
		t.Fatalf("restore without restoreArgv: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct{ name, give, want string }{
		{"ok", "argv: [pg_dumpall]\nenv: {PGPASSWORD: {env: PW}}\ndir: /tmp", ""},
		{"no argv", "dir: /tmp", "argv: required"},
		{"bad env ref", "argv: [x]\nenv: {A: {}}", "env.A: set one of"},
		{"relative dir", "argv: [x]\ndir: tmp", "dir: must be absolute"},
		{"unknown field", "argv: [x]\nshell: true", "field shell not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := command.Plugin().Check(source.YAMLDecoder([]byte(tt.give)))
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}
