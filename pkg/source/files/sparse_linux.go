package files

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// dataRegions finds where f's first size bytes hold data with SEEK_DATA and
// SEEK_HOLE, without reading them. A file system that cannot tell reports
// the whole file as data (or fails, and then the whole file is read as it
// always was); its zeros are then stored like any other bytes.
func dataRegions(f *os.File, size int64) []region {
	var out []region
	for off := int64(0); off < size; {
		data, err := f.Seek(off, unix.SEEK_DATA)
		if err != nil {
			// ENXIO: nothing but a hole from off to the end.
			if errors.Is(err, unix.ENXIO) {
				break
			}
			return []region{{0, size}}
		}
		if data >= size {
			break
		}
		if len(out) == maxRegions-1 {
			out = append(out, region{data, size - data})
			break
		}
		hole, err := f.Seek(data, unix.SEEK_HOLE)
		if err != nil {
			return []region{{0, size}}
		}
		hole = min(hole, size)
		out = append(out, region{data, hole - data})
		off = hole
	}
	return out
}
