package redis

import (
	"context"
	"fmt"
	"io"

	"github.com/backstream/backstream/pkg/ctxio"
	"github.com/backstream/backstream/pkg/source"
)

var _ source.ExtractFunc = Extract

// Extract implements source.ExtractFunc: the stream is an RDB file, written
// as dump.rdb (redis-check-rdb reads it; a redis-server started with --dir
// on the directory loads it). It passes the same checks as Restore (REDIS
// magic, EOF opcode, CRC-64), so a stream cut short is source.ErrCorrupt and
// leaves no dump.rdb.
func Extract(ctx context.Context, r io.Reader, dir string) ([]string, error) {
	return source.Extract(ctx, dir, func(d *source.ExtractDir) error {
		f, err := d.Create(DumpFile)
		if err != nil {
			return err
		}
		rw := &rdbWriter{w: f}
		_, err = io.Copy(rw, ctxio.Reader(ctx, r))
		if err == nil {
			if err = rw.finish(); err != nil {
				err = fmt.Errorf("%w: %w", source.ErrCorrupt, err)
			}
		}
		if err != nil {
			f.Abort()
			return fmt.Errorf("redis extract: %w", err)
		}
		return f.Commit()
	})
}
