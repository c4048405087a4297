package events_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/backstream/backstream/events"
)

// compiled compiles the schema of every registered type, with format
// assertions on (draft 2020-12 only annotates formats by default).
func compiled(t *testing.T) map[string]*jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	out := make(map[string]*jsonschema.Schema)
	for _, typ := range events.Types() {
		b, ok := events.Schema(typ)
		if !ok {
			t.Fatalf("Schema(%s): missing", typ)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("Schema(%s): %v", typ, err)
		}
		url := "mem:///" + typ + ".json"
		if err := c.AddResource(url, doc); err != nil {
			t.Fatalf("add schema %s: %v", typ, err)
		}
		s, err := c.Compile(url)
		if err != nil {
			t.Fatalf("compile schema %s: %v", typ, err)
		}
		out[typ] = s
	}
	return out
}

func validateJSON(s *jsonschema.Schema, data []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return err
	}
	return s.Validate(inst)
}

func TestEveryTypeHasExampleAndSchema(t *testing.T) {
	types := events.Types()
	for _, typ := range types {
		if _, ok := examples[typ]; !ok {
			t.Errorf("%s: no example payload", typ)
		}
		if _, ok := events.Schema(typ); !ok {
			t.Errorf("%s: no schema", typ)
		}
	}
	for typ := range examples {
		if !slices.Contains(types, typ) {
			t.Errorf("example for unregistered type %s", typ)
		}
	}
	files, err := os.ReadDir("schema")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f.Name() == "README.md" {
			continue
		}
		typ := events.TypePrefix + strings.TrimSuffix(f.Name(), ".json")
		if !strings.HasSuffix(f.Name(), ".json") || !slices.Contains(types, typ) {
			t.Errorf("schema/%s: belongs to no registered event type", f.Name())
		}
	}
}

func TestSchemaUnknownType(t *testing.T) {
	for _, typ := range []string{"", "backup.requested", "io.backstream.backup.exploded", "io.backstream.README"} {
		if _, ok := events.Schema(typ); ok {
			t.Errorf("Schema(%q): got a schema for an unknown type", typ)
		}
	}
}

func TestSchemaDeclaresDraftAndForwardCompatibility(t *testing.T) {
	for _, typ := range events.Types() {
		b, _ := events.Schema(typ)
		var s map[string]any
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if s["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
			t.Errorf("%s: $schema = %v", typ, s["$schema"])
		}
		if s["additionalProperties"] != true {
			t.Errorf("%s: additionalProperties = %v, want true", typ, s["additionalProperties"])
		}
		if s["title"] != typ+" data" {
			t.Errorf("%s: title = %v", typ, s["title"])
		}
	}
}

func TestExamplesAreValid(t *testing.T) {
	schemas := compiled(t)
	for typ, p := range examples {
		t.Run(typ, func(t *testing.T) {
			if got := p.EventType(); got != typ {
				t.Fatalf("EventType() = %s", got)
			}
			if err := p.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			b, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := validateJSON(schemas[typ], b); err != nil {
				t.Fatalf("schema: %v", err)
			}
		})
	}
}

// TestSchemaPropertiesMatchStruct checks, independently of the generator,
// that every JSON field of a payload struct is a property of its schema and
// every property is a field, at every level.
func TestSchemaPropertiesMatchStruct(t *testing.T) {
	for _, typ := range events.Types() {
		t.Run(typ, func(t *testing.T) {
			p, _ := events.NewPayload(typ)
			b, _ := events.Schema(typ)
			var s map[string]any
			if err := json.Unmarshal(b, &s); err != nil {
				t.Fatal(err)
			}
			compareFields(t, typ, reflect.TypeOf(p).Elem(), s)
		})
	}
}

func compareFields(t *testing.T, path string, st reflect.Type, schema map[string]any) {
	t.Helper()
	props, _ := schema["properties"].(map[string]any)
	seen := map[string]bool{}
	for i := range st.NumField() {
		f := st.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		seen[name] = true
		prop, ok := props[name].(map[string]any)
		if !ok {
			t.Errorf("%s.%s: field %s has no schema property", path, name, f.Name)
			continue
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
			if items, ok := prop["items"].(map[string]any); ok {
				prop = items
			}
		}
		if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[time.Time]() {
			compareFields(t, path+"."+name, ft, prop)
		}
	}
	for name := range props {
		if !seen[name] {
			t.Errorf("%s.%s: schema property has no struct field", path, name)
		}
	}
}

// step addresses a value inside decoded JSON: a string is an object key, an
// int a list index.
type step = any

