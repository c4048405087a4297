package bus

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/backstream/backstream/pkg/format"
)

// What each chunk stream's last message says, typed. On the wire a trailer
// is a set of headers (TrailerPrefix + key, one string each, see
// ChunkWriter.Close); the types here are the one place that writes and
// reads them, so the stages at the two ends of a stream agree by
// construction, and a malformed trailer is an error naming its key, not a
// zero taken for a figure.

// RawReader is the consumer name of the raw stream's one reader, the
// filter stage.
const RawReader = "filter"

// Keys of the raw stream's trailer.
const (
	rawBytes    = "Bytes"
	rawSHA256   = "Sha256"
	rawChunks   = "Chunks"
	rawExit     = "Exit"
	rawDescribe = "Describe"
	rawSource   = "Source"
)

// RawEnd is the raw stream's trailer: the dump as the snapshot stage read
// it, whole (a dump that failed ends its stream with ChunkWriter.Fail
// instead).
type RawEnd struct {
	// Bytes is the dump's length, SHA256 the hex SHA-256 of its bytes.
	Bytes  int64
	SHA256 string
	// Chunks is the stream's chunk count, this last one included.
	Chunks int64
	// Exit is the dump's exit status: 0 on a stream that ended whole.
	Exit int
	// Source is the plan's source type, Describe what the source said of
	// the dump (server version, databases).
	Source   string
	Describe map[string]string
}

// Trailer is e as ChunkWriter.Close sends it.
func (e RawEnd) Trailer() map[string]string {
	desc, _ := json.Marshal(e.Describe) // a map of strings always marshals
	return map[string]string{
		rawBytes:    strconv.FormatInt(e.Bytes, 10),
		rawSHA256:   e.SHA256,
		rawChunks:   strconv.FormatInt(e.Chunks, 10),
		rawExit:     strconv.Itoa(e.Exit),
		rawDescribe: string(desc),
		rawSource:   e.Source,
	}
}

// ParseRawEnd reads the trailer of a raw stream's final chunk.
func ParseRawEnd(t map[string]string) (RawEnd, error) {
	var e RawEnd
	var errs []error
	bad := func(key, why string) { errs = append(errs, fmt.Errorf("%s %q: %s", key, t[key], why)) }
	var err error
	if e.Bytes, err = strconv.ParseInt(t[rawBytes], 10, 64); err != nil || e.Bytes < 0 {
		bad(rawBytes, "not a byte count")
	}
	if e.SHA256 = t[rawSHA256]; !isSHA256(e.SHA256) {
		bad(rawSHA256, "not a hex SHA-256")
	}
	if c, ok := t[rawChunks]; ok {
		if e.Chunks, err = strconv.ParseInt(c, 10, 64); err != nil || e.Chunks < 1 {
			bad(rawChunks, "not a chunk count")
		}
	}
	if x, ok := t[rawExit]; ok {
		if e.Exit, err = strconv.Atoi(x); err != nil {
			bad(rawExit, "not an exit status")
		}
	}
	if e.Source = t[rawSource]; e.Source == "" {
		bad(rawSource, "missing")
	}
	if d := t[rawDescribe]; d != "" && d != "null" {
		if err := json.Unmarshal([]byte(d), &e.Describe); err != nil {
			bad(rawDescribe, "not a JSON object of strings")
		}
	}
	if len(errs) > 0 {
		return RawEnd{}, fmt.Errorf("raw stream trailer: %w", errors.Join(errs...))
	}
	return e, nil
}

// sealedMeta is the key of the sealed stream's trailer.
const sealedMeta = "Meta"

// SealedEnd is the sealed stream's trailer: the manifest fields the filter
// stage knows, for upload to write beside the object it stored.
type SealedEnd struct {
	Chain           []string          `json:"chain"`
	ChunkSize       int               `json:"chunkSize"`
	KeyWrap         format.KeyWrap    `json:"keyWrap"`
	Bytes           int64             `json:"bytes"`
	Frames          uint64            `json:"frames"`
	PlaintextSHA256 string            `json:"plaintextSha256"`
	Source          string            `json:"source"`
	Describe        map[string]string `json:"describe,omitempty"`
}

// Trailer is e as ChunkWriter.Close sends it.
func (e SealedEnd) Trailer() (map[string]string, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("sealed stream trailer: %w", err)
	}
	return map[string]string{sealedMeta: string(b)}, nil
}

// ParseSealedEnd reads the trailer of a sealed stream's final chunk.
func ParseSealedEnd(t map[string]string) (SealedEnd, error) {
	var e SealedEnd
	m, ok := t[sealedMeta]
	if !ok {
		return e, fmt.Errorf("sealed stream trailer: no %s", sealedMeta)
	}
	if err := json.Unmarshal([]byte(m), &e); err != nil {
		return SealedEnd{}, fmt.Errorf("sealed stream trailer: %s: %w", sealedMeta, err)
	}
	var errs []error
	if !isSHA256(e.PlaintextSHA256) {
		errs = append(errs, fmt.Errorf("plaintextSha256 %q: not a hex SHA-256", e.PlaintextSHA256))
	}
	if e.Frames < 1 {
		errs = append(errs, errors.New("frames: none"))
	}
	if err := e.KeyWrap.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("keyWrap: %w", err))
	}
	if len(errs) > 0 {
		return SealedEnd{}, fmt.Errorf("sealed stream trailer: %w", errors.Join(errs...))
	}
	return e, nil
}

func isSHA256(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32
}
