package plan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// ErrUnknownType is what a Checker wraps when a plugin type is not registered.
var ErrUnknownType = errors.New("unknown plugin type")

// Checker checks plugin configuration blocks. The plan package knows no
// plugins; the program that holds the plugin registry implements Checker.
//
// Each method returns nil for a good config, or an error describing every
// problem (several may be joined with errors.Join; each joined error becomes
// its own Problem). An unregistered type is the checker's error too, wrapping
// ErrUnknownType. Methods must not do I/O against the configured service:
// validation runs where the plan is applied, not where it runs.
type Checker interface {
	CheckSource(Plugin) error
	CheckDestination(Plugin) error
}

// Plugin is a plugin block: the plugin's type and its configuration, written
// in YAML under a key named by the type:
//
//	type: filesystem
//	filesystem: {path: ./data/backups}
//
// The configuration stays opaque to this package; the plugin decodes it with
// Decode.
type Plugin struct {
	Type string
	// Config is the block under the type's key as generic YAML/JSON values
	// (maps, lists, strings, numbers, bools); nil when the block is absent.
	Config map[string]any

	node *yaml.Node // the block as parsed, for line numbers; nil after JSON
}

// Decode decodes the configuration block into the plugin's config struct
// strictly: a field the struct does not know is an error naming its line in
// the plan file (when the plan came from YAML). An absent block decodes as
// empty, leaving into unchanged.
func (p Plugin) Decode(into any) error {
	var src []byte
	var err error
	node := p.parsedBlock()
	if node != nil {
		src, err = yaml.Marshal(node)
	}
	if node == nil || err != nil {
		if p.Config == nil {
			src = []byte("{}")
		} else if src, err = yaml.Marshal(p.Config); err != nil {
			return fmt.Errorf("%s config: %w", p.Type, err)
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(src))
	dec.KnownFields(true)
	err = dec.Decode(into)
	if err == nil {
		return nil
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("%s config: %w", p.Type, err)
	}
	// Paths from the block as decoded, lines from the plan as written.
	var doc yaml.Node
	_ = yaml.Unmarshal(src, &doc)
	ix := newFieldIndex(&doc)
	var lines map[int]int
	if node != nil {
		lines = lineMap(&doc, node)
	}
	errs := make([]error, len(te.Errors))
	for i, m := range te.Errors {
		fe := &FieldError{Problem{Message: m}}
		if sm := lineRE.FindStringSubmatch(m); sm != nil {
			line, _ := strconv.Atoi(sm[1])
			fe.Message = m[len(sm[0]):]
			if sm := unknownFieldRE.FindStringSubmatch(fe.Message); sm != nil {
				fe.Path = ix.key(line, sm[1])
				fe.Message = fmt.Sprintf("unknown field (the %s block takes %s)", p.Type, strings.Join(yamlFields(into), ", "))
			} else {
				fe.Path, fe.Message = ix.describe(line, fe.Message)
			}
			fe.Line = lines[line]
		}
		errs[i] = fe
	}
	return errors.Join(errs...)
}

// FieldError is a problem with one field of a plugin block, found decoding
// it: a value of the wrong kind or a field the plugin does not know. Its
// Path is inside the block ("argv", "env.PGPASSWORD"; "" when it could not
// be told), its Line in the plan file (0 when the plan did not come from
// YAML).
type FieldError struct{ Problem }

func (e *FieldError) Error() string {
	if e.Line > 0 {
		return "line " + strconv.Itoa(e.Line) + ": " + e.Problem.String()
	}
	return e.Problem.String()
}

// parsedBlock returns the block as parsed from YAML, for line numbers, or
// nil when there is none or Config was changed since.
func (p Plugin) parsedBlock() *yaml.Node {
	if p.node == nil {
		return nil
	}
	var cfg map[string]any
	if err := p.node.Decode(&cfg); err != nil || !reflect.DeepEqual(normalize(cfg), any(p.Config)) {
		return nil
	}
	return p.node
}

var lineRE = regexp.MustCompile(`^line (\d+): `)

// lineMap maps the lines of doc, a re-encoding of orig parsed again, to
// orig's lines by walking both trees side by side (they have the same shape).
func lineMap(doc, orig *yaml.Node) map[int]int {
	if len(doc.Content) == 0 {
		return nil
	}
	m := map[int]int{}
	var walk func(a, b *yaml.Node)
	walk = func(a, b *yaml.Node) {
		if _, seen := m[a.Line]; !seen {
			m[a.Line] = b.Line
		}
		for i := 0; i < len(a.Content) && i < len(b.Content); i++ {
			walk(a.Content[i], b.Content[i])
		}
	}
	walk(doc.Content[0], orig)
	return m
}

// unmarshalPlugin reads a plugin mapping. extra names the keys the caller
// handles itself (name, allowEmpty); their value nodes are returned.
func unmarshalPlugin(n *yaml.Node, p *Plugin, extra ...string) (map[string]*yaml.Node, error) {
	if n.Kind != yaml.MappingNode {
		return nil, typeError(n, "want a mapping with type and a block named by the type")
	}
	var errs []string
	got := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		got[n.Content[i].Value] = n.Content[i+1]
	}
	if t, ok := got["type"]; ok {
		if t.Kind != yaml.ScalarNode {
			errs = append(errs, fmt.Sprintf("line %d: type: want a string", t.Line))
		} else {
			p.Type = t.Value
		}
	}
	out := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch {
		case k.Value == "type":
		case p.Type != "" && k.Value == p.Type:
			if v.ShortTag() == "!!null" {
				continue
			}
			if v.Kind != yaml.MappingNode {
				errs = append(errs, fmt.Sprintf("line %d: %s: want a mapping", v.Line, k.Value))
				continue
			}
			textScalars(v, map[*yaml.Node]bool{})
			var cfg map[string]any
			if err := v.Decode(&cfg); err != nil {
				errs = append(errs, fmt.Sprintf("line %d: %s: %v", v.Line, k.Value, err))
				continue
			}
			p.Config = normalize(cfg).(map[string]any)
			p.node = v
		case contains(extra, k.Value):
			out[k.Value] = v
		default:
			hint := ""
			if p.Type != "" {
				hint = fmt.Sprintf(" (a %s plugin takes its config under %q)", p.Type, p.Type)
			}
			errs = append(errs, fmt.Sprintf("line %d: unknown field %q%s", k.Line, k.Value, hint))
		}
	}
	if len(errs) > 0 {
		return out, &yaml.TypeError{Errors: errs}
	}
	return out, nil
}

