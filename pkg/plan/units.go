package plan

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Day and Week are the units plans may use beyond time.ParseDuration's.
const (
	Day  = 24 * time.Hour
	Week = 7 * Day
)

// Duration is a time.Duration written as a string: a Go duration ("90s",
// "1h30m") or a whole number of days or weeks ("30d", "2w"). It marshals to
// YAML and JSON as such a string, so plans round-trip losslessly.
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String formats d the way a plan writes it: whole days as "Nd", anything
// else as a Go duration without trailing zero units ("1h30m", not "1h30m0s").
func (d Duration) String() string { return formatDuration(time.Duration(d)) }

// ParseDuration parses a plan duration: a Go duration, or an integer followed
// by d (days) or w (weeks).
func ParseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty duration")
	}
	if n := len(s); s[n-1] == 'd' || s[n-1] == 'w' {
		v, err := strconv.ParseInt(s[:n-1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q: want a Go duration (30s, 6h) or whole days/weeks (30d, 2w)", s)
		}
		unit := Day
		if s[n-1] == 'w' {
			unit = Week
		}
		if v > int64(1<<63-1)/int64(unit) || v < -int64(1<<63-1)/int64(unit) {
			return 0, fmt.Errorf("duration %q out of range", s)
		}
		return Duration(time.Duration(v) * unit), nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: want a Go duration (30s, 6h) or whole days/weeks (30d, 2w)", s)
	}
	return Duration(v), nil
}

func formatDuration(d time.Duration) string {
	if d >= 2*Day && d%Day == 0 {
		return strconv.FormatInt(int64(d/Day), 10) + "d"
	}
	s := d.String()
	// time.Duration writes 90m as "1h30m0s"; drop the zero tail units.
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// UnmarshalYAML accepts a duration string. A bare number is refused: it
// would be ambiguous (seconds? nanoseconds?) everywhere but in timeouts.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		return typeError(n, "want a duration string such as 30s, 6h or 7d")
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return typeError(n, err.Error())
	}
	*d = v
	return nil
}

// MarshalYAML writes d as its string form.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// MarshalJSON writes d as its string form.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads the string form.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: %w", err)
	}
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// Timeout is a Duration that, for IBM Fusion compatibility, also accepts a
// bare integer as a number of seconds (Fusion recipes write "timeout: 300").
type Timeout Duration

// Std returns t as a time.Duration.
func (t Timeout) Std() time.Duration { return time.Duration(t) }

// String formats t like a Duration.
func (t Timeout) String() string { return Duration(t).String() }

// UnmarshalYAML accepts a duration string or an integer number of seconds.
func (t *Timeout) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
		v, err := strconv.ParseInt(n.Value, 0, 64)
		if err != nil || v > int64(1<<63-1)/int64(time.Second) {
			return typeError(n, fmt.Sprintf("timeout %s out of range", n.Value))
		}
		*t = Timeout(time.Duration(v) * time.Second)
		return nil
	}
	var d Duration
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		return typeError(n, "want a duration string such as 30s, or whole seconds")
	}
	if err := d.UnmarshalYAML(n); err != nil {
		return err
	}
	*t = Timeout(d)
	return nil
}

// MarshalYAML writes t as its string form.
func (t Timeout) MarshalYAML() (any, error) { return t.String(), nil }

// MarshalJSON writes t as its string form.
func (t Timeout) MarshalJSON() ([]byte, error) { return json.Marshal(t.String()) }

// UnmarshalJSON reads the string form.
func (t *Timeout) UnmarshalJSON(b []byte) error { return (*Duration)(t).UnmarshalJSON(b) }

// Size is a byte count written as bytes ("65536", 65536) or with a binary
// unit ("256KiB", "4MiB").
type Size int64

// Byte sizes.
const (
	KiB Size = 1 << 10
	MiB Size = 1 << 20
)

// ParseSize parses bytes, "NB", "NKiB" or "NMiB".
func ParseSize(s string) (Size, error) {
	s = strings.TrimSpace(s)
	unit := Size(1)
	num := s
	switch {
	case strings.HasSuffix(s, "KiB"):
		unit, num = KiB, strings.TrimSuffix(s, "KiB")
	case strings.HasSuffix(s, "MiB"):
		unit, num = MiB, strings.TrimSuffix(s, "MiB")
	case strings.HasSuffix(s, "B"):
		num = strings.TrimSuffix(s, "B")
	}
	v, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || v < 0 || v > int64(1<<62)/int64(unit) {
		return 0, fmt.Errorf("invalid size %q: want bytes or a number with KiB or MiB", s)
	}
	return Size(v) * unit, nil
}

// String writes s with the largest binary unit that divides it.
func (s Size) String() string {
	switch {
	case s != 0 && s%MiB == 0:
		return strconv.FormatInt(int64(s/MiB), 10) + "MiB"
	case s != 0 && s%KiB == 0:
		return strconv.FormatInt(int64(s/KiB), 10) + "KiB"
	}
	return strconv.FormatInt(int64(s), 10)
}

// UnmarshalYAML accepts an integer or a size string.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!str" && n.ShortTag() != "!!int") {
		return typeError(n, "want a size such as 262144 or 256KiB")
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return typeError(n, err.Error())
	}
	*s = v
	return nil
}

// MarshalYAML writes s as its string form.
func (s Size) MarshalYAML() (any, error) { return s.String(), nil }

// MarshalJSON writes s as its string form.
func (s Size) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads the string form (or a plain number).
func (s *Size) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		var n int64
		if err2 := json.Unmarshal(b, &n); err2 != nil {
			return fmt.Errorf("size: %w", err)
		}
		*s = Size(n)
		return nil
	}
	v, err := ParseSize(str)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Command is an argv list. For IBM Fusion compatibility it may also be
// written as a string holding a JSON array (`command: '["sh", "-c", "..."]'`).
// A plain string is refused: it would need a shell, and a plan says so
// explicitly with ["sh", "-c", "..."].
type Command []string

// UnmarshalYAML accepts a sequence of strings or a JSON array in a string.
func (c *Command) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.SequenceNode:
		var argv []string
		for _, e := range n.Content {
			if e.Kind != yaml.ScalarNode {
				return typeError(e, "command: want a list of strings")
			}
			argv = append(argv, e.Value)
		}
		*c = argv
		return nil
	case yaml.ScalarNode:
		s := strings.TrimSpace(n.Value)
		if !strings.HasPrefix(s, "[") {
			return typeError(n, `command: want an argv list, or a string holding a JSON array; use ["sh", "-c", "..."] for a shell line`)
		}
		var argv []string
		if err := json.Unmarshal([]byte(s), &argv); err != nil {
			return typeError(n, fmt.Sprintf("command: string is not a JSON array of strings: %v", err))
		}
		*c = argv
		return nil
	}
	return typeError(n, "command: want an argv list")
}

// typeError reports a decoding problem at n's line in the shape yaml.v3 uses,
// so it joins the decoder's other errors instead of aborting the decode.
func typeError(n *yaml.Node, msg string) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %s", n.Line, msg)}}
}