type mutation struct {
	name  string
	apply func(container map[string]any, key string)
}

func set(v any) func(map[string]any, string) {
	return func(m map[string]any, k string) { m[k] = v }
}

// mutationsFor lists the ways to change a property: leave it out, give it
// the wrong type, and give it the edge values of its type. They depend on the
// type only, not on the constraints the schema declares, so a constraint
// that Validate enforces and the schema lacks is caught as well as the
// reverse.
func mutationsFor(prop map[string]any) []mutation {
	ms := []mutation{{name: "delete", apply: func(m map[string]any, k string) { delete(m, k) }}}
	typ := prop["type"]
	if list, ok := typ.([]any); ok {
		ms = append(ms, mutation{"null", set(nil)})
		typ = list[0]
	}
	switch {
	case typ == "string" && prop["format"] == "date-time":
		ms = append(ms,
			mutation{"wrong type", set(json.Number("12"))},
			mutation{"not a time", set("yesterday")},
			mutation{"zero time", set("0001-01-01T00:00:00Z")},
		)
	case typ == "string":
		ms = append(ms,
			mutation{"wrong type", set(json.Number("12"))},
			mutation{"empty", set("")},
			mutation{"odd text", set("Not_Valid!")},
		)
	case typ == "integer":
		ms = append(ms,
			mutation{"wrong type", set("twelve")},
			mutation{"negative", set(json.Number("-1"))},
			mutation{"zero", set(json.Number("0"))},
			mutation{"one", set(json.Number("1"))},
		)
	case typ == "array":
		ms = append(ms,
			mutation{"wrong type", set("twelve")},
			mutation{"empty list", set([]any{})},
		)
	default:
		ms = append(ms, mutation{"wrong type", set("twelve")})
	}
	return ms
}

// TestSchemaAgreesWithValidate mutates every example payload field by field
// and checks that the schema and Go (decode, then Validate) accept or reject
// each mutation alike, and that Validate names the field it rejects. It is
// what keeps the generator's rules table and the Validate methods together.
func TestSchemaAgreesWithValidate(t *testing.T) {
	schemas := compiled(t)
	for typ, p := range examples {
		t.Run(typ, func(t *testing.T) {
			b, _ := events.Schema(typ)
			var schema map[string]any
			if err := json.Unmarshal(b, &schema); err != nil {
				t.Fatal(err)
			}
			root := decodeNumbers(t, mustMarshal(t, p))
			checked := walkMutations(t, typ, schemas[typ], schema, root, nil)
			if checked == 0 {
				t.Fatal("no mutation checked")
			}
		})
	}
}

func walkMutations(t *testing.T, typ string, s *jsonschema.Schema, schema map[string]any, root any, at []step) int {
	t.Helper()
	checked := 0
	props, _ := schema["properties"].(map[string]any)
	// An unknown property must be accepted by both (forward compatibility).
	checked += checkMutation(t, typ, s, root, at, "zzFutureField", mutation{"unknown property", set("from a newer publisher")})
	for name, raw := range props {
		prop := raw.(map[string]any)
		for _, m := range mutationsFor(prop) {
			checked += checkMutation(t, typ, s, root, at, name, m)
		}
		items, _ := prop["items"].(map[string]any)
		list, _ := lookup(root, append(slices.Clone(at), name)).([]any)
		if items != nil && items["properties"] != nil && len(list) > 0 {
			checked += walkMutations(t, typ, s, items, root, append(slices.Clone(at), name, 0))
		}
	}
	return checked
}

func checkMutation(t *testing.T, typ string, s *jsonschema.Schema, root any, at []step, key string, m mutation) int {
	t.Helper()
	field := fieldPath(at, key)
	doc := decodeNumbers(t, mustMarshal(t, root))
	m.apply(lookup(doc, at).(map[string]any), key)
	data := mustMarshal(t, doc)

	schemaErr := validateJSON(s, data)
	p, _ := events.NewPayload(typ)
	goErr := json.Unmarshal(data, p)
	decoded := goErr == nil
	if decoded {
		goErr = p.Validate()
	}
	if (schemaErr == nil) != (goErr == nil) {
		t.Errorf("%s %s: schema says %v, Go says %v", field, m.name, verdict(schemaErr), verdict(goErr))
		return 1
	}
	if decoded && goErr != nil && !strings.Contains(goErr.Error(), field+":") {
		t.Errorf("%s %s: Validate error %q does not name the field", field, m.name, goErr)
	}
	return 1
}

