package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The realistic sets of `bench peers`: dumps of scratch databases on the
// machine's own servers (made, dumped and dropped again) and a source tree.

// pgbenchBytesPerScale is what pg_dump -Fp writes per pgbench scale unit
// (100 000 accounts rows of ~97 bytes), measured on PostgreSQL 15.
const pgbenchBytesPerScale = 9.7e6

// pgbenchDump fills a scratch database with pgbench -i and dumps it as
// plain SQL: COPY blocks of narrow rows with blank-padded text, the shape
// of most OLTP dumps.
func (pr *peerRig) pgbenchDump(ctx context.Context) (path, what string, err error) {
	scale := pr.pc.pgbenchScale
	if scale == 0 {
		scale = max(1, int(float64(pr.pc.size)/pgbenchBytesPerScale+0.5))
	}
	db := fmt.Sprintf("bench_peers_%d", os.Getpid())
	conn := []string{"-h", "127.0.0.1", "-U", "postgres"}
	psql := func(sql string) error {
		out, err := exec.CommandContext(ctx, "psql", append(conn, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("psql %q: %w: %s", sql, err, out)
		}
		return nil
	}
	if err := psql("DROP DATABASE IF EXISTS " + db); err != nil {
		return "", "", err
	}
	if err := psql("CREATE DATABASE " + db); err != nil {
		return "", "", err
	}
	defer func() {
		if derr := psql("DROP DATABASE IF EXISTS " + db); derr != nil && err == nil {
			err = derr
		}
	}()
	fmt.Fprintf(pr.log, "peers: pgbench -i -s %d into %s ...\n", scale, db)
	// d t g: drop, create tables, generate rows client-side; no vacuum or
	// keys, which change nothing in the dump's data and take minutes.
	out, err := exec.CommandContext(ctx, "pgbench", append(conn, "-i", "-I", "dtg", "-q", "-s", fmt.Sprint(scale), db)...).CombinedOutput()
	if err != nil {
		return "", "", fmt.Errorf("pgbench -i: %w: %s", err, tailOf(out, 2048))
	}
	path = filepath.Join(pr.dir, "pgbench.sql")
	if err := runTo(ctx, path, append(append([]string{"pg_dump"}, conn...), "-Fp", db)...); err != nil {
		return "", "", err
	}
	return path, fmt.Sprintf("pg_dump -Fp of pgbench -i -s %d", scale), nil
}

// mariadbDump fills a scratch database with a table of random BLOBs and
// dumps it with --hex-blob: a 16-letter alphabet without repeats, the data
// issue #16 found stored uncompressed. The blobs are half the dump's size.
func (pr *peerRig) mariadbDump(ctx context.Context) (path, what string, err error) {
	db := fmt.Sprintf("bench_peers_%d", os.Getpid())
	conn := []string{"-h", "127.0.0.1", "-u", "root"}
	sql := func(stmt string) error {
		out, err := exec.CommandContext(ctx, "mariadb", append(conn, "-e", stmt)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("mariadb %q: %w: %s", stmt, err, out)
		}
		return nil
	}
	if err := sql("DROP DATABASE IF EXISTS " + db + "; CREATE DATABASE " + db); err != nil {
		return "", "", err
	}
	defer func() {
		if derr := sql("DROP DATABASE IF EXISTS " + db); derr != nil && err == nil {
			err = derr
		}
	}()
	blobs := pr.pc.size / 2
	fmt.Fprintf(pr.log, "peers: %s of random blobs into %s ...\n", humanSize(blobs), db)
	cmd := exec.CommandContext(ctx, "mariadb", append(conn, db)...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return "", "", err
	}
	var errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &errOut, &errOut
	if err := cmd.Start(); err != nil {
		return "", "", fmt.Errorf("mariadb: %w", err)
	}
	werr := writeBlobSQL(in, blobs, pr.pc.seed)
	in.Close()
	if err := cmd.Wait(); err != nil {
		return "", "", fmt.Errorf("mariadb load: %w: %s", err, tailOf([]byte(errOut.String()), 2048))
	}
	if werr != nil {
		return "", "", fmt.Errorf("mariadb load: %w", werr)
	}
	path = filepath.Join(pr.dir, "mariadb.sql")
	if err := runTo(ctx, path, append(append([]string{"mariadb-dump"}, conn...), "--hex-blob", db)...); err != nil {
		return "", "", err
	}
	return path, fmt.Sprintf("mariadb-dump --hex-blob of %s of random BLOBs", humanSize(blobs)), nil
}

// writeBlobSQL writes the statements that make table blobs and fill it
// with total bytes of seeded random data in rows of 16–64 KiB, a few MiB
// per INSERT (under the server's 16 MiB max_allowed_packet).
func writeBlobSQL(w io.Writer, total, seed int64) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24), 'b', 'l', 'o', 'b'})
	pick := rand.New(rand.NewPCG(uint64(seed), 2))
	fmt.Fprintln(bw, "CREATE TABLE blobs (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, payload MEDIUMBLOB NOT NULL);")
	buf := make([]byte, 64<<10)
	hexBuf := make([]byte, 2*len(buf))
	id, inStmt := 0, 0
	for written := int64(0); written < total; {
		n := min(int64(16<<10+pick.IntN(48<<10+1)), total-written)
		rng.Read(buf[:n])
		hex.Encode(hexBuf, buf[:n])
		id++
		if inStmt == 0 {
			fmt.Fprint(bw, "INSERT INTO blobs VALUES ")
		} else {
			fmt.Fprint(bw, ",")
		}
		fmt.Fprintf(bw, "(%d,'object-%08d.bin',0x", id, id)
		bw.Write(hexBuf[:2*n])
		bw.WriteString(")")
		inStmt += int(n)
		written += n
		if inStmt >= 4<<20 || written >= total {
			bw.WriteString(";\n")
			inStmt = 0
		}
	}
	return bw.Flush()
}
