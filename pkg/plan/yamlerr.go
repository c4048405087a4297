package plan

import (
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// yaml.v3 reports a value of the wrong kind as "cannot unmarshal !!str `x`
// into int" with the line only: no field, and a Go type where the plan's
// reader wants a word. The helpers here find the field the message is about
// in the parsed document, by line and by the value the message quotes, and
// say what was wanted in the plan's words. A field is named only when
// exactly one node fits; otherwise the message keeps its line alone.

var typeErrRE = regexp.MustCompile("^cannot unmarshal (!!\\w+)(?: `(.*)`)? into (\\S+)$")

// fieldIndex lists a document's value nodes with their field paths
// (spec.destinations[0].name), for finding the one a message is about.
type fieldIndex struct {
	values []indexedNode
	keys   []indexedNode // mapping keys: the path of the field they name
}

type indexedNode struct {
	path string
	node *yaml.Node
}

// newFieldIndex indexes roots (documents or blocks).
func newFieldIndex(roots ...*yaml.Node) *fieldIndex {
	ix := &fieldIndex{}
	seen := map[*yaml.Node]bool{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		if n == nil || seen[n] {
			return
		}
		seen[n] = true
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
			return
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := joinPath(path, k.Value)
				ix.keys = append(ix.keys, indexedNode{p, k})
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, path+"["+strconv.Itoa(i)+"]")
			}
		}
		if path != "" {
			ix.values = append(ix.values, indexedNode{path, n})
		}
	}
	for _, r := range roots {
		walk(r, "")
	}
	return ix
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// only returns the path of the one entry of nodes that fits, or "".
func only(nodes []indexedNode, fits func(*yaml.Node) bool) string {
	path := ""
	for _, e := range nodes {
		if !fits(e.node) {
			continue
		}
		if path != "" {
			return ""
		}
		path = e.path
	}
	return path
}

// key is the path of the one field named name on line.
func (ix *fieldIndex) key(line int, name string) string {
	return only(ix.keys, func(n *yaml.Node) bool { return n.Line == line && n.Value == name })
}

// describe turns one decoding message about line into the field it is
// about (or "") and the message in the plan's words. A message that names
// its field already ("keepWithin: …") gets the field's whole path instead.
func (ix *fieldIndex) describe(line int, msg string) (path, text string) {
	if m := typeErrRE.FindStringSubmatch(msg); m != nil {
		tag, value, into := m[1], m[2], m[3]
		path = only(ix.values, func(n *yaml.Node) bool {
			return n.Line == line && n.ShortTag() == tag && quotedValueIs(value, n.Value)
		})
		if into == "secret.Ref" {
			// Whatever stands there may be the secret itself: never repeat it.
			return path, "want a secret reference such as {env: NAME} or {file: PATH}, not the value itself"
		}
		return path, "want " + typeWords(into) + ", got " + valueWords(tag, value)
	}
	if strings.HasPrefix(msg, "unknown field ") {
		return "", msg
	}
	if name, rest, ok := strings.Cut(msg, ": "); ok && fieldNameRE.MatchString(name) {
		// The message names its field: only that field's path will do.
		if path = ix.key(line, name); path == "" {
			return "", msg
		}
		return path, rest
	}
	return only(ix.values, func(n *yaml.Node) bool { return n.Line == line && n.Kind == yaml.ScalarNode }), msg
}

var fieldNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]*$`)

// quotedValueIs says whether v is the value yaml.v3 quoted as q: values of
// more than 10 bytes are quoted as their first 7 and "...".
func quotedValueIs(q, v string) bool {
	if p, ok := strings.CutSuffix(q, "..."); ok && len(v) > 10 {
		return strings.HasPrefix(v, p)
	}
	return q == v
}

// typeWords names the Go type yaml.v3 wanted as what a plan writes.
func typeWords(t string) string {
	switch {
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "map["), strings.HasPrefix(t, "*"):
		return "a mapping"
	}
	switch t {
	case "int", "int8", "int16", "int32", "int64":
		return "an integer"
	case "uint", "uint8", "uint16", "uint32", "uint64":
		return "a whole number >= 0"
	case "float32", "float64":
		return "a number"
	case "bool":
		return "true or false"
	case "string":
		return "a string"
	case "time.Duration":
		return "a duration such as 30s or 6h"
	}
	return "a mapping"
}

// valueWords says what the plan holds where yaml.v3 quoted it.
func valueWords(tag, value string) string {
	switch tag {
	case "!!map":
		return "a mapping"
	case "!!seq":
		return "a list"
	case "!!null":
		return "nothing"
	case "!!str":
		return strconv.Quote(value)
	}
	return value
}

// yamlFields lists the fields a decoding target takes, as a plan writes
// them (its yaml tags), sorted: the hint of an unknown-field message.
func yamlFields(into any) []string {
	t := reflect.TypeOf(into)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	var out []string
	var add func(t reflect.Type)
	add = func(t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			switch {
			case name == "-" || !f.IsExported():
			case strings.Contains(opts, "inline") && f.Type.Kind() == reflect.Struct:
				add(f.Type)
			case name == "":
				out = append(out, strings.ToLower(f.Name))
			default:
				out = append(out, name)
			}
		}
	}
	add(t)
	sort.Strings(out)
	return out
}