func verdict(err error) string {
	if err == nil {
		return "valid"
	}
	return "invalid (" + strings.ReplaceAll(err.Error(), "\n", " ") + ")"
}

func fieldPath(at []step, key string) string {
	var sb strings.Builder
	for _, s := range at {
		switch v := s.(type) {
		case string:
			if sb.Len() > 0 {
				sb.WriteString(".")
			}
			sb.WriteString(v)
		case int:
			fmt.Fprintf(&sb, "[%d]", v)
		}
	}
	if sb.Len() > 0 {
		sb.WriteString(".")
	}
	sb.WriteString(key)
	return sb.String()
}

func lookup(doc any, at []step) any {
	for _, s := range at {
		switch v := s.(type) {
		case string:
			doc = doc.(map[string]any)[v]
		case int:
			doc = doc.([]any)[v]
		}
	}
	return doc
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decodeNumbers(t *testing.T, b []byte) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestSchemaAgreesWithValidateCases covers what field-by-field mutation
// cannot: the other branch of a conditional, nulls, and combinations.
func TestSchemaAgreesWithValidateCases(t *testing.T) {
	schemas := compiled(t)
	tests := []struct {
		name      string
		typ       string
		give      string
		wantValid bool
	}{
		{"cli trigger needs no slot", events.BackupRequested, `{"trigger":"cli"}`, true},
		{"schedule trigger needs a slot", events.BackupRequested, `{"trigger":"schedule"}`, false},
		{"schedule trigger with slot", events.BackupRequested, `{"trigger":"schedule","slot":"2026-03-01T02:00:00Z"}`, true},
		{"empty object", events.BackupRequested, `{}`, false},
		{"ciphertext verify needs no plaintext digest", events.VerifyCompleted,
			`{"destination":"s3","key":"k","sha256":"` + digestA + `","mode":"ciphertext"}`, true},
		{"ciphertext verify ignores a bad plaintext digest", events.VerifyCompleted,
			`{"destination":"s3","key":"k","sha256":"` + digestA + `","mode":"ciphertext","plaintextSha256":"x"}`, true},
		{"full verify needs the plaintext digest", events.VerifyCompleted,
			`{"destination":"s3","key":"k","sha256":"` + digestA + `","mode":"full"}`, false},
		{"null filter chain", events.FilterCompleted, `{"chain":null}`, true},
		{"null retention lists", events.RetentionCompleted, `{"destination":"s3","kept":null,"removed":null}`, true},
		{"removed backup needs no reason", events.RetentionCompleted, `{"destination":"s3","removed":[{"backupId":"b"}]}`, true},
		{"kept backup needs a reason", events.RetentionCompleted, `{"destination":"s3","kept":[{"backupId":"b"}]}`, false},
		{"empty compensation", events.CompensationCompleted, `{}`, true},
		{"uppercase destination", events.UploadFailed, `{"destination":"S3","error":"e"}`, false},
		{"destination of 64 characters", events.UploadFailed, `{"destination":"` + strings.Repeat("a", 64) + `","error":"e"}`, false},
		{"uppercase digest", events.RestoreSucceeded, `{"backupId":"b","sha256":"` + strings.ToUpper(digestA) + `"}`, false},
		{"zero missed slot", events.BackupMissed, `{"expectedBy":"2026-03-01T03:00:00Z","slot":"0001-01-01T00:00:00Z"}`, false},
		{"negative chunk size", events.SnapshotStarted, `{"source":"s","dataSubject":"d","chunkSize":-1}`, false},
		{"progress without destination", events.SnapshotProgressed, `{"bytes":1}`, true},
		{"failed snapshot with null exit status", events.SnapshotFailed, `{"source":"s","error":"e","exitStatus":null}`, true},
		{"schedule trigger with null slot", events.BackupRequested, `{"trigger":"schedule","slot":null}`, false},
		{"cli trigger with null slot", events.BackupRequested, `{"trigger":"cli","slot":null}`, true},
		{"null objects", events.BackupSucceeded, `{"backupId":"b","plaintextSha256":"` + digestA + `","source":"s","objects":null}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			schemaErr := validateJSON(schemas[tt.typ], []byte(tt.give))
			p, _ := events.NewPayload(tt.typ)
			goErr := json.Unmarshal([]byte(tt.give), p)
			if goErr == nil {
				goErr = p.Validate()
			}
			if (schemaErr == nil) != tt.wantValid || (goErr == nil) != tt.wantValid {
				t.Errorf("want valid=%v; schema says %s, Go says %s", tt.wantValid, verdict(schemaErr), verdict(goErr))
			}
		})
	}
}
