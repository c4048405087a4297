package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/archive"
)

// pgdmpMagic opens every pg_dump custom-format file.
const pgdmpMagic = "PGDMP"

var _ source.ExtractFunc = Extract

// Extract implements source.ExtractFunc: each database's pg_dump -Fc as
// <db>.dump (pg_restore reads it: pg_restore --list, pg_restore --dbname),
// and globals.sql (psql -f) when the backup has one. Database names are
// escaped with source.FileName. The databases the index lists must all be
// in the stream, each starting with pg_dump's PGDMP magic; anything else is
// source.ErrCorrupt.
func Extract(ctx context.Context, r io.Reader, dir string) ([]string, error) {
	return source.Extract(ctx, dir, func(d *source.ExtractDir) error {
		ar := archive.NewReader(r)
		var index, got []string
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			name, err := ar.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("postgres extract: %w: %w", source.ErrCorrupt, err)
			}
			switch {
			case name == IndexEntry:
				b, err := io.ReadAll(io.LimitReader(ar, 1<<20))
				if err != nil {
					return fmt.Errorf("postgres extract: %w: %w", source.ErrCorrupt, err)
				}
				if len(b) > 0 {
					index = strings.Split(string(b), "\n")
				}
			case name == GlobalsEntry:
				if err := d.Copy(ctx, GlobalsEntry, ar); err != nil {
					return corrupt(err)
				}
			case strings.HasPrefix(name, dbPrefix) && strings.HasSuffix(name, dbSuffix):
				db := strings.TrimSuffix(strings.TrimPrefix(name, dbPrefix), dbSuffix)
				if err := extractDump(ctx, d, db, ar); err != nil {
					return err
				}
				got = append(got, db)
			default:
				return fmt.Errorf("postgres extract: unknown entry %q: %w", name, source.ErrCorrupt)
			}
		}
		if !slices.Equal(index, got) {
			return fmt.Errorf("postgres extract: the index lists databases %q, the stream holds %q: %w", index, got, source.ErrCorrupt)
		}
		if len(d.Names()) == 0 {
			return fmt.Errorf("postgres extract: no database in the stream: %w", source.ErrCorrupt)
		}
		return nil
	})
}

func extractDump(ctx context.Context, d *source.ExtractDir, db string, r io.Reader) error {
	head := make([]byte, len(pgdmpMagic))
	n, err := io.ReadFull(r, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return corrupt(err)
	}
	if string(head[:n]) != pgdmpMagic {
		return fmt.Errorf("postgres extract %s: not a pg_dump custom-format dump (starts with %q): %w", db, head[:n], source.ErrCorrupt)
	}
	return corrupt(d.Copy(ctx, source.FileName(db)+dbSuffix, io.MultiReader(bytes.NewReader(head), r)))
}

// corrupt marks a read failure of the archive (a stream cut short) as
// source.ErrCorrupt; other errors pass as they are.
func corrupt(err error) error {
	if err == nil || errors.Is(err, source.ErrCorrupt) {
		return err
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, archive.ErrFormat) {
		return fmt.Errorf("postgres extract: %w: %w", source.ErrCorrupt, err)
	}
	return err
}
