package mongodb

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/archive"
)

var _ source.ExtractFunc = Extract

// Extract implements source.ExtractFunc: the stream becomes mongodump's
// directory layout, which mongorestore reads (mongorestore --dir DIR) and
// bsondump prints:
//
//	<db>/<coll>.bson            the documents, concatenated BSON
//	<db>/<coll>.metadata.json   {"indexes", "options", "collectionName", "type"} in canonical extended JSON
//
// Names are escaped with source.FileName (percent-encoding, which
// mongorestore undoes as it does for mongodump's escaped names). Not
// mongorestore's --archive format: its header lists every collection's
// metadata before any document, while this stream interleaves them, so
// writing one would mean holding or re-reading the documents. Every
// document is validated as BSON; one cut short, or a stream without its end
// record, is source.ErrCorrupt.
func Extract(ctx context.Context, r io.Reader, dir string) ([]string, error) {
	return source.Extract(ctx, dir, func(d *source.ExtractDir) error {
		ar := archive.NewReader(r)
		var dbs []string
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			name, err := ar.Next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("mongodb extract: %w: %w", source.ErrCorrupt, err)
			}
			kind, rest, _ := strings.Cut(name, "/")
			db, coll, _ := strings.Cut(rest, "/")
			if kind != "databases" && (db == "" || coll == "" || !slices.Contains(dbs, db)) {
				return fmt.Errorf("mongodb extract: entry %q: %w", name, source.ErrCorrupt)
			}
			file := source.FileName(db) + "/" + source.FileName(coll)
			switch kind {
			case "databases":
				b, err := io.ReadAll(io.LimitReader(ar, 1<<20))
				if err != nil {
					return fmt.Errorf("mongodb extract: %w: %w", source.ErrCorrupt, err)
				}
				dbs = strings.Split(string(b), "\n")
			case "meta":
				if err := extractMeta(d, ar, file+".metadata.json", coll); err != nil {
					return err
				}
			case "data":
				if err := extractDocs(ctx, d, ar, file+".bson"); err != nil {
					return err
				}
			default:
				return fmt.Errorf("mongodb extract: entry %q: %w", name, source.ErrCorrupt)
			}
		}
	})
}

func extractMeta(d *source.ExtractDir, r io.Reader, file, coll string) error {
	b, err := io.ReadAll(io.LimitReader(r, 64<<20))
	if err != nil {
		return fmt.Errorf("mongodb extract %s: %w: %w", file, source.ErrCorrupt, err)
	}
	var md metadata
	if err := bson.UnmarshalExtJSON(b, true, &md); err != nil {
		return fmt.Errorf("mongodb extract %s: %w: %w", file, source.ErrCorrupt, err)
	}
	if md.Indexes == nil {
		md.Indexes = []bson.Raw{}
	}
	js, err := bson.MarshalExtJSON(bson.D{
		{Key: "indexes", Value: md.Indexes},
		{Key: "options", Value: md.Options},
		{Key: "collectionName", Value: coll},
		{Key: "type", Value: "collection"},
	}, true, false)
	if err != nil {
		return fmt.Errorf("mongodb extract %s: %w", file, err)
	}
	f, err := d.Create(file)
	if err != nil {
		return err
	}
	if _, err := f.Write(js); err != nil {
		f.Abort()
		return fmt.Errorf("mongodb extract %s: %w", file, err)
	}
	return f.Commit()
}

// extractDocs copies concatenated BSON documents one at a time, each
// validated; the buffer grows to the largest document, at most maxDoc.
func extractDocs(ctx context.Context, d *source.ExtractDir, r io.Reader, file string) error {
	f, err := d.Create(file)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		f.Abort()
		return fmt.Errorf("mongodb extract %s: %w", file, err)
	}
	var doc []byte
	for {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		var l [4]byte
		if _, err := io.ReadFull(r, l[:]); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fail(fmt.Errorf("%w: %w", source.ErrCorrupt, err))
		}
		n := int(binary.LittleEndian.Uint32(l[:]))
		if n < 5 || n > maxDoc {
			return fail(fmt.Errorf("%w: document length %d", source.ErrCorrupt, n))
		}
		doc = slices.Grow(doc[:0], n)[:n]
		copy(doc, l[:])
		if _, err := io.ReadFull(r, doc[4:]); err != nil {
			return fail(fmt.Errorf("%w: %w", source.ErrCorrupt, err))
		}
		if err := bson.Raw(doc).Validate(); err != nil {
			return fail(fmt.Errorf("%w: %w", source.ErrCorrupt, err))
		}
		if _, err := f.Write(doc); err != nil {
			return fail(err)
		}
	}
	return f.Commit()
}
