// Command schemagen writes the JSON Schema (draft 2020-12) of every event
// payload into events/schema, one file per event type named <noun>.<verb>.json.
//
// Shapes (property names, JSON types, formats, nullability) come from the Go
// payload structs by reflection and descriptions from their doc comments in
// payloads.go. What Validate enforces cannot be read by reflection, so it is
// written down once in the rules table below; the events package's tests
// check the table against Validate by mutating example payloads, and this
// package's test checks that the committed files are what the generator makes.
//
// Run it with `go generate ./...` in the events module. It never writes
// anything outside the schema directory.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/backstream/backstream/events"
)

// Draft is the JSON Schema dialect of every generated file.
const Draft = "https://json-schema.org/draft/2020-12/schema"

// IDBase prefixes the $id of every schema; the file name follows it.
const IDBase = "https://github.com/backstream/backstream/events/schema/"

// Patterns the payloads' Validate methods use (events.ValidName, problems.sha256).
const (
	namePattern   = `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`
	sha256Pattern = `^[0-9a-f]{64}$`
	// optNamePattern is namePattern or the empty string (a name that is
	// optional and, empty, means unset).
	optNamePattern = `^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$`
)

// rules holds, per event type and JSON path, what Validate enforces beyond the
// Go type. Paths name nested list items with "[]" (objects[].sha256). A rule
// list is comma separated:
//
//	required   the field must be present; strings must be non-empty
//	name       required, a lowercase DNS label (events.ValidName)
//	sha256     required, 64 lowercase hex digits
//	min0       an integer >= 0
//	gt0        required, an integer > 0
//	nonempty   required, a list with at least one item
//	enum=a|b   required, one of the listed strings
//	optname    optional; when set (non-empty), a lowercase DNS label
//	optenum=a|b optional; when set (non-empty), one of the listed strings
//	const=N    the integer N (absent means 0 in Go, which Validate accepts)
//	zeroless   a date-time that must not be Go's zero time (Validate's IsZero)
//
// Fields without rules are optional and only typed.
var rules = map[string]map[string]string{
	events.BackupRequested: {
		"trigger": "enum=schedule|cli|api|event",
	},
	events.BackupSucceeded: {
		"backupId":              "required",
		"bytes":                 "min0",
		"storedBytes":           "min0",
		"plaintextSha256":       "sha256",
		"durationMs":            "min0",
		"source":                "required",
		"objects":               "nonempty",
		"objects[].destination": "name",
		"objects[].key":         "required",
		"objects[].manifestKey": "required",
		"objects[].size":        "min0",
		"objects[].sha256":      "sha256",
	},
	events.BackupFailed: {
		"stage":  "required",
		"reason": "required",
	},
	events.BackupCancelled: {
		"by": "required",
	},
	events.BackupMissed: {
		"expectedBy": "required,zeroless",
		"slot":       "required,zeroless",
	},
	events.StepCompleted: {
		"step":       "required",
		"durationMs": "min0",
	},
	events.StepFailed: {
		"step":   "required",
		"reason": "required",
	},
	events.HookCompleted: {
		"hook":       "name",
		"op":         "name",
		"durationMs": "min0",
	},
	events.HookFailed: {
		"hook":       "name",
		"op":         "name",
		"error":      "required",
		"onError":    "enum=fail|continue",
		"durationMs": "min0",
	},
	events.SnapshotStarted: {
		"source":      "required",
		"dataSubject": "required",
		"chunkSize":   "gt0",
	},
	events.SnapshotProgressed: progressRules,
	events.UploadProgressed:   progressRules,
	events.RestoreProgressed:  progressRules,
	events.SnapshotCompleted: {
		"source":     "required",
		"bytes":      "min0",
		"chunks":     "min0",
		"sha256":     "sha256",
		"exitStatus": "const=0",
		"durationMs": "min0",
	},
	events.SnapshotFailed: {
		"source": "required",
		"error":  "required",
		"bytes":  "min0",
	},
	events.FilterCompleted: {
		"frames":   "min0",
		"bytesIn":  "min0",
		"bytesOut": "min0",
	},
	events.FilterFailed: {
		"error": "required",
	},
	events.UploadRequested: {
		"destination": "name",
		"from":        "name",
		"key":         "required",
		"manifestKey": "required",
		"size":        "min0",
		"sha256":      "sha256",
	},
	events.UploadCompleted: {
		"destination": "name",
		"key":         "required",
		"manifestKey": "required",
		"size":        "min0",
		"sha256":      "sha256",
		"durationMs":  "min0",
	},
	events.UploadFailed: {
		"destination": "name",
		"error":       "required",
	},
	events.VerifyCompleted: {
		"destination": "name",
		"key":         "required",
		"size":        "min0",
		"sha256":      "sha256",
		"frames":      "min0",
		"mode":        "enum=full|ciphertext",
		"durationMs":  "min0",
	},
	events.VerifyFailed: {
		"destination": "name",
		"error":       "required",
	},
	events.RetentionCompleted: {
		"destination":        "name",
		"kept[].backupId":    "required",
		"kept[].reasons":     "nonempty",
		"removed[].backupId": "required",
	},
	events.RetentionFailed: {
		"destination": "name",
		"error":       "required",
	},
	events.CompensationCompleted: {},
	events.CompensationFailed: {
		"op":       "required",
		"error":    "required",
		"attempts": "min1",
	},
	events.RestoreRequested: {
		"backupId":    "required",
		"destination": "name",
	},
	events.RestoreStarted: {
		"backupId":    "required",
		"destination": "name",
		"key":         "required",
		"size":        "min0",
	},
	events.RestoreSucceeded: {
		"backupId":   "required",
		"bytes":      "min0",
		"sha256":     "sha256",
		"durationMs": "min0",
	},
	events.RestoreFailed: {
		"stage": "required",
		"error": "required",
	},
	events.RestoreCancelled: {
		"by": "required",
	},
	events.ScrubRequested: {
		"trigger":     "enum=schedule|cli|api|event",
		"mode":        "optenum=full|ciphertext",
		"destination": "optname",
	},
	events.ScrubCompleted: {
		"mode":                       "enum=full|ciphertext",
		"status":                     "enum=damaged|incomplete|repaired|clean",
		"destinations":               "nonempty",
		"destinations[].destination": "name",
		"destinations[].checked":     "min0",
		"destinations[].verified":    "min0",
		"destinations[].corrupt":     "min0",
		"destinations[].missing":     "min0",
		"destinations[].repaired":    "min0",
		"destinations[].bytes":       "min0",
		"damaged[].destination":      "name",
		"damaged[].backupId":         "required",
		"damaged[].problem":          "enum=corrupt|missing",
		"durationMs":                 "min0",
	},
	events.ScrubFailed: {
		"error": "required",
	},
	events.DrillRequested: {
		"trigger": "enum=schedule|cli|api|event",
	},
	events.DrillSucceeded: {
		"backupId":    "required",
		"destination": "name",
		"target":      "required",
		"bytes":       "min0",
		"rows":        "min0",
		"restoreMs":   "min0",
		"checkMs":     "min0",
		"durationMs":  "min0",
	},
	events.DrillFailed: {
		"stage":       "enum=prepare|restore|check|cleanup",
		"error":       "required",
		"destination": "optname",
		"durationMs":  "min0",
	},
	events.DrillMissed: {
		"expectedBy": "required,zeroless",
		"slot":       "required,zeroless",
	},
}