// textScalars re-tags as strings, in place, the scalars of a plugin block
// that JSON, the plans bucket's format, cannot carry as written: timestamps
// (2024-01-02 would come back as 2024-01-02T00:00:00Z), binary and custom
// tags, and numbers or booleans not written the one way JSON and YAML both
// write them (0x10, 1_000, 1.0, 1e3, .nan, True). The plugin then sees the
// text that was written both when the plan is applied and after the bucket,
// so a plan cannot pass validation with one value and run with another; a
// port written 0x10 is refused as a string instead.
func textScalars(n *yaml.Node, seen map[*yaml.Node]bool) {
	if n == nil || seen[n] {
		return
	}
	seen[n] = true
	textScalars(n.Alias, seen)
	for _, c := range n.Content {
		textScalars(c, seen)
	}
	if n.Kind != yaml.ScalarNode {
		return
	}
	switch n.ShortTag() {
	case "!!str", "!!null":
		return
	case "!!bool":
		if n.Value == "true" || n.Value == "false" {
			return
		}
	case "!!int":
		if i, err := strconv.ParseInt(n.Value, 10, 64); err == nil && strconv.FormatInt(i, 10) == n.Value {
			return
		}
	case "!!float":
		if f, err := strconv.ParseFloat(n.Value, 64); err == nil && strconv.FormatFloat(f, 'g', -1, 64) == n.Value {
			if j, err := json.Marshal(f); err == nil && string(j) == n.Value {
				return
			}
		}
	}
	n.Tag = "!!str"
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// normalize turns decoded YAML or JSON values into JSON-safe generic values:
// maps with string keys, and every integer as int64 (float64 beyond it), so
// a block decoded from YAML equals the same block decoded from JSON.
func normalize(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			out[k] = normalize(e)
		}
		return out
	case map[any]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			out[fmt.Sprint(k)] = normalize(e)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = normalize(e)
		}
		return out
	case int:
		return int64(t)
	case uint64:
		if t <= 1<<63-1 {
			return int64(t)
		}
		return float64(t)
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i
		}
		f, err := t.Float64()
		if err != nil {
			// Beyond float64 (1e400): ±Inf could not be stored again, and
			// no plugin wants such a number; keep the text, as for YAML.
			return t.String()
		}
		return f
	}
	return v
}

// pluginJSON writes the plugin in the same shape as YAML, plus extra fields.
func pluginJSON(p Plugin, extra map[string]any) ([]byte, error) {
	m := map[string]any{}
	for k, v := range extra {
		m[k] = v
	}
	if p.Type != "" {
		m["type"] = p.Type
		if p.Config != nil {
			m[p.Type] = p.Config
		}
	}
	return json.Marshal(m)
}

// pluginFromJSON reads the JSON shape; extra keys are returned raw.
func pluginFromJSON(b []byte, p *Plugin, extra ...string) (map[string]json.RawMessage, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	out := map[string]json.RawMessage{}
	if t, ok := raw["type"]; ok {
		if err := json.Unmarshal(t, &p.Type); err != nil {
			return nil, fmt.Errorf("type: %w", err)
		}
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := raw[k]
		switch {
		case k == "type":
		case p.Type != "" && k == p.Type:
			dec := json.NewDecoder(bytes.NewReader(v))
			dec.UseNumber()
			var cfg map[string]any
			if err := dec.Decode(&cfg); err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			if cfg != nil {
				p.Config = normalize(cfg).(map[string]any)
			}
		case contains(extra, k):
			out[k] = v
		default:
			return nil, fmt.Errorf("unknown field %q", k)
		}
	}
	return out, nil
}

