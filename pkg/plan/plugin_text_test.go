package plan_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/storage/s3"
)

// A plugin must see the same config when the plan is applied (from YAML)
// and when it is used (from the plans bucket's JSON); FuzzParse found a
// filesystem path 2024-01-02 that became 2024-01-02T00:00:00Z in the bucket.
func TestPluginScalarsKeepTheirText(t *testing.T) {
	tests := []struct {
		name    string
		give    string // the s3 block's prefix and concurrency
		prefix  string
		want    int
		wantErr string
	}{
		{"timestamp", "prefix: 2024-01-02", "2024-01-02", 0, ""},
		{"float text", "prefix: 1.10", "1.10", 0, ""},
		{"exponent", "prefix: 1e3", "1e3", 0, ""},
		{"hex", "prefix: 0x10", "0x10", 0, ""},
		{"nan", "prefix: .nan", ".nan", 0, ""},
		{"bool word", "prefix: True", "True", 0, ""},
		{"binary", "prefix: !!binary aGk=", "aGk=", 0, ""},
		{"canonical int", "concurrency: 8", "", 8, ""},
		{"hex int is refused", "concurrency: 0x10", "", 0, `p.yaml:14: spec.destinations[0].s3.concurrency: want an integer, got "0x10"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := "apiVersion: backstream.io/v1alpha1\nkind: Plan\nmetadata: {name: p}\nspec:\n  source: {type: command, command: {argv: [echo]}}\n" +
				"  destinations:\n    - name: d\n      type: s3\n      s3:\n        endpoint: s3.local\n        bucket: b\n        accessKey: {env: AK}\n        secretKey: {env: SK}\n        " + tt.give + "\n  alert: {expectEvery: 1d}\n"
			p, err := plan.Parse("p.yaml", []byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			p.Defaults()
			applied := newSeeing()
			err = p.Validate(applied)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, err := p.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			back, err := plan.FromJSON(b)
			if err != nil {
				t.Fatal(err)
			}
			used := newSeeing()
			if err := back.Validate(used); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(applied.got, used.got) {
				t.Fatalf("applied %+v, used %+v", applied.got[1], used.got[1])
			}
			c := used.got[1].(*s3.Config)
			if c.Prefix != tt.prefix || c.Concurrency != tt.want {
				t.Fatalf("prefix %q concurrency %d, want %q %d", c.Prefix, c.Concurrency, tt.prefix, tt.want)
			}
		})
	}
}

// TestASecretWrittenByValueIsNotRepeated: a plugin's secret written in the
// plan instead of a reference is refused, naming the field and not the
// value, which may be the secret itself; a plan from the bucket (no
// lines) names the field too.
func TestASecretWrittenByValueIsNotRepeated(t *testing.T) {
	const key = "AKIAEXAMPLEKEY"
	doc := "apiVersion: backstream.io/v1alpha1\nkind: Plan\nmetadata: {name: p}\nspec:\n  source: {type: command, command: {argv: [echo]}}\n" +
		"  destinations:\n    - name: d\n      type: s3\n      s3:\n        endpoint: s3.local\n        bucket: b\n        accessKey: " + key + "\n        secretKey: {env: SK}\n"
	p, err := plan.Parse("p.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	stored, err := plan.FromJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	const want = "spec.destinations[0].s3.accessKey: want a secret reference such as {env: NAME} or {file: PATH}, not the value itself"
	for _, tt := range []struct {
		name string
		p    *plan.Plan
		want string
	}{{"applied", p, "p.yaml:12: " + want}, {"stored", stored, "plan p: " + want}} {
		err := tt.p.Validate(newSeeing())
		if err == nil || err.Error() != tt.want || strings.Contains(err.Error(), key[:7]) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.want)
		}
	}
}
