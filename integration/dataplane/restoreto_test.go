package dataplane

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/runs"
)

// TestRestoreIntoADeviceOrAPipe: `restore --to` a character device or a
// named pipe writes into it and leaves it what it was; a directory or a
// socket is refused before a byte is read. A restore run as root `--to
// /dev/null` once renamed its checked file over the device node, and every
// program on the machine writing to /dev/null failed after it. The device
// here is a private null device (the same major and minor as /dev/null),
// so that a regression costs this test's directory, not the machine's.
// A regular file that exists is replaced only with --overwrite.
func TestRestoreIntoADeviceOrAPipe(t *testing.T) {
	keys := newKeyring(t)
	env := harness.Start(t, harness.Options{})
	storeDir := t.TempDir()
	src, digest := writeSource(t, 3*chunk+17)
	env.Apply(plan("into", catSource(src), "zstd",
		fmt.Sprintf("encryption: {type: aes-256-gcm, recipients: [%s]}", keys.identity.Recipient()), fsDest(storeDir), ""))
	id := env.Trigger("into")
	if r := env.Wait(id, time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("run: %s", r.Error)
	}
	restoreTo := func(t *testing.T, target string, extra ...string) (string, int) {
		t.Helper()
		return harness.Run(t, storeDir, nil, append([]string{"restore", "into/" + id, "--fs", storeDir, "--identity", keys.idFile, "--to", target}, extra...)...)
	}
	// kept says target is still of type want, and nothing was left beside it.
	kept := func(t *testing.T, target string, want fs.FileMode) {
		t.Helper()
		fi, err := os.Lstat(target)
		if err != nil || fi.Mode().Type() != want {
			t.Fatalf("%s after the restore: %v (%v), want a %v", target, fi.Mode(), err, want)
		}
		if left, _ := filepath.Glob(filepath.Join(filepath.Dir(target), ".*partial*")); len(left) != 0 {
			t.Errorf("left beside it: %v", left)
		}
	}

	t.Run("a file that exists is kept without --overwrite", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			make func(path string) error
		}{
			{"regular file", func(p string) error { return os.WriteFile(p, []byte("last night's dump\n"), 0o600) }},
			{"dangling link", func(p string) error { return os.Symlink(filepath.Join(filepath.Dir(p), "gone"), p) }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				target := filepath.Join(t.TempDir(), "orders.dump")
				if err := tc.make(target); err != nil {
					t.Fatal(err)
				}
				before, _ := os.Lstat(target)
				out, code := restoreTo(t, target)
				if code == 0 || !strings.Contains(out, target) || !strings.Contains(out, "give --overwrite to replace it") {
					t.Fatalf("restore over an existing %s exited %d; want a refusal naming it and --overwrite:\n%s", tc.name, code, out)
				}
				if strings.Contains(out, "reading backup") {
					t.Errorf("the refusal came after the backup was opened:\n%s", out)
				}
				kept(t, target, before.Mode().Type())
				if tc.name == "regular file" {
					if b, _ := os.ReadFile(target); string(b) != "last night's dump\n" {
						t.Errorf("the file holds %q after the refused restore", b)
					}
				}
			})
		}
	})

	t.Run("--overwrite replaces a file that exists", func(t *testing.T) {
		target := filepath.Join(t.TempDir(), "orders.dump")
		if err := os.WriteFile(target, []byte("last night's dump\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, code := restoreTo(t, target, "--overwrite"); code != 0 {
			t.Fatalf("restore --overwrite exited %d:\n%s", code, out)
		}
		kept(t, target, 0)
		if got := fileSHA256(t, target); got != digest {
			t.Errorf("%s holds sha256 %s, want the source's %s", target, got, digest)
		}
	})

	t.Run("a file that does not exist is made", func(t *testing.T) {
		target := filepath.Join(t.TempDir(), "orders.dump")
		if out, code := restoreTo(t, target); code != 0 {
			t.Fatalf("restore exited %d:\n%s", code, out)
		}
		kept(t, target, 0)
		if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
			t.Errorf("restored file mode %v, want 0600 (a backup holds the data's secrets)", fi.Mode().Perm())
		}
		if got := fileSHA256(t, target); got != digest {
			t.Errorf("%s holds sha256 %s, want the source's %s", target, got, digest)
		}
	})

	t.Run("--overwrite goes with --to FILE", func(t *testing.T) {
		out, code := restoreTo(t, "-", "--overwrite")
		if code != 2 || !strings.Contains(out, "--overwrite goes with --to FILE") {
			t.Errorf("restore --to - --overwrite exited %d; want a usage error:\n%s", code, out)
		}
	})

	t.Run("a character device", func(t *testing.T) {
		dev := filepath.Join(t.TempDir(), "null")
		if err := unix.Mknod(dev, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			if errors.Is(err, unix.EPERM) {
				t.Skip("making a device node needs root (CAP_MKNOD)")
			}
			t.Fatal(err)
		}
		if out, code := restoreTo(t, dev); code != 0 {
			t.Fatalf("restore into a null device exited %d:\n%s", code, out)
		}
		kept(t, dev, fs.ModeDevice|fs.ModeCharDevice)
	})

	t.Run("a named pipe", func(t *testing.T) {
		fifo := filepath.Join(t.TempDir(), "loader")
		if err := unix.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		read := make(chan string, 1)
		go func() {
			f, err := os.Open(fifo) // waits for the restore to open it
			if err != nil {
				read <- err.Error()
				return
			}
			defer f.Close()
			h := sha256.New()
			_, _ = io.Copy(h, f)
			read <- hex.EncodeToString(h.Sum(nil))
		}()
		if out, code := restoreTo(t, fifo); code != 0 {
			t.Fatalf("restore into a named pipe exited %d:\n%s", code, out)
		}
		select {
		case got := <-read:
			if got != digest {
				t.Errorf("the pipe's reader got sha256 %s, want the source's %s", got, digest)
			}
		case <-time.After(30 * time.Second):
			// Its reader still waits for a writer: the restore went elsewhere.
			t.Fatal("the restore ended and nothing was written into the pipe")
		}
		kept(t, fifo, fs.ModeNamedPipe)
	})

	t.Run("a named pipe is not opened without a byte to write", func(t *testing.T) {
		// A loader reading the pipe (mariadb < FIFO) would take a restore
		// that found nothing, or only copies that failed, for an empty
		// dump, and succeed.
		object := filepath.Join(storeDir, "into", id+".bsf")
		for _, tc := range []struct {
			name, ref string
			spoil     func(t *testing.T)
		}{
			{name: "no such backup", ref: "into/01ARZ3NDEKTSV4RRFFQ69G5FAV", spoil: func(*testing.T) {}},
			{name: "its one copy bad from the first frame", ref: "into/" + id, spoil: func(t *testing.T) {
				b, err := os.ReadFile(object)
				if err != nil {
					t.Fatal(err)
				}
				bad := slices.Clone(b)
				bad[len(bad)/2] ^= 0xff // inside its one frame (frames hold 8 MiB)
				if err := os.WriteFile(object, bad, 0o600); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = os.WriteFile(object, b, 0o600) })
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tc.spoil(t)
				fifo := filepath.Join(t.TempDir(), "loader")
				if err := unix.Mkfifo(fifo, 0o600); err != nil {
					t.Fatal(err)
				}
				opened := make(chan struct{})
				go func() {
					f, err := os.Open(fifo) // returns once a writer opens it
					if err == nil {
						f.Close()
					}
					close(opened)
				}()
				out, code := harness.Run(t, storeDir, nil, "restore", tc.ref, "--fs", storeDir, "--identity", keys.idFile, "--to", fifo)
				if code == 0 {
					t.Fatalf("restore exited 0:\n%s", out)
				}
				select {
				case <-opened:
					t.Errorf("the restore opened the pipe without a byte to write:\n%s", out)
				case <-time.After(time.Second):
				}
				// Let the reader go, if it still waits (non-blocking: with
				// no reader left, the open fails at once).
				if f, err := os.OpenFile(fifo, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
				<-opened
			})
		}
	})

	for _, tc := range []struct {
		name, want string
		make       func(path string) error
		mode       fs.FileMode
	}{
		{"a directory", "a directory", func(p string) error { return os.Mkdir(p, 0o700) }, fs.ModeDir},
		{"a socket", "a socket", func(p string) error {
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Bind(fd, &unix.SockaddrUnix{Name: p})
		}, fs.ModeSocket},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "target")
			if err := tc.make(target); err != nil {
				t.Fatal(err)
			}
			out, code := restoreTo(t, target)
			if code == 0 || !strings.Contains(out, target) || !strings.Contains(out, tc.want) {
				t.Fatalf("restore to %s exited %d; want a refusal naming it and %q:\n%s", tc.name, code, tc.want, out)
			}
			kept(t, target, tc.mode)
		})
	}
}

// fileSHA256 is the hex SHA-256 of the file at path.
func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