var progressRules = map[string]string{
	"bytes":     "min0",
	"chunks":    "min0",
	"elapsedMs": "min0",
}

// conditional is a requirement that holds only when another field has a
// given value (draft 2020-12 if/then).
type conditional struct {
	field, value string
	// then maps the fields required in that case to their rules.
	then map[string]string
}

var conditionals = map[string][]conditional{
	events.BackupRequested: {{field: "trigger", value: events.TriggerSchedule, then: map[string]string{"slot": "required"}}},
	events.ScrubRequested:  {{field: "trigger", value: events.TriggerSchedule, then: map[string]string{"slot": "required"}}},
	events.DrillRequested:  {{field: "trigger", value: events.TriggerSchedule, then: map[string]string{"slot": "required"}}},
	events.VerifyCompleted: {{field: "mode", value: "full", then: map[string]string{"plaintextSha256": "sha256"}}},
}

const forwardCompat = "Properties not listed here are allowed: a newer publisher may add fields, " +
	"and an older consumer must accept and ignore them (forward compatibility)."

func main() {
	dir := flag.String("dir", "schema", "directory to write the schema files into")
	src := flag.String("src", "payloads.go", "Go file holding the payload structs, for descriptions")
	flag.Parse()
	if err := run(*dir, *src); err != nil {
		fmt.Fprintln(os.Stderr, "schemagen:", err)
		os.Exit(1)
	}
}

// run writes every schema into dir and removes *.json files there that no
// event type owns any more.
func run(dir, src string) error {
	files, err := Generate(src)
	if err != nil {
		return err
	}
	old, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	for _, f := range old {
		if _, ok := files[filepath.Base(f)]; !ok {
			if err := os.Remove(f); err != nil {
				return fmt.Errorf("remove stale schema: %w", err)
			}
		}
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("write schema: %w", err)
		}
	}
	return nil
}

