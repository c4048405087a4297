package dataplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/backup"
	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/services/app"
	"github.com/backstream/backstream/services/restore"
)

// TestRoundTripFramesOfSeveralChunks is the round trip through the whole
// pipeline (snapshot, filter, upload, verify with the key) with frames of
// four 64 KiB chunks: sizes around the frame's edges restore byte for
// byte, the object holds the frames the manifest counts, and its header
// declares the frame size.
func TestRoundTripFramesOfSeveralChunks(t *testing.T) {
	keys := newKeyring(t)
	env := harness.Start(t, harness.Options{Config: func(c *app.Config) { c.IdentityFile = keys.idFile }})
	const frame = 4 * chunk
	tests := []struct {
		size   int64
		frames uint64
	}{
		{0, 1},
		{1, 1},
		{frame - 1, 1},
		// A full frame is final only once the stream says it ended: an
		// empty final frame follows it.
		{frame, 2},
		{frame + 1, 2},
		{3*frame + chunk + 7, 4},
		{20 << 20, 81},
	}
	storeDir := t.TempDir()
	st, err := filesystem.New(context.Background(), filesystem.Config{Path: storeDir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fk := format.Keys{Identities: []age.Identity{keys.identity}}
	encryptions := []struct{ name, block string }{
		{"none", "frameSize: 256KiB"},
		{"x25519", fmt.Sprintf("frameSize: 256KiB\nencryption: {type: aes-256-gcm, recipients: [%s]}", keys.identity.Recipient())},
	}
	for _, comp := range []string{"snappy", "zstd"} {
		for _, enc := range encryptions {
			name := fmt.Sprintf("framed-%s-%s", comp, enc.name)
			for _, tt := range tests {
				t.Run(fmt.Sprintf("%s/%s/%d", comp, enc.name, tt.size), func(t *testing.T) {
					src, digest := writeSource(t, tt.size)
					env.Apply(plan(name, catSource(src), comp, enc.block, fsDest(storeDir), ""))
					id := env.Trigger(name)
					r := env.Wait(id, 2*time.Minute)
					if r.Phase != runs.Succeeded {
						t.Fatalf("run %s: %s: %s", id, r.Phase, r.Error)
					}
					if mode := r.Destinations["local"].VerifyMode; mode != format.VerifyModeFull {
						t.Errorf("verify mode %q, want full", mode)
					}
					m, err := backup.Find(context.Background(), st, name+"/"+id)
					if err != nil {
						t.Fatal(err)
					}
					if m.Frames != tt.frames || m.ChunkSize != frame {
						t.Errorf("manifest: %d frames of %d bytes, want %d of %d", m.Frames, m.ChunkSize, tt.frames, frame)
					}
					var out bytes.Buffer
					h := sha256.New()
					stats, err := restore.Stream(context.Background(), st, m, fk, func(r io.Reader) error {
						_, err := io.Copy(io.MultiWriter(h, &out), r)
						return err
					})
					if err != nil {
						t.Fatalf("restore: %v", err)
					}
					if got := hex.EncodeToString(h.Sum(nil)); got != digest || stats.Bytes != tt.size {
						t.Fatalf("restored %d bytes sha %s, source %d bytes sha %s", stats.Bytes, got, tt.size, digest)
					}
					if stats.Frames != tt.frames {
						t.Errorf("the object holds %d frames, the manifest says %d", stats.Frames, m.Frames)
					}
				})
			}
		}
	}
}
