package plan

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// dropNodes forgets the parsed YAML blocks, which JSON does not carry.
func dropNodes(p *Plan) {
	p.File = ""
	p.Spec.Source.node = nil
	for i := range p.Spec.Destinations {
		p.Spec.Destinations[i].node = nil
	}
}

func TestJSONRoundTrip(t *testing.T) {
	full := `apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: full, labels: {team: payments}}
spec:
  source:
    type: mariadb
    allowEmpty: true
    mariadb: {host: db, port: 3306, password: {env: PW}, databases: [a, b], ratio: 1.5, big: 9007199254740993, nested: {list: [{x: true}]}}
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
    - name: pod
      type: kubernetes
      kubernetes: {namespace: n, labelSelector: a=b, container: c, singlePodOnly: true}
      ops: [{name: run, command: '["sh", "-c", "true"]', container: d}]
    - name: local
      type: exec
      exec: {env: {K: {file: /k}}, workdir: /w}
      ops: [{name: run, command: [true]}]
  workflows:
    - {name: backup, sequence: [{hook: db/lock}, {group: g}, {hook: db/unlock}]}
    - {name: restore, sequence: [restore, {hook: web/ping}]}
  filters:
    compression: zstd
    level: better
    encryption: {type: aes-256-gcm, recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p], recipientsFile: /r}
  chunkSize: 1MiB
  destinations:
    - {name: a, type: filesystem, filesystem: {path: /a}, retention: {keepLast: 2, keepWithinDaily: 2w}}
    - {name: b, type: s3}
  schedule: {cron: "@every 6h", timezone: Europe/Berlin, jitter: 10m, startingDeadline: 2h, missedRunPolicy: skip, concurrencyPolicy: replace, paused: true}
  retention: {keepLast: 3, keepQuarterly: -1, keepWithin: 1y2m, keepWithinDaily: 30d, keepTags: [pinned, "a,b"]}
  verify: {enabled: false}
  alert: {expectEvery: 36h, grace: 90s}
  runTimeout: 90m
`
	p := mustParse(t, full)
	if err := p.Validate(nil); err != nil {
		t.Fatal(err)
	}
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := FromJSON(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	dropNodes(p)
	if !reflect.DeepEqual(p, back) {
		t.Fatalf("round trip differs:\n%+v\n%+v\n%s", p.Spec, back.Spec, b)
	}
	b2, _ := back.Marshal()
	if string(b) != string(b2) {
		t.Fatalf("second marshal differs:\n%s\n%s", b, b2)
	}
	if back.Spec.Source.Config["big"] != int64(9007199254740993) || back.Spec.Source.Config["ratio"] != 1.5 {
		t.Errorf("numbers: %#v", back.Spec.Source.Config)
	}
	if !strings.Contains(string(b), `"runTimeout":"1h30m"`) || back.Spec.EffectiveRunTimeout() != 90*time.Minute {
		t.Errorf("runTimeout %v in %s", back.Spec.RunTimeout, b)
	}
	if r := back.Spec.RetentionFor("a"); r == nil || r.KeepLast != 2 || r.KeepWithinDaily.String() != "2w" || back.Spec.RetentionFor("b") != back.Spec.Retention {
		t.Errorf("destination retention after the round trip: a %+v, b %+v", back.Spec.RetentionFor("a"), back.Spec.RetentionFor("b"))
	}
	if back.Spec.Hooks[0].Timeout.Std() != 30*time.Second || back.Spec.Verify.IsEnabled() {
		t.Errorf("timeout %v verify %v", back.Spec.Hooks[0].Timeout, back.Spec.Verify.IsEnabled())
	}
}

func TestFromJSONRefusesUnknownFields(t *testing.T) {
	for _, give := range []string{
		`{"apiVersion":"x","spec":{"nope":1}}`,
		`{"spec":{"source":{"type":"a","b":{}}}}`,
		`{"spec":{"destinations":[{"name":"a","type":"fs","extra":1}]}}`,
		`{"spec":{"destinations":[{"name":"a","type":"fs","retention":{"keepLats":1}}]}}`,
	} {
		if _, err := FromJSON([]byte(give)); err == nil || !strings.Contains(err.Error(), "unknown field") {
			t.Errorf("%s: %v", give, err)
		}
	}
}

func TestDurations(t *testing.T) {
	tests := []struct {
		give string
		want time.Duration
		str  string
	}{
		{"30s", 30 * time.Second, "30s"},
		{"90m", 90 * time.Minute, "1h30m"},
		{"6h", 6 * time.Hour, "6h"},
		{"24h", 24 * time.Hour, "24h"},
		{"30d", 30 * Day, "30d"},
		{"2w", 2 * Week, "14d"},
		{"1h0m1s", time.Hour + time.Second, "1h0m1s"},
	}
	for _, tt := range tests {
		d, err := ParseDuration(tt.give)
		if err != nil || d.Std() != tt.want || d.String() != tt.str {
			t.Errorf("%s: %v %v %v", tt.give, d.Std(), d, err)
		}
	}
	for _, bad := range []string{"", "5", "1.5d", "d", "3x"} {
		if _, err := ParseDuration(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestSizes(t *testing.T) {
	tests := []struct {
		give string
		want Size
		str  string
	}{
		{"65536", 64 * KiB, "64KiB"},
		{"256KiB", 256 * KiB, "256KiB"},
		{"4MiB", 4 * MiB, "4MiB"},
		{"1000B", 1000, "1000"},
	}
	for _, tt := range tests {
		s, err := ParseSize(tt.give)
		if err != nil || s != tt.want || s.String() != tt.str {
			t.Errorf("%s: %v %v", tt.give, s, err)
		}
	}
	for _, bad := range []string{"", "1GB", "-1", "1.5MiB", "KiB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