// FileName is the schema file of event type typ: "<noun>.<verb>.json".
func FileName(typ string) string { return strings.TrimPrefix(typ, events.TypePrefix) + ".json" }

// Generate returns the schema of every registered event type, keyed by file
// name. src is payloads.go, read only for doc comments.
func Generate(src string) (map[string][]byte, error) {
	docs, err := readDocs(src)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte)
	for _, typ := range events.Types() {
		b, err := schemaFor(typ, docs)
		if err != nil {
			return nil, fmt.Errorf("schema of %s: %w", typ, err)
		}
		out[FileName(typ)] = b
	}
	for typ := range rules {
		if _, ok := events.NewPayload(typ); !ok {
			return nil, fmt.Errorf("rules name unknown event type %s", typ)
		}
	}
	return out, nil
}

func schemaFor(typ string, docs map[string]string) ([]byte, error) {
	p, _ := events.NewPayload(typ)
	t := reflect.TypeOf(p)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	used := make(map[string]bool)
	g := gen{typ: typ, rules: rules[typ], used: used, docs: docs}
	obj, err := g.object(t, "")
	if err != nil {
		return nil, err
	}
	var allOf []any
	for _, c := range conditionals[typ] {
		props := obj["properties"].(map[string]any)
		for _, f := range append(sortedKeys(c.then), c.field) {
			if _, ok := props[f]; !ok {
				return nil, fmt.Errorf("conditional names %q, no field of %s", f, t.Name())
			}
		}
		then := map[string]any{}
		props = map[string]any{}
		var req []string
		for _, f := range sortedKeys(c.then) {
			prop := map[string]any{}
			required, err := applyRules(prop, c.then[f])
			if err != nil {
				return nil, fmt.Errorf("conditional %s: %w", f, err)
			}
			if len(prop) > 0 {
				props[f] = prop
			}
			if required {
				req = append(req, f)
			}
		}
		if len(props) > 0 {
			then["properties"] = props
		}
		if len(req) > 0 {
			then["required"] = req
		}
		allOf = append(allOf, map[string]any{
			"if": map[string]any{
				"properties": map[string]any{c.field: map[string]any{"const": c.value}},
				"required":   []string{c.field},
			},
			"then": then,
		})
	}
	if len(allOf) > 0 {
		obj["allOf"] = allOf
	}
	for path := range rules[typ] {
		if !used[path] {
			return nil, fmt.Errorf("rule for %q names no field of %s", path, t.Name())
		}
	}
	obj["$schema"] = Draft
	obj["$id"] = IDBase + FileName(typ)
	obj["title"] = typ + " data"
	desc := docs[t.Name()]
	if desc != "" {
		desc += " "
	}
	obj["description"] = desc + "The data of a CloudEvent of type " + typ + ". " + forwardCompat

	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(obj); err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return buf.Bytes(), nil
}

type gen struct {
	typ   string
	rules map[string]string
	used  map[string]bool
	docs  map[string]string
}

var timeType = reflect.TypeFor[time.Time]()

// object is the schema of struct t found at path (JSON names, "" at the top).
func (g gen) object(t reflect.Type, path string) (map[string]any, error) {
	props := map[string]any{}
	var required []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		if f.Anonymous {
			return nil, fmt.Errorf("%s.%s: embedded fields are not supported", t.Name(), f.Name)
		}
		name := jsonName(f)
		if name == "" {
			continue
		}
		fpath := name
		if path != "" {
			fpath = path + "." + name
		}
		prop, err := g.value(f.Type, fpath, true)
		if err != nil {
			return nil, err
		}
		if d := g.docs[t.Name()+"."+f.Name]; d != "" {
			prop["description"] = d
		}
		if r, ok := g.rules[fpath]; ok {
			g.used[fpath] = true
			req, err := applyRules(prop, r)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", fpath, err)
			}
			if req {
				required = append(required, name)
			}
		}
		props[name] = prop
	}
	obj := map[string]any{
		"type":                 "object",
		"properties":           props,
		"additionalProperties": true,
	}
	if len(required) > 0 {
		obj["required"] = required
	}
	return obj, nil
}

