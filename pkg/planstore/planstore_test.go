package planstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/bus"
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

// mustPlan decodes a plan JSON written by rawPlan.
func mustPlan(t *testing.T, data string) *plan.Plan {
	t.Helper()
	p, err := plan.FromJSON([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// jsonOf returns p as stored, whose source argv tells versions apart.
func jsonOf(p *plan.Plan) string {
	if p == nil {
		return "<nil>"
	}
	b, _ := p.Marshal()
	return string(b)
}

func specWithArgv(arg string) string {
	return `{"source":{"type":"command","command":{"argv":["` + arg + `"]}},"destinations":[{"name":"local","type":"filesystem","filesystem":{"path":"/tmp/x"}}]}`
}

func TestPutReportsTheRevision(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	store := planstore.New(b.Plans, plugins.Default())

	first, err := store.Put(ctx, mustPlan(t, rawPlan("p", specWithArgv("v1"))))
	if err != nil || !first.Changed || first.Revision == 0 {
		t.Fatalf("first put: %+v %v", first, err)
	}
	same, err := store.Put(ctx, mustPlan(t, rawPlan("p", specWithArgv("v1"))))
	if err != nil || same.Changed || same.Revision != first.Revision {
		t.Fatalf("unchanged put: %+v %v, want revision %d unchanged", same, err, first.Revision)
	}
	second, err := store.Put(ctx, mustPlan(t, rawPlan("p", specWithArgv("v2"))))
	if err != nil || !second.Changed || second.Revision <= first.Revision {
		t.Fatalf("second put: %+v %v", second, err)
	}
	p, rev, err := store.GetCurrent(ctx, "p")
	if err != nil || rev != second.Revision || !strings.Contains(jsonOf(p), "v2") {
		t.Fatalf("current: revision %d %v, want %d; %s", rev, err, second.Revision, jsonOf(p))
	}
	if _, err := store.Put(ctx, mustPlan(t, rawPlan("p", `{"source":{"type":"command","command":{"argv":[]}},"destinations":[]}`))); err == nil {
		t.Fatal("an invalid plan was stored")
	}
	if _, rev, _ := store.GetCurrent(ctx, "p"); rev != second.Revision {
		t.Fatalf("a refused put moved the revision to %d", rev)
	}
}

func TestGetRevisionOutlivesChangeAndDelete(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	store := planstore.New(b.Plans, plugins.Default())

	v1, err := store.Put(ctx, mustPlan(t, rawPlan("p", specWithArgv("v1"))))
	if err != nil {
		t.Fatal(err)
	}
	v2, err := store.Put(ctx, mustPlan(t, rawPlan("p", specWithArgv("v2"))))
	if err != nil {
		t.Fatal(err)
	}
	// Another plan's revision sits between, so revisions of p are not
	// consecutive and a revision of "other" is no revision of p.
	other, err := store.Put(ctx, mustPlan(t, rawPlan("other", goodSpec)))
	if err != nil {
		t.Fatal(err)
	}

	p, err := store.GetRevision(ctx, "p", v1.Revision)
	if err != nil || !strings.Contains(jsonOf(p), `"v1"`) {
		t.Fatalf("revision %d: %v %s", v1.Revision, err, jsonOf(p))
	}
	if err := store.Delete(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Get(ctx, "p"); !errors.Is(err, planstore.ErrNotFound) {
		t.Fatalf("get after delete: %v, want ErrNotFound", err)
	}
	if _, _, err := store.GetCurrent(ctx, "p"); !errors.Is(err, planstore.ErrNotFound) {
		t.Fatalf("current after delete: %v, want ErrNotFound", err)
	}
	for _, rev := range []uint64{v1.Revision, v2.Revision} {
		if p, err := store.GetRevision(ctx, "p", rev); err != nil || p.Name() != "p" {
			t.Errorf("revision %d after delete: %v", rev, err)
		}
	}
	if good, _, err := store.List(ctx); err != nil || len(good) != 1 || good[0].Name() != "other" {
		t.Fatalf("list after delete: %v %v", good, err)
	}

	// The delete marker is the revision after v2's other's.
	deleted := other.Revision + 1
	tests := []struct {
		name string
		plan string
		rev  uint64
	}{
		{"revision 0 (the KV's latest) of a stored plan", "other", 0},
		{"another plan's revision", "p", other.Revision},
		{"the delete marker", "p", deleted},
		{"a revision not written yet", "p", deleted + 100},
		{"a plan that never was", "never", v1.Revision},
		{"a name that is no key", "a b", v1.Revision},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := store.GetRevision(ctx, tt.plan, tt.rev)
			if !errors.Is(err, planstore.ErrRevisionGone) || p != nil {
				t.Fatalf("plan %v, err %v; want ErrRevisionGone", p, err)
			}
			if want := fmt.Sprintf("plan %s revision %d", tt.plan, tt.rev); !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, err)
			}
		})
	}
}

