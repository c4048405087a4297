package plan_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/plugins"
	"gopkg.in/yaml.v3"
)

// fuzzYAMLSeeds are the example plans and a few small documents that reach
// the parts of a plan the examples leave out.
func fuzzYAMLSeeds(f *testing.F) [][]byte {
	f.Helper()
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(files) == 0 {
		f.Fatalf("example plans: %v (found %d)", err, len(files))
	}
	var seeds [][]byte
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	seeds = append(seeds, []byte(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: dated}
spec:
  source: {type: files, files: {path: /srv/2024-01-02}}
  destinations: [{name: a, type: filesystem, filesystem: {path: 2024-01-02}}]
  alert: {expectEvery: 1d}
`), []byte(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: full, labels: {team: payments}}
spec:
  source: {type: command, command: {argv: [echo, hi]}}
  hooks:
    - name: db
      type: sql
      timeout: 30
      onError: continue
      ops:
        - {name: lock, sql: "LOCK", timeout: 90m, onError: fail, inverseOp: unlock}
        - {name: unlock, sql: "UNLOCK"}
    - name: web
      type: http
      http: {baseURL: "http://x", headers: {A: b}}
      ops: [{name: ping, http: {method: POST, url: /p, headers: {C: d}, body: "{}", expectStatus: 204}}]
    - name: local
      type: exec
      exec: {env: {K: {file: /k}}, workdir: /w}
      ops: [{name: run, command: [true]}]
  workflows:
    - {name: backup, sequence: [{hook: db/lock}, snapshot, {hook: db/unlock}]}
    - {name: restore, sequence: [restore, {hook: web/ping}]}
  filters:
    compression: zstd
    level: better
    encryption: {type: aes-256-gcm, recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]}
  chunkSize: 1MiB
  destinations:
    - {name: a, type: filesystem, filesystem: {path: /a}}
  schedule: {cron: "@every 6h", timezone: Europe/Berlin, jitter: 10m, startingDeadline: 2h, missedRunPolicy: skip, concurrencyPolicy: replace, paused: true}
  retention: {keepLast: 3, keepQuarterly: -1, keepWithin: 1y2m, keepWithinDaily: 30d, keepTags: [pinned]}
  verify: {enabled: false}
  alert: {expectEvery: 36h, grace: 90s}
  runTimeout: 90m
`),
		[]byte("kind: Plan\n---\nkind: Plan\n"),
		[]byte("a: &a [*a]\n"),
		[]byte("spec: {chunkSize: 99999999999999999999}\n"),
	)
	return seeds
}

// seeing checks plugin blocks as plugins.Registry does and keeps the config
// structs the plugins decoded: what a plugin sees of a plan must not change
// between apply (from YAML) and use (from the KV bucket's JSON).
type seeing struct {
	reg *plugins.Registry
	got []any
}

func newSeeing() *seeing { return &seeing{reg: plugins.Default()} }

func (s *seeing) decode(p plan.Plugin) func(any) error {
	return func(into any) error {
		err := p.Decode(into)
		s.got = append(s.got, into)
		return err
	}
}

func (s *seeing) CheckSource(p plan.Plugin) error {
	sp, err := s.reg.Sources.Lookup(p.Type)
	if err != nil {
		return fmt.Errorf("%w: %v", plan.ErrUnknownType, err)
	}
	return sp.Check(s.decode(p))
}

func (s *seeing) CheckDestination(p plan.Plugin) error {
	if _, err := s.reg.Storages.Lookup(p.Type); err != nil {
		return fmt.Errorf("%w: %v", plan.ErrUnknownType, err)
	}
	return s.reg.Storages.Check(p.Type, s.decode(p))
}

// checkDecoded is what both fuzz targets require of a plan that decoded:
// Validate gives the same verdict before and after Defaults (its contract),
// and a plan that validates is stored by Marshal and read back by FromJSON
// unchanged, validates again, and its encoding is a fixed point.
func checkDecoded(t *testing.T, p, twin *plan.Plan) {
	t.Helper()
	early := twin.Validate(newSeeing())
	p.Defaults()
	seen := newSeeing()
	err := p.Validate(seen)
	if (early == nil) != (err == nil) {
		t.Fatalf("Validate before Defaults says %v, after says %v", early, err)
	}
	if err != nil {
		var ve *plan.ValidationError
		if !errors.As(err, &ve) || len(ve.Problems) == 0 {
			t.Fatalf("invalid plan without a *ValidationError listing problems: %T %v", err, err)
		}
		return
	}
	b, err := p.Marshal()
	if err != nil {
		t.Fatalf("a valid plan does not marshal: %v", err)
	}
	back, err := plan.FromJSON(b)
	if err != nil {
		t.Fatalf("FromJSON refuses what Marshal wrote: %v\n%s", err, b)
	}
	seenBack := newSeeing()
	if err := back.Validate(seenBack); err != nil {
		t.Fatalf("a valid plan is invalid after the KV round trip: %v\n%s", err, b)
	}
	if !reflect.DeepEqual(seen.got, seenBack.got) {
		t.Fatalf("plugins see another config after the KV round trip:\n%#v\n%#v\n%s", seen.got, seenBack.got, b)
	}
	back.Defaults()
	b2, err := back.Marshal()
	if err != nil || !bytes.Equal(b, b2) {
		t.Fatalf("plan changed in the KV round trip (%v):\n%s\n%s", err, b, b2)
	}
	// Both sides above went through JSON, which could lose the same thing on
	// both; YAML's encoding of the structs compares the plan as decoded.
	p.File = ""
	y1, err1 := yaml.Marshal(p)
	y2, err2 := yaml.Marshal(back)
	if err1 != nil || err2 != nil || !bytes.Equal(y1, y2) {
		t.Fatalf("plan changed in the KV round trip (%v, %v):\n%s\n%s", err1, err2, y1, y2)
	}
}

// FuzzParse decodes arbitrary YAML as a plan file, as `plan apply -f` does.
func FuzzParse(f *testing.F) {
	for _, s := range fuzzYAMLSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := plan.Parse("fuzz.yaml", b)
		if err != nil {
			var de *plan.DecodeError
			if !errors.As(err, &de) || len(de.Problems) == 0 {
				t.Fatalf("refusal without a *DecodeError listing problems: %T %v", err, err)
			}
			return
		}
		twin, err := plan.Parse("fuzz.yaml", b)
		if err != nil {
			t.Fatalf("second parse of the same bytes fails: %v", err)
		}
		checkDecoded(t, p, twin)
	})
}

// FuzzFromJSON decodes arbitrary bytes as a plan from the KV bucket of plans,
// which anyone with write access to it could have written.
func FuzzFromJSON(f *testing.F) {
	for _, s := range fuzzYAMLSeeds(f) {
		p, err := plan.Parse("seed.yaml", s)
		if err != nil {
			continue
		}
		p.Defaults()
		b, err := p.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"spec":{"source":{"type":"command","command":{"argv":["sh","-c","id"]}}}}`))
	// found by hand after FuzzParse's finding: a number beyond float64 became +Inf
	f.Add([]byte(`{"apiVersion":"backstream.io/v1alpha1","kind":"Plan","metadata":{"name":"j"},"spec":{"source":{"type":"command","command":{"argv":["echo"]}},"destinations":[{"name":"a","type":"filesystem","filesystem":{"path":1e400}}],"alert":{"expectEvery":"1d"}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := plan.FromJSON(b)
		if err != nil {
			return
		}
		twin, err := plan.FromJSON(b)
		if err != nil {
			t.Fatalf("second decode of the same bytes fails: %v", err)
		}
		checkDecoded(t, p, twin)
	})
}
