package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAFileMadeDuringARestoreIsNotReplaced: the check that --to FILE does
// not exist comes before the restore reads anything, so a file can appear
// at FILE while it runs (another restore, an operator's copy). Without
// --overwrite the finished file must not replace it; with --overwrite it
// does.
func TestAFileMadeDuringARestoreIsNotReplaced(t *testing.T) {
	for _, tc := range []struct {
		name      string
		overwrite bool
		want      string
		wantErr   bool
	}{
		{name: "without --overwrite", want: "made meanwhile", wantErr: true},
		{name: "with --overwrite", overwrite: true, want: "restored"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "orders.dump")
			f, err := newPartialFile(path, tc.overwrite)
			if err != nil {
				t.Fatal(err)
			}
			defer f.discard()
			if err := f.write(strings.NewReader("restored")); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte("made meanwhile"), 0o600); err != nil {
				t.Fatal(err)
			}
			err = f.commit()
			if gotErr := err != nil; gotErr != tc.wantErr || (err != nil && !errors.Is(err, errFileExists)) {
				t.Errorf("commit: %v, want an error: %v (errFileExists)", err, tc.wantErr)
			}
			f.discard()
			if b, _ := os.ReadFile(path); string(b) != tc.want {
				t.Errorf("%s holds %q, want %q", path, b, tc.want)
			}
			if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*partial*")); len(left) != 0 {
				t.Errorf("left beside it: %v", left)
			}
		})
	}
}
