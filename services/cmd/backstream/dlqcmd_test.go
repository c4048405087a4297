package main

import (
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
