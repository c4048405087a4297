package format

import "errors"

// Sentinel errors. Every error this package returns for a bad object wraps
// exactly one of them (test with errors.Is); the message names what failed,
// for example "frame 3: authentication failed (tampered, reordered or wrong key)".
var (
	// ErrFormat: the bytes are not a backstream object, or a header or frame
	// field is malformed (bad magic, unknown filter code, impossible length).
	ErrFormat = errors.New("not a valid backstream object")
	// ErrVersion: a backstream object of a format version this code cannot read.
	ErrVersion = errors.New("unsupported format version")
	// ErrCorrupt: the object was damaged or tampered with: a checksum or
	// authentication tag does not match, a frame is out of order or
	// duplicated, a chunk does not decompress, or bytes follow the final frame.
	ErrCorrupt = errors.New("object corrupt")
	// ErrTruncated: the object ends early: inside the header or a frame, or
	// after a frame that is not the final one.
	ErrTruncated = errors.New("object truncated")
	// ErrWrongKey: the keys given do not open the object's data key (wrong or
	// missing identity or passphrase).
	ErrWrongKey = errors.New("wrong key")
	// ErrInvalidOption: an Options field or Seal argument is out of range.
	ErrInvalidOption = errors.New("invalid option")
)
