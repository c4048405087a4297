package mariadb

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/backstream/backstream/pkg/ctxio"
	"github.com/backstream/backstream/pkg/source"
)

// Names Extract writes.
const (
	// AllFile is a logical dump of several databases or of all: it makes
	// its databases itself (mariadb < dump.sql).
	AllFile = "dump.sql"
	// PhysicalFile is a physical backup as mariabackup streamed it
	// (mbstream -x -C DIR < mariabackup.xbstream, then mariabackup --prepare).
	PhysicalFile = "mariabackup.xbstream"
)

var _ source.ExtractFunc = Extract

// Extract implements source.ExtractFunc. The stream already is what the
// MariaDB tools read, so it is written unchanged:
//   - a single-database logical dump as <db>.sql (no CREATE DATABASE or
//     USE: mariadb NEWDB < <db>.sql; its first line is an SQL comment
//     naming the database);
//   - a dump of several or all databases as dump.sql (mariadb < dump.sql);
//   - a physical backup as mariabackup.xbstream (mbstream -x).
//
// A logical dump whose end lacks mariadb-dump's "-- Dump completed" line
// was cut short and is source.ErrCorrupt. An xbstream has no end record,
// so a physical backup cut at a chunk boundary is only caught by mbstream
// or mariabackup --prepare.
func Extract(ctx context.Context, r io.Reader, dir string) ([]string, error) {
	return source.Extract(ctx, dir, func(d *source.ExtractDir) error {
		br := bufio.NewReaderSize(ctxio.Reader(ctx, r), 64<<10)
		head, err := br.Peek(len(xbstreamMagic))
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("mariadb extract: %w", err)
		}
		if len(head) == 0 {
			return fmt.Errorf("mariadb extract: empty stream: %w", source.ErrCorrupt)
		}
		if string(head) == xbstreamMagic {
			return d.Copy(ctx, PhysicalFile, br)
		}
		name := AllFile
		if first, err := br.Peek(len(singleHeader)); err == nil && string(first) == singleHeader {
			// The header line is short; it fits the reader's buffer.
			buf, err := br.Peek(64 << 10)
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("mariadb extract: %w", err)
			}
			i := bytes.IndexByte(buf, '\n')
			if i < 0 {
				return fmt.Errorf("mariadb extract: header: %w", source.ErrCorrupt)
			}
			name = source.FileName(string(buf[len(singleHeader):i])) + ".sql"
		}
		f, err := d.Create(name)
		if err != nil {
			return err
		}
		tail := &tailReader{r: br}
		if _, err := io.Copy(f, tail); err != nil {
			f.Abort()
			return fmt.Errorf("mariadb extract %s: %w", name, err)
		}
		if !bytes.Contains(tail.last, []byte(dumpCompleted)) {
			f.Abort()
			return fmt.Errorf("mariadb extract: stream lacks %q, the dump was cut short: %w", dumpCompleted, source.ErrCorrupt)
		}
		return f.Commit()
	})
}
