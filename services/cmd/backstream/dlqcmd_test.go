package main

import (
	"flag"
	"slices"
	"testing"
)

// A dead letter was refused, so whatever it says may have been written to
// mislead whoever reads it in a terminal.
func TestCleanEscapesWhatATerminalWouldObey(t *testing.T) {
	tests := []struct {
		name string
		give string
		want string
	}{
		{"plain", `plan "late": not found`, `plan "late": not found`},
		{"newline and tab kept", "a\n\tb", "a\n\tb"},
		{"escape sequence", "ok\x1b[2J\x1b]0;owned\x07", `ok\x1b[2J\x1b]0;owned\a`},
		{"carriage return", "real\rfake", `real\rfake`},
		{"C1 control", "a\u009bb", `a\u009bb`},
		{"bidi override", "run \u202eevil", `run \u202eevil`},
		{"invalid UTF-8", "a\xffb", `a\xffb`},
		{"unicode text", "späť 数据", "späť 数据"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := clean(tt.give); got != tt.want {
				t.Errorf("clean(%q) = %q, want %q", tt.give, got, tt.want)
			}
		})
	}
}

func TestCellIsOneBoundedLine(t *testing.T) {
	tests := []struct {
		name string
		give string
		n    int
		want string
	}{
		{"empty", "", 10, "-"},
		{"short", "snapshot", 10, "snapshot"},
		{"newlines", "a\nb\tc", 10, "a b c"},
		{"cut at a rune", "ääää", 3, "ä…"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cell(tt.give, tt.n); got != tt.want {
				t.Errorf("cell(%q, %d) = %q, want %q", tt.give, tt.n, got, tt.want)
			}
		})
	}
}

func TestParseInterleaved(t *testing.T) {
	tests := []struct {
		name     string
		give     []string
		wantPos  []string
		wantNATS string
	}{
		{"positionals first", []string{"3", "4", "--nats", "nats://x"}, []string{"3", "4"}, "nats://x"},
		{"flags first", []string{"--nats", "nats://x", "3", "4"}, []string{"3", "4"}, "nats://x"},
		{"between", []string{"3", "--nats", "nats://x", "4"}, []string{"3", "4"}, "nats://x"},
		{"none", nil, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			url := fs.String("nats", "", "")
			pos, err := parseInterleaved(fs, tt.give)
			if err != nil || !slices.Equal(pos, tt.wantPos) || *url != tt.wantNATS {
				t.Errorf("got %q, --nats %q, %v; want %q, %q", pos, *url, err, tt.wantPos, tt.wantNATS)
			}
		})
	}
}
