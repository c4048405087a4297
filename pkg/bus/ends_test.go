package bus_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/format"
)

const digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func TestStreamEndsRoundTrip(t *testing.T) {
	raw := bus.RawEnd{Bytes: 1 << 20, SHA256: digest, Chunks: 5, Source: "postgres", Describe: map[string]string{"server": "15.19"}}
	got, err := bus.ParseRawEnd(raw.Trailer())
	if err != nil || !reflect.DeepEqual(got, raw) {
		t.Errorf("raw end: %+v, %v; want %+v", got, err, raw)
	}
	sealed := bus.SealedEnd{Chain: []string{format.CompressionZstd}, ChunkSize: 256 << 10, KeyWrap: format.KeyWrap{Scheme: format.SchemeNone},
		Bytes: 1 << 20, Frames: 3, PlaintextSHA256: digest, Source: "postgres", Describe: map[string]string{"server": "15.19"}}
	tr, err := sealed.Trailer()
	if err != nil {
		t.Fatal(err)
	}
	back, err := bus.ParseSealedEnd(tr)
	if err != nil || !reflect.DeepEqual(back, sealed) {
		t.Errorf("sealed end: %+v, %v; want %+v", back, err, sealed)
	}
}

// TestMalformedStreamEndsNameWhatIsWrong: a trailer a stage cannot read
// fails the stage with the key and the value, never a zero taken for a
// byte count or a digest.
func TestMalformedStreamEndsNameWhatIsWrong(t *testing.T) {
	good := bus.RawEnd{Bytes: 10, SHA256: digest, Chunks: 1, Source: "command"}.Trailer()
	with := func(k, v string) map[string]string {
		t := map[string]string{}
		for a, b := range good {
			t[a] = b
		}
		if v == "<absent>" {
			delete(t, k)
		} else {
			t[k] = v
		}
		return t
	}
	tests := []struct {
		name    string
		trailer map[string]string
		want    string
	}{
		{"bytes not a number", with("Bytes", "ten"), `Bytes "ten": not a byte count`},
		{"bytes absent", with("Bytes", "<absent>"), `Bytes "": not a byte count`},
		{"digest short", with("Sha256", "abc"), `Sha256 "abc": not a hex SHA-256`},
		{"chunks zero", with("Chunks", "0"), `Chunks "0": not a chunk count`},
		{"exit not a number", with("Exit", "x"), `Exit "x": not an exit status`},
		{"no source", with("Source", "<absent>"), `Source "": missing`},
		{"describe not an object", with("Describe", "[1]"), `Describe "[1]": not a JSON object of strings`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := bus.ParseRawEnd(tt.trailer)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "raw stream trailer: ") {
				t.Errorf("got %v, want an error with %q", err, tt.want)
			}
		})
	}
	sealedTests := []struct {
		name    string
		trailer map[string]string
		want    string
	}{
		{"no meta", map[string]string{}, "no Meta"},
		{"not JSON", map[string]string{"Meta": "{"}, "Meta: unexpected end"},
		{"no digest, no frames, no key wrap", map[string]string{"Meta": `{"bytes":1}`}, `plaintextSha256 "": not a hex SHA-256`},
	}
	for _, tt := range sealedTests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := bus.ParseSealedEnd(tt.trailer)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "sealed stream trailer: ") {
				t.Errorf("got %v, want an error with %q", err, tt.want)
			}
		})
	}
}