func TestGetRevisionPushedOutOfHistory(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	store := planstore.New(b.Plans, plugins.Default())

	first, err := store.Put(ctx, mustPlan(t, rawPlan("p", specWithArgv("v0"))))
	if err != nil {
		t.Fatal(err)
	}
	// PlansHistory-1 later revisions: the first is the oldest one kept.
	for i := 1; i < bus.PlansHistory; i++ {
		if _, err := store.Put(ctx, mustPlan(t, rawPlan("p", specWithArgv(fmt.Sprintf("v%d", i))))); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := store.GetRevision(ctx, "p", first.Revision); err != nil || !strings.Contains(jsonOf(p), `"v0"`) {
		t.Fatalf("oldest kept revision: %v %s", err, jsonOf(p))
	}
	if err := store.Delete(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	_, err = store.GetRevision(ctx, "p", first.Revision)
	if !errors.Is(err, planstore.ErrRevisionGone) || !strings.Contains(err.Error(), fmt.Sprintf("history of %d revisions", bus.PlansHistory)) {
		t.Fatalf("revision pushed out by a delete: %v, want ErrRevisionGone naming the history", err)
	}
	if _, err := store.GetRevision(ctx, "p", first.Revision+1); err != nil {
		t.Fatalf("the next revision: %v", err)
	}
}

func TestGetRevisionValidatesWhatIsStored(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	store := planstore.New(b.Plans, plugins.Default())

	good, err := store.Put(ctx, mustPlan(t, rawPlan("p", goodSpec)))
	if err != nil {
		t.Fatal(err)
	}
	// A raw write over it, then an apply that fixes the plan: the bad
	// revision stays bad for whoever is pinned to it.
	bad, err := b.Plans.Put(ctx, "p", []byte(rawPlan("p", `{"source":{"type":"command","command":{"argv":[]}},"destinations":[{"name":"local","type":"filesystem","filesystem":{"path":"/tmp/x"}}]}`)))
	if err != nil {
		t.Fatal(err)
	}
	renamed, err := b.Plans.Put(ctx, "p", []byte(rawPlan("other", goodSpec)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, mustPlan(t, rawPlan("p", specWithArgv("fixed")))); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		rev  uint64
		want []string
	}{
		{"an invalid plan", bad, []string{"plan p revision " + fmt.Sprint(bad), "argv: required"}},
		{"another plan's name", renamed, []string{"plan p revision " + fmt.Sprint(renamed), `metadata.name: "other", but stored under key "p"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := store.GetRevision(ctx, "p", tt.rev)
			if !errors.Is(err, planstore.ErrInvalidPlan) || p != nil {
				t.Fatalf("plan %v, err %v; want ErrInvalidPlan", p, err)
			}
			for _, w := range append(tt.want, "not written by `backstream plan apply`?") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
	if p, err := store.GetRevision(ctx, "p", good.Revision); err != nil || p.Name() != "p" {
		t.Fatalf("the good revision: %v", err)
	}
}
