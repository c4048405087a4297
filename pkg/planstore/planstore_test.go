package planstore_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/plugins"
)

// rawPlan is a plan as someone with write access to the bucket would put it
// there with a stock client, bypassing Put. spec is the JSON of the spec.
func rawPlan(name, spec string) string {
	return `{"apiVersion":"backstream.io/v1alpha1","kind":"Plan","metadata":{"name":"` + name + `"},"spec":` + spec + `}`
}

const goodSpec = `{"source":{"type":"command","command":{"argv":["true"]}},"destinations":[{"name":"local","type":"filesystem","filesystem":{"path":"/tmp/x"}}]}`

func TestGetValidatesWhatIsStored(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	store := planstore.New(b.Plans, plugins.Default())

	tests := []struct {
		name string
		key  string
		give string
		// want are the parts the error must hold; none means the plan is good.
		want []string
	}{
		{"a valid plan", "good", rawPlan("good", goodSpec), nil},
		{"empty argv", "noargv",
			rawPlan("noargv", `{"source":{"type":"command","command":{"argv":[]}},"destinations":[{"name":"local","type":"filesystem","filesystem":{"path":"/tmp/x"}}]}`),
			[]string{"plan noargv", "argv: required"}},
		{"every problem at once", "many",
			rawPlan("many", `{"source":{"type":"command","command":{"argv":[]}},"destinations":[{"name":"local","type":"nope"}],"retention":{"keepDaily":-2}}`),
			[]string{"plan many", "argv: required", "spec.destinations[0]", "keepDaily"}},
		{"an unknown field", "extra",
			rawPlan("extra", `{"source":{"type":"command","command":{"argv":["true"]}},"destinations":[],"runAs":"root"}`),
			[]string{"plan extra", `unknown field "runAs"`}},
		{"an unknown field in the plugin block", "shell",
			rawPlan("shell", `{"source":{"type":"command","command":{"argv":["true"],"shell":"sh -c id"}},"destinations":[{"name":"local","type":"filesystem","filesystem":{"path":"/tmp/x"}}]}`),
			[]string{"plan shell", "shell"}},
		{"not JSON", "garbage", "#!/bin/sh\nid", []string{"plan garbage", "decode plan json"}},
		{"stored under another plan's key", "victim", rawPlan("other", goodSpec),
			[]string{"plan victim", `metadata.name: "other", but stored under key "victim"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := b.Plans.Put(ctx, tt.key, []byte(tt.give)); err != nil {
				t.Fatal(err)
			}
			p, err := store.Get(ctx, tt.key)
			if len(tt.want) == 0 {
				if err != nil || p.Name() != tt.key {
					t.Fatalf("get: %v", err)
				}
				return
			}
			if !errors.Is(err, planstore.ErrInvalidPlan) || p != nil {
				t.Fatalf("get: plan %v, err %v; want ErrInvalidPlan", p, err)
			}
			for _, w := range append(tt.want, "not written by `backstream plan apply`?") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestListKeepsValidPlansAndReportsInvalidOnes(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	store := planstore.New(b.Plans, plugins.Default())
	p, err := plan.FromJSON([]byte(rawPlan("applied", goodSpec)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Plans.Put(ctx, "raw", []byte(rawPlan("raw", `{"source":{"type":"command","command":{}},"destinations":[]}`))); err != nil {
		t.Fatal(err)
	}

	good, bad, err := store.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(good) != 1 || good[0].Name() != "applied" {
		t.Fatalf("good plans: %v", good)
	}
	if len(bad) != 1 || !errors.Is(bad["raw"], planstore.ErrInvalidPlan) || !strings.Contains(bad["raw"].Error(), "argv: required") {
		t.Fatalf("invalid plans: %v", bad)
	}
}
