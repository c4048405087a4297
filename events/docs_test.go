package events_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/backstream/backstream/events"
)

// TestDocsDescribeEveryTypeAndField keeps docs/events.md honest: every type
// has its section, and every field of its schema, nested ones as
// list[].field, has a row in that section's table.
func TestDocsDescribeEveryTypeAndField(t *testing.T) {
	b, err := os.ReadFile("../docs/events.md")
	if err != nil {
		t.Fatalf("read docs: %v", err)
	}
	sections := map[string]string{}
	for _, part := range strings.Split(string(b), "\n### `")[1:] {
		typ, body, _ := strings.Cut(part, "`")
		sections[typ] = body
	}
	for _, typ := range events.Types() {
		body, ok := sections[typ]
		if !ok {
			t.Errorf("docs/events.md: no section for %s", typ)
			continue
		}
		if subj := "`" + events.Subject(typ, "<plan>") + "`"; !strings.Contains(body, subj) {
			t.Errorf("docs/events.md %s: subject %s not given", typ, subj)
		}
		s, _ := events.Schema(typ)
		var schema map[string]any
		if err := json.Unmarshal(s, &schema); err != nil {
			t.Fatal(err)
		}
		for _, f := range schemaFields(schema, "") {
			if !strings.Contains(body, "| `"+f+"` |") {
				t.Errorf("docs/events.md %s: field %s has no row", typ, f)
			}
		}
	}
	for typ := range sections {
		if _, ok := events.NewPayload(typ); !ok {
			t.Errorf("docs/events.md: section for unknown type %s", typ)
		}
	}
}

func schemaFields(schema map[string]any, prefix string) []string {
	props, _ := schema["properties"].(map[string]any)
	var out []string
	for name, raw := range props {
		prop := raw.(map[string]any)
		out = append(out, prefix+name)
		if items, ok := prop["items"].(map[string]any); ok && items["properties"] != nil {
			out = append(out, schemaFields(items, prefix+name+"[].")...)
		}
	}
	return out
}