// value is the schema of a value of Go type t. nullable is set for fields,
// whose pointers, lists and maps may be null: encoding/json writes a nil one
// without omitempty as null and reads null as nil. (It also reads null into a
// string or number as a no-op, but no publisher should send that, so
// scalars are not nullable.)
func (g gen) value(t reflect.Type, path string, nullable bool) (map[string]any, error) {
	if t == timeType {
		return map[string]any{"type": "string", "format": "date-time"}, nil
	}
	orNull := func(s string) any {
		if nullable {
			return []string{s, "null"}
		}
		return s
	}
	switch t.Kind() {
	case reflect.Pointer:
		v, err := g.value(t.Elem(), path, false)
		if err != nil {
			return nil, err
		}
		if nullable {
			v["type"] = []any{v["type"], "null"}
		}
		return v, nil
	case reflect.String:
		return map[string]any{"type": "string"}, nil
	case reflect.Bool:
		return map[string]any{"type": "boolean"}, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return map[string]any{"type": "integer"}, nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer", "minimum": 0}, nil
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}, nil
	case reflect.Slice:
		items, err := g.value(t.Elem(), path+"[]", false)
		if err != nil {
			return nil, err
		}
		return map[string]any{"type": orNull("array"), "items": items}, nil
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			return nil, fmt.Errorf("%s: map keys must be strings", path)
		}
		vals, err := g.value(t.Elem(), path+"{}", false)
		if err != nil {
			return nil, err
		}
		return map[string]any{"type": orNull("object"), "additionalProperties": vals}, nil
	case reflect.Struct:
		return g.object(t, path)
	}
	return nil, fmt.Errorf("%s: unsupported Go type %s", path, t)
}

// applyRules adds the constraints of rule list r to prop and reports whether
// the field is required.
func applyRules(prop map[string]any, r string) (required bool, err error) {
	for _, rule := range strings.Split(r, ",") {
		key, arg, _ := strings.Cut(rule, "=")
		switch key {
		case "required":
			required = true
			notNull(prop)
			if prop["type"] == "string" && prop["format"] == nil {
				prop["minLength"] = 1
			}
		case "name":
			required = true
			prop["pattern"] = namePattern
		case "sha256":
			required = true
			prop["pattern"] = sha256Pattern
		case "min0":
			prop["minimum"] = 0
		case "min1":
			required = true
			prop["minimum"] = 1
		case "gt0":
			required = true
			prop["exclusiveMinimum"] = 0
		case "nonempty":
			required = true
			notNull(prop)
			prop["minItems"] = 1
		case "enum":
			required = true
			prop["enum"] = strings.Split(arg, "|")
		case "optname":
			prop["pattern"] = optNamePattern
		case "optenum":
			prop["enum"] = append([]string{""}, strings.Split(arg, "|")...)
		case "const":
			var n json.Number = json.Number(arg)
			prop["const"] = n
		case "zeroless":
			prop["not"] = map[string]any{"const": time.Time{}.Format(time.RFC3339)}
		default:
			return false, fmt.Errorf("unknown rule %q", rule)
		}
	}
	return required, nil
}

// notNull makes a nullable property non-null: Validate rejects a nil value
// of a field it requires. A property without a type (in an if/then branch)
// gets an explicit "not null".
func notNull(prop map[string]any) {
	switch t := prop["type"].(type) {
	case nil:
		prop["not"] = map[string]any{"type": "null"}
	case []any:
		prop["type"] = t[0]
	case []string:
		prop["type"] = t[0]
	}
}

// jsonName returns a field's JSON name, or "" when encoding/json skips it.
func jsonName(f reflect.StructField) string {
	tag := f.Tag.Get("json")
	if tag == "-" {
		return ""
	}
	name, _, _ := strings.Cut(tag, ",")
	if name == "" {
		name = f.Name
	}
	return name
}

// readDocs returns the doc comments of the struct types in src, keyed by
// "Type" and "Type.Field", each joined into one line.
func readDocs(src string) (map[string]string, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, src, nil, parser.ParseComments)
	if err != nil {
		return nil, fmt.Errorf("read doc comments: %w", err)
	}
	docs := map[string]string{}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.TYPE {
			continue
		}
		for _, s := range gd.Specs {
			ts := s.(*ast.TypeSpec)
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				continue
			}
			doc := ts.Doc
			if doc == nil && len(gd.Specs) == 1 {
				doc = gd.Doc
			}
			docs[ts.Name.Name] = oneLine(doc)
			for _, fl := range st.Fields.List {
				text := oneLine(fl.Doc)
				if text == "" {
					text = oneLine(fl.Comment)
				}
				for _, n := range fl.Names {
					if text != "" {
						docs[ts.Name.Name+"."+n.Name] = text
					}
				}
			}
		}
	}
	if len(docs) == 0 {
		return nil, errors.New("read doc comments: no struct types in " + src)
	}
	return docs, nil
}

func oneLine(g *ast.CommentGroup) string {
	if g == nil {
		return ""
	}
	return strings.Join(strings.Fields(g.Text()), " ")
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
