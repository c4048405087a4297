package files

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// region is a run of a file's bytes that holds data; what lies between
// regions (and after the last) is a hole that reads as zeros.
type region struct{ off, len int64 }

// maxRegions bounds a sparse map. A file split into more data regions keeps
// the rest of it as one region (its holes stored as zeros), so the map stays
// far below the 1 MiB that archive/tar lets a map take and memory does not
// grow with the file.
const maxRegions = 4096

// isDense reports whether regions say the file has no holes worth keeping.
func isDense(regions []region, size int64) bool {
	return size == 0 || len(regions) == 1 && regions[0] == region{0, size}
}

// blockSize is tar's record unit.
const blockSize = 512

func padding(n int64) int64 { return (blockSize - n%blockSize) % blockSize }

// writeSparse writes the open file f, whose data lies in regions, as one
// entry in GNU's PAX sparse format 1.0, which GNU tar, bsdtar and
// archive/tar all read: a PAX header records the real name and size, the
// entry itself is named dir/GNUSparseFile.0/base, and its data is the map
// (decimal lines: the count, then offset and length of each region, padded
// to a block) followed by the regions' bytes. Holes take no room.
//
// archive/tar can read this format but refuses to write it (golang/go#22735),
// so the headers are written here, after tw has padded its previous entry;
// tw writes the next entry as usual. Only the map is held in memory.
func writeSparse(tw *tar.Writer, w io.Writer, f *os.File, h *tar.Header, regions []region) error {
	entries := regions
	if n := len(regions); n == 0 || regions[n-1].off+regions[n-1].len < h.Size {
		// GNU tar ends the map of a file that ends in a hole with an empty
		// region at its size.
		entries = append(regions[:n:n], region{h.Size, 0})
	}
	var m bytes.Buffer
	fmt.Fprintf(&m, "%d\n", len(entries))
	var data int64
	for _, r := range entries {
		fmt.Fprintf(&m, "%d\n%d\n", r.off, r.len)
		data += r.len
	}
	m.Write(make([]byte, padding(int64(m.Len()))))
	size := int64(m.Len()) + data

	dir, file := path.Split(h.Name)
	name := path.Join(dir, "GNUSparseFile.0", file)
	records := map[string]string{
		"path":                name,
		"mtime":               paxTime(h.ModTime),
		"GNU.sparse.major":    "1",
		"GNU.sparse.minor":    "0",
		"GNU.sparse.name":     h.Name,
		"GNU.sparse.realsize": strconv.FormatInt(h.Size, 10),
	}
	if size > maxOctal11 {
		records["size"] = strconv.FormatInt(size, 10)
	}
	pax := paxRecords(records)
	if err := tw.Flush(); err != nil {
		return err
	}
	paxName := path.Join(dir, "PaxHeaders.0", file)
	if _, err := w.Write(ustarBlock(paxName, 0, int64(len(pax)), time.Unix(0, 0), tar.TypeXHeader)); err != nil {
		return err
	}
	if _, err := io.WriteString(w, pax+strings.Repeat("\x00", int(padding(int64(len(pax)))))); err != nil {
		return err
	}
	if _, err := w.Write(ustarBlock(name, h.Mode, size, h.ModTime, tar.TypeReg)); err != nil {
		return err
	}
	if _, err := w.Write(m.Bytes()); err != nil {
		return err
	}
	for _, r := range regions {
		n, err := io.Copy(w, io.NewSectionReader(f, r.off, r.len))
		if err != nil {
			return err
		}
		if n < r.len {
			return fmt.Errorf("%s: %w (read %d of %d bytes at %d)", h.Name, ErrChanged, n, r.len, r.off)
		}
	}
	_, err := w.Write(make([]byte, padding(size)))
	return err
}

// maxOctal11 is the largest value of an 11-digit octal ustar field.
const maxOctal11 = 1<<33 - 1

// ustarBlock formats a ustar header block. Fields that do not fit (a long
// name, a size past 8 GiB, a time before 1970) are also in the PAX records
// before it, which readers prefer.
func ustarBlock(name string, mode, size int64, mtime time.Time, typ byte) []byte {
	b := make([]byte, blockSize)
	copy(b[0:100], name)
	octal(b[100:108], mode)
	octal(b[108:116], 0) // uid
	octal(b[116:124], 0) // gid
	if size > maxOctal11 {
		size = 0
	}
	octal(b[124:136], size)
	sec := mtime.Unix()
	if sec < 0 || sec > maxOctal11 {
		sec = 0
	}
	octal(b[136:148], sec)
	b[156] = typ
	copy(b[257:265], "ustar\x0000")
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b {
		sum += int64(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// octal writes v as zero-padded octal digits and a NUL terminator.
func octal(b []byte, v int64) {
	copy(b, fmt.Sprintf("%0*o\x00", len(b)-1, v))
}

// paxRecords encodes records as "len key=value\n", sorted by key so the same
// file makes the same bytes. len counts the whole record, its own digits too.
func paxRecords(records map[string]string) string {
	var s strings.Builder
	for _, k := range slices.Sorted(maps.Keys(records)) {
		rec := " " + k + "=" + records[k] + "\n"
		n := len(rec)
		for n != len(rec)+len(strconv.Itoa(n)) {
			n = len(rec) + len(strconv.Itoa(n))
		}
		s.WriteString(strconv.Itoa(n) + rec)
	}
	return s.String()
}

// paxTime formats t as PAX does: seconds since 1970 and, when there are any,
// nanoseconds after a point (a negative time has a negative fraction).
func paxTime(t time.Time) string {
	sec, nsec := t.Unix(), int64(t.Nanosecond())
	if nsec == 0 {
		return strconv.FormatInt(sec, 10)
	}
	sign := ""
	if sec < 0 {
		sign = "-"
		sec = -(sec + 1)
		nsec = 1e9 - nsec
	}
	return strings.TrimRight(fmt.Sprintf("%s%d.%09d", sign, sec, nsec), "0")
}

// holeBlock is the unit copySparse checks for zeros: the page and block size
// of common file systems, so a block left out is a hole the file system keeps.
const holeBlock = 4096

// copySparse writes r into the empty file f, leaving out blocks of zeros so
// they stay holes, and sets the size at the end (a trailing hole). It is for
// entries the archive marks sparse: a dense file's zero blocks may be there
// on purpose (preallocated space), so they are written.
func copySparse(f *os.File, r io.Reader) error {
	buf := make([]byte, 256<<10)
	var zero [holeBlock]byte
	var off int64
	for {
		n, err := fill(r, buf)
		b := buf[:n]
		for len(b) > 0 {
			k := min(holeBlock, len(b))
			if bytes.Equal(b[:k], zero[:k]) {
				b, off = b[k:], off+int64(k)
				continue
			}
			// Write the run of blocks up to the next zero block at once.
			j := k
			for j < len(b) {
				e := min(j+holeBlock, len(b))
				if bytes.Equal(b[j:e], zero[:e-j]) {
					break
				}
				j = e
			}
			if _, werr := f.WriteAt(b[:j], off); werr != nil {
				return werr
			}
			b, off = b[j:], off+int64(j)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	return f.Truncate(off)
}

// fill reads into buf until it is full or r fails; unlike io.ReadFull it
// passes r's error on as it is, so a cut stream is not mistaken for the end.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		k, err := r.Read(buf[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// isSparse reports whether the archive stored h in one of GNU's sparse
// formats (archive/tar reads them all and hands out the holes as zeros).
func isSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