// Source is the plan's source plugin block. AllowEmpty says an empty dump is
// a valid backup (default false: an empty dump fails the run).
type Source struct {
	Plugin
	AllowEmpty bool
}

// UnmarshalYAML reads type, the type's block and allowEmpty.
func (s *Source) UnmarshalYAML(n *yaml.Node) error {
	extra, err := unmarshalPlugin(n, &s.Plugin, "allowEmpty")
	var errs []string
	if te, ok := err.(*yaml.TypeError); ok {
		errs = te.Errors
	} else if err != nil {
		return err
	}
	if v, ok := extra["allowEmpty"]; ok {
		if v.ShortTag() != "!!bool" {
			errs = append(errs, fmt.Sprintf("line %d: allowEmpty: want true or false", v.Line))
		} else if err := v.Decode(&s.AllowEmpty); err != nil {
			errs = append(errs, fmt.Sprintf("line %d: allowEmpty: %v", v.Line, err))
		}
	}
	if len(errs) > 0 {
		return &yaml.TypeError{Errors: errs}
	}
	return nil
}

// MarshalJSON writes the YAML shape.
func (s Source) MarshalJSON() ([]byte, error) {
	extra := map[string]any{}
	if s.AllowEmpty {
		extra["allowEmpty"] = true
	}
	return pluginJSON(s.Plugin, extra)
}

// UnmarshalJSON reads the YAML shape.
func (s *Source) UnmarshalJSON(b []byte) error {
	*s = Source{}
	extra, err := pluginFromJSON(b, &s.Plugin, "allowEmpty")
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	if v, ok := extra["allowEmpty"]; ok {
		if err := json.Unmarshal(v, &s.AllowEmpty); err != nil {
			return fmt.Errorf("source: allowEmpty: %w", err)
		}
	}
	return nil
}

// Destination is one named destination plugin block, with its own
// retention policy beside the plugin's block (not inside it: the plugin
// knows nothing of retention).
type Destination struct {
	Name string
	Plugin
	// Retention is the destination's own retention block. When set it
	// replaces the plan's spec.retention for this destination as a whole
	// (no field is merged), so a fast local destination can keep a few
	// backups and a remote one many (Spec.RetentionFor).
	Retention *Retention
}

// UnmarshalYAML reads name, type, the type's block and retention. It is
// the decoder's obsolete-style unmarshaler so that the retention block is
// decoded by the plan's own decoder: strictly (an unknown field is an
// error) and with the lines of the plan file.
func (d *Destination) UnmarshalYAML(unmarshal func(any) error) error {
	var c nodeCapture
	if err := unmarshal(&c); err != nil {
		return err
	}
	extra, err := unmarshalPlugin(c.node, &d.Plugin, "name", "retention")
	var errs []string
	if te, ok := err.(*yaml.TypeError); ok {
		errs = te.Errors
	} else if err != nil {
		return err
	}
	if v, ok := extra["name"]; ok {
		if v.Kind != yaml.ScalarNode {
			errs = append(errs, fmt.Sprintf("line %d: name: want a string", v.Line))
		} else {
			d.Name = v.Value
		}
	}
	if _, ok := extra["retention"]; ok {
		// The other keys land in Rest, which takes anything: unmarshalPlugin
		// has judged them already.
		var r struct {
			Retention *Retention     `yaml:"retention"`
			Rest      map[string]any `yaml:",inline"`
		}
		err := unmarshal(&r)
		var te *yaml.TypeError
		switch {
		case errors.As(err, &te):
			errs = append(errs, te.Errors...)
		case err != nil:
			return err
		default:
			d.Retention = r.Retention
		}
	}
	if len(errs) > 0 {
		return &yaml.TypeError{Errors: errs}
	}
	return nil
}

// MarshalJSON writes the YAML shape.
func (d Destination) MarshalJSON() ([]byte, error) {
	extra := map[string]any{"name": d.Name}
	if d.Retention != nil {
		extra["retention"] = d.Retention
	}
	return pluginJSON(d.Plugin, extra)
}

// UnmarshalJSON reads the YAML shape; the retention block strictly, as
// FromJSON reads the rest of a plan.
func (d *Destination) UnmarshalJSON(b []byte) error {
	*d = Destination{}
	extra, err := pluginFromJSON(b, &d.Plugin, "name", "retention")
	if err != nil {
		return fmt.Errorf("destination: %w", err)
	}
	if v, ok := extra["name"]; ok {
		if err := json.Unmarshal(v, &d.Name); err != nil {
			return fmt.Errorf("destination: name: %w", err)
		}
	}
	if v, ok := extra["retention"]; ok {
		dec := json.NewDecoder(bytes.NewReader(v))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&d.Retention); err != nil {
			return fmt.Errorf("destination %s: retention: %w", d.Name, err)
		}
	}
	return nil
}
