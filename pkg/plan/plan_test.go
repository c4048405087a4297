package plan

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/secret"
	sourceall "github.com/backstream/backstream/pkg/source/all"
	"github.com/backstream/backstream/pkg/storage/registry"
)

// realChecker checks plugin blocks with the real source and storage
// registries (the plugins package would be an import cycle here).
type realChecker struct{}

var _ Checker = realChecker{}

var (
	testSources  = sourceall.Registry()
	testStorages = registry.Default()
)

func (realChecker) CheckSource(p Plugin) error {
	sp, err := testSources.Lookup(p.Type)
	if err != nil {
		return ErrUnknownType
	}
	return sp.Check(p.Decode)
}

func (realChecker) CheckDestination(p Plugin) error {
	if _, err := testStorages.Lookup(p.Type); err != nil {
		return ErrUnknownType
	}
	return testStorages.Check(p.Type, p.Decode)
}

const base = `apiVersion: backstream.io/v1alpha1
kind: Plan
metadata:
  name: orders
spec:
  source:
    type: command
    command: {argv: [echo, hi]}
  hooks:
    - name: db
      type: sql
      ops:
        - name: lock
          sql: "FLUSH TABLES WITH READ LOCK"
          inverseOp: unlock
        - name: unlock
          sql: "UNLOCK TABLES"
  workflows:
    - name: backup
      sequence: [{hook: db/lock}, snapshot, {hook: db/unlock}]
  destinations:
    - name: local
      type: filesystem
      filesystem: {path: /tmp/x}
`

func mustParse(t *testing.T, src string) *Plan {
	t.Helper()
	p, err := Parse("plans/orders.yaml", []byte(src))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return p
}

func problemsOf(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("want *ValidationError, got %T: %v", err, err)
	}
	var out []string
	for _, p := range ve.Problems {
		out = append(out, p.String())
	}
	return out
}

func TestBaseIsValid(t *testing.T) {
	if err := mustParse(t, base).Validate(realChecker{}); err != nil {
		t.Fatal(err)
	}
}

func TestValidateRules(t *testing.T) {
	const recipient = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
	neg := func(d time.Duration) Duration { return Duration(-d) }
	tests := []struct {
		name string
		give func(p *Plan)
		want string
	}{
		{"apiVersion missing", func(p *Plan) { p.APIVersion = "" }, "apiVersion: required: backstream.io/v1alpha1"},
		{"apiVersion wrong", func(p *Plan) { p.APIVersion = "v1" }, `apiVersion: "v1" is not supported; want backstream.io/v1alpha1`},
		{"kind wrong", func(p *Plan) { p.Kind = "Recipe" }, `kind: "Recipe" is not supported; want Plan`},
		{"name missing", func(p *Plan) { p.Metadata.Name = "" }, "metadata.name: required"},
		{"name not a label", func(p *Plan) { p.Metadata.Name = "Orders_DB" }, `metadata.name: "Orders_DB" ` + dnsLabel},
		{"source missing", func(p *Plan) { p.Spec.Source = Source{} }, "spec.source: required"},
		{"source type missing", func(p *Plan) { p.Spec.Source.Type = "" }, "spec.source.type: required"},
		{"source unknown type", func(p *Plan) { p.Spec.Source.Type = "oracle" }, "spec.source.oracle: unknown plugin type"},
		{"source config bad", func(p *Plan) { p.Spec.Source.Config = map[string]any{"argv": []any{}} }, "spec.source.command: argv: required"},
		{"no destinations", func(p *Plan) { p.Spec.Destinations = nil }, "spec.destinations: at least one destination is required"},
		{"destination name", func(p *Plan) { p.Spec.Destinations[0].Name = "" }, "spec.destinations[0].name: required"},
		{"destination dup", func(p *Plan) { p.Spec.Destinations = append(p.Spec.Destinations, p.Spec.Destinations[0]) }, `spec.destinations[1].name: "local" is already the name of spec.destinations[0]`},
		{"destination type", func(p *Plan) { p.Spec.Destinations[0].Type = "" }, "spec.destinations[0].type: required"},
		{"destination config", func(p *Plan) { p.Spec.Destinations[0].Config = nil }, "spec.destinations[0].filesystem: path: required"},
		{"hook name dup", func(p *Plan) { p.Spec.Hooks = append(p.Spec.Hooks, p.Spec.Hooks[0]) }, `spec.hooks[1].name: "db" is already the name of spec.hooks[0]`},
		{"hook name bad", func(p *Plan) { p.Spec.Hooks[0].Name = "DB"; p.Spec.Workflows = nil }, `spec.hooks[0].name: "DB" ` + dnsLabel},
		{"hook type unknown", func(p *Plan) { p.Spec.Hooks[0].Type = "check" }, `spec.hooks[0].type: "check" is not one of exec, sql, http, kubernetes`},
		{"hook type missing", func(p *Plan) { p.Spec.Hooks[0].Type = "" }, "spec.hooks[0].type: required: one of exec, sql, http, kubernetes"},
		{"hook onError", func(p *Plan) { p.Spec.Hooks[0].OnError = "ignore" }, `spec.hooks[0].onError: "ignore" is not one of fail, continue`},
		{"hook timeout", func(p *Plan) { p.Spec.Hooks[0].Timeout = -1 }, "spec.hooks[0].timeout: must be > 0"},
		{"hook no ops", func(p *Plan) { p.Spec.Hooks[0].Ops = nil; p.Spec.Workflows = nil }, "spec.hooks[0].ops: at least one op is required"},
		{"op name dup", func(p *Plan) { h := &p.Spec.Hooks[0]; h.Ops = append(h.Ops, h.Ops[1]) }, `spec.hooks[0].ops[2].name: "unlock" is already the name of ops[1] of hook "db"`},
		{"op onError", func(p *Plan) { p.Spec.Hooks[0].Ops[1].OnError = "retry" }, `spec.hooks[0].ops[1].onError: "retry" is not one of fail, continue`},
		{"op timeout", func(p *Plan) { p.Spec.Hooks[0].Ops[1].Timeout = -5 }, "spec.hooks[0].ops[1].timeout: must be > 0"},
		{"op retries negative", func(p *Plan) { n := -1; p.Spec.Hooks[0].Ops[1].Retries = &n }, "spec.hooks[0].ops[1].retries: must be between 0 and 20"},
		{"op retries too many", func(p *Plan) { n := 21; p.Spec.Hooks[0].Ops[1].Retries = &n }, "spec.hooks[0].ops[1].retries: must be between 0 and 20"},
		{"compensation deadline", func(p *Plan) { p.Spec.Hooks[0].CompensationDeadline = -1 }, "spec.hooks[0].compensationDeadline: must be > 0"},
		{"inverseOp unknown", func(p *Plan) { p.Spec.Hooks[0].Ops[0].InverseOp = "unlokc" }, `spec.hooks[0].ops[0].inverseOp: "unlokc" is not an op of hook "db"`},
		{"inverseOp self", func(p *Plan) { p.Spec.Hooks[0].Ops[0].InverseOp = "lock" }, "spec.hooks[0].ops[0].inverseOp: an op cannot be its own inverse"},
		{"sql op without sql", func(p *Plan) { p.Spec.Hooks[0].Ops[1].SQL = " " }, "spec.hooks[0].ops[1].sql: required for a sql hook"},
		{"sql op with command", func(p *Plan) { p.Spec.Hooks[0].Ops[1].Command = Command{"ls"} }, "spec.hooks[0].ops[1].command: only exec and kubernetes hooks take it"},
		{"sql op with http", func(p *Plan) { p.Spec.Hooks[0].Ops[1].HTTP = &HTTPRequest{URL: "http://x"} }, "spec.hooks[0].ops[1].http: only http hooks take it"},
		{"sql op with container", func(p *Plan) { p.Spec.Hooks[0].Ops[1].Container = "db" }, "spec.hooks[0].ops[1].container: only kubernetes hooks run in containers"},
		{"exec op without command", func(p *Plan) {
			h := &p.Spec.Hooks[0]
			h.Type = HookExec
			h.Ops[0].SQL = ""
			h.Ops[1].SQL = ""
			h.Ops[0].Command = Command{"true"}
		}, "spec.hooks[0].ops[1].command: required for a exec hook"},
		{"exec op empty program", func(p *Plan) {
			h := &p.Spec.Hooks[0]
			h.Type = HookExec
			h.Ops[0].SQL = ""
			h.Ops[1].SQL = ""
			h.Ops[0].Command = Command{"true"}
			h.Ops[1].Command = Command{""}
		}, "spec.hooks[0].ops[1].command[0]: the program must not be empty"},
		{"exec op with sql", func(p *Plan) {
			h := &p.Spec.Hooks[0]
			h.Type = HookExec
			h.Ops[0].SQL = ""
			h.Ops[0].Command = Command{"true"}
			h.Ops[1].Command = Command{"true"}
		}, "spec.hooks[0].ops[1].sql: only sql hooks take it"},
		{"exec env ref", func(p *Plan) {
			h := &p.Spec.Hooks[0]
			h.Type = HookExec
			h.Exec = &ExecHook{Env: map[string]secret.Ref{"PW": {}}}
			h.Ops[0].SQL, h.Ops[1].SQL = "", ""
			h.Ops[0].Command, h.Ops[1].Command = Command{"a"}, Command{"b"}
		}, "spec.hooks[0].exec.env.PW: set one of env, file"},
		{"exec block on sql hook", func(p *Plan) { p.Spec.Hooks[0].Exec = &ExecHook{} }, "spec.hooks[0].exec: only exec hooks take it"},
		{"http block on sql hook", func(p *Plan) { p.Spec.Hooks[0].HTTP = &HTTPHook{} }, "spec.hooks[0].http: only http hooks take it"},
		{"kubernetes block on sql hook", func(p *Plan) { p.Spec.Hooks[0].Kubernetes = &KubernetesHook{} }, "spec.hooks[0].kubernetes: only kubernetes hooks select pods (kubernetes block, or Fusion namespace/labelSelector/nameSelector/selectResource/singlePodOnly)"},
		{"kubernetes no selector", func(p *Plan) { toKube(p); p.Spec.Hooks[0].Kubernetes.LabelSelector = "" }, "spec.hooks[0].kubernetes: select pods with labelSelector or nameSelector"},
		{"kubernetes selectResource", func(p *Plan) { toKube(p); p.Spec.Hooks[0].Kubernetes.SelectResource = "deployment" }, `spec.hooks[0].kubernetes.selectResource: "deployment" is not supported; hooks run in pods (pod)`},
		{"kubernetes nameSelector", func(p *Plan) { toKube(p); p.Spec.Hooks[0].Kubernetes.NameSelector = "(" }, "spec.hooks[0].kubernetes.nameSelector: not a regular expression: error parsing regexp: missing closing ): `(`"},
		{"http op missing", func(p *Plan) { toHTTP(p); p.Spec.Hooks[0].Ops[1].HTTP = nil }, "spec.hooks[0].ops[1].http: required for an http hook"},
		{"http op url missing", func(p *Plan) { toHTTP(p); p.Spec.Hooks[0].Ops[1].HTTP.URL = "" }, "spec.hooks[0].ops[1].http.url: required"},
		{"http op relative url", func(p *Plan) {
			toHTTP(p)
			p.Spec.Hooks[0].HTTP = nil
			p.Spec.Hooks[0].Ops[0].HTTP.URL = "https://db.example/lock"
		}, `spec.hooks[0].ops[1].http.url: relative URL "/unlock" needs the hook's http.baseURL`},
		{"http op bad scheme", func(p *Plan) { toHTTP(p); p.Spec.Hooks[0].Ops[1].HTTP.URL = "ftp://x/y" }, `spec.hooks[0].ops[1].http.url: "ftp://x/y" is not an http(s) URL`},
		{"http op method", func(p *Plan) { toHTTP(p); p.Spec.Hooks[0].Ops[1].HTTP.Method = "post it" }, `spec.hooks[0].ops[1].http.method: "post it" is not an HTTP method (GET, POST, ...)`},
		{"http op status", func(p *Plan) { toHTTP(p); p.Spec.Hooks[0].Ops[1].HTTP.ExpectStatus = 42 }, "spec.hooks[0].ops[1].http.expectStatus: 42 is not an HTTP status"},
		{"http baseURL", func(p *Plan) { toHTTP(p); p.Spec.Hooks[0].HTTP.BaseURL = "localhost:80" }, `spec.hooks[0].http.baseURL: "localhost:80" is not an absolute http(s) URL`},
		{"workflow name", func(p *Plan) { p.Spec.Workflows[0].Name = "pre-hook" }, `spec.workflows[0].name: "pre-hook" is not a workflow; want backup or restore`},
		{"workflow name missing", func(p *Plan) { p.Spec.Workflows[0].Name = "" }, "spec.workflows[0].name: required: backup or restore"},
		{"workflow dup", func(p *Plan) { p.Spec.Workflows = append(p.Spec.Workflows, p.Spec.Workflows[0]) }, `spec.workflows[1].name: "backup" is already the name of spec.workflows[0]`},
		{"hook step without op", func(p *Plan) { p.Spec.Workflows[0].Sequence[0] = Step{Kind: StepHook, Hook: "db"} }, `spec.workflows[0].sequence[0].hook: "db" names no op; write hook: db/<op>`},
		{"hook step unknown hook", func(p *Plan) { p.Spec.Workflows[0].Sequence[0] = HookStep("cache", "lock") }, `spec.workflows[0].sequence[0].hook: "cache" is not a hook of this plan`},
		{"hook step unknown op", func(p *Plan) { p.Spec.Workflows[0].Sequence[2] = HookStep("db", "unlok") }, `spec.workflows[0].sequence[2].hook: "unlok" is not an op of hook "db"`},
		{"no data step", func(p *Plan) { p.Spec.Workflows[0].Sequence = p.Spec.Workflows[0].Sequence[:1] }, "spec.workflows[0].sequence: must hold exactly one snapshot step (or a Fusion group step), has 0"},
		{"two data steps", func(p *Plan) { w := &p.Spec.Workflows[0]; w.Sequence = append(w.Sequence, Step{Kind: StepSnapshot}) }, "spec.workflows[0].sequence: must hold exactly one snapshot step (or a Fusion group step), has 2"},
		{"restore in backup", func(p *Plan) { p.Spec.Workflows[0].Sequence[0] = Step{Kind: StepRestore} }, "spec.workflows[0].sequence[0]: restore belongs in the restore workflow"},
		{"snapshot in restore", func(p *Plan) {
			p.Spec.Workflows[0] = Workflow{Name: WorkflowRestore, Sequence: []Step{{Kind: StepRestore}, {Kind: StepSnapshot}}}
		}, "spec.workflows[0].sequence[1]: snapshot belongs in the backup workflow"},
		{"repeated hook step", func(p *Plan) { w := &p.Spec.Workflows[0]; w.Sequence[2] = w.Sequence[0] }, "spec.workflows[0].sequence[2]: hook:db/lock repeats sequence[0]"},
		{"compression", func(p *Plan) { p.Spec.Filters.Compression = "gzip" }, `spec.filters.compression: "gzip" is not one of none, snappy, zstd`},
		{"level value", func(p *Plan) { p.Spec.Filters.Level = "max" }, `spec.filters.level: "max" is not one of fastest, default, better`},
		{"level without zstd", func(p *Plan) { p.Spec.Filters.Compression, p.Spec.Filters.Level = "snappy", "better" }, "spec.filters.level: only zstd takes a level"},
		{"encryption type", func(p *Plan) { p.Spec.Filters.Encryption = &Encryption{Type: "rot13", Recipients: []string{recipient}} }, `spec.filters.encryption.type: "rot13" is not one of none, aes-256-gcm`},
		{"encryption no key", func(p *Plan) { p.Spec.Filters.Encryption = &Encryption{Type: EncryptionAES256GCM} }, "spec.filters.encryption: needs recipients, recipientsFile or passphrase"},
		{"encryption both", func(p *Plan) {
			p.Spec.Filters.Encryption = &Encryption{Recipients: []string{recipient}, Passphrase: &secret.Ref{Env: "PW"}}
		}, "spec.filters.encryption: set recipients (and/or recipientsFile) or passphrase, not both"},
		{"encryption none with keys", func(p *Plan) { p.Spec.Filters.Encryption = &Encryption{Type: "none", RecipientsFile: "/r"} }, "spec.filters.encryption: type none takes no recipients or passphrase"},
		{"encryption bad recipient", func(p *Plan) { p.Spec.Filters.Encryption = &Encryption{Recipients: []string{recipient, "age1nope"}} }, "spec.filters.encryption.recipients[1]: not an age X25519 recipient (age1...): malformed recipient \"age1nope\": separator '1' at invalid position: pos=3, len=8"},
		{"encryption passphrase ref", func(p *Plan) { p.Spec.Filters.Encryption = &Encryption{Passphrase: &secret.Ref{Env: "A", File: "/b"}} }, "spec.filters.encryption.passphrase: set one of env, file, not both"},
		{"chunk too small", func(p *Plan) { p.Spec.ChunkSize = 32 * KiB }, "spec.chunkSize: 32KiB is outside 64KiB..4MiB"},
		{"chunk too big", func(p *Plan) { p.Spec.ChunkSize = 5 * MiB }, "spec.chunkSize: 5MiB is outside 64KiB..4MiB"},
		{"frame below chunk", func(p *Plan) { p.Spec.ChunkSize = 512 * KiB; p.Spec.Filters.FrameSize = 256 * KiB }, "spec.filters.frameSize: 256KiB is outside the chunk size (512KiB)..16MiB"},
		{"frame below default chunk", func(p *Plan) { p.Spec.Filters.FrameSize = 128 * KiB }, "spec.filters.frameSize: 128KiB is outside the chunk size (256KiB)..16MiB"},
		{"frame too big", func(p *Plan) { p.Spec.Filters.FrameSize = 32 * MiB }, "spec.filters.frameSize: 32MiB is outside the chunk size (256KiB)..16MiB"},
		{"frame not a multiple", func(p *Plan) { p.Spec.Filters.FrameSize = 640 * KiB }, "spec.filters.frameSize: 640KiB is not a multiple of the chunk size (256KiB)"},
		{"frame not a multiple of a set chunk", func(p *Plan) { p.Spec.ChunkSize = 96 * KiB; p.Spec.Filters.FrameSize = 1 * MiB }, "spec.filters.frameSize: 1MiB is not a multiple of the chunk size (96KiB)"},
		{"cron missing", func(p *Plan) { p.Spec.Schedule = &Schedule{} }, "spec.schedule.cron: required"},
		{"cron bad", func(p *Plan) { p.Spec.Schedule = &Schedule{Cron: "0 3 * *"} }, "spec.schedule.cron: expected exactly 5 fields, found 4: [0 3 * *]"},
		{"cron six fields", func(p *Plan) { p.Spec.Schedule = &Schedule{Cron: "0 0 3 * * *"} }, "spec.schedule.cron: expected exactly 5 fields, found 6: [0 0 3 * * *]"},
		{"timezone", func(p *Plan) { p.Spec.Schedule = &Schedule{Cron: "@daily", Timezone: "Mars/Olympus"} }, `spec.schedule.timezone: "Mars/Olympus" is not an IANA time zone`},
		{"jitter", func(p *Plan) { p.Spec.Schedule = &Schedule{Cron: "@daily", Jitter: neg(time.Minute)} }, "spec.schedule.jitter: must be >= 0"},
		{"startingDeadline", func(p *Plan) { p.Spec.Schedule = &Schedule{Cron: "@daily", StartingDeadline: neg(time.Minute)} }, "spec.schedule.startingDeadline: must be > 0"},
		{"missedRunPolicy", func(p *Plan) { p.Spec.Schedule = &Schedule{Cron: "@every 6h", MissedRunPolicy: "catch-up"} }, `spec.schedule.missedRunPolicy: "catch-up" is not one of skip, run-once`},
		{"concurrencyPolicy", func(p *Plan) { p.Spec.Schedule = &Schedule{Cron: "@hourly", ConcurrencyPolicy: "queue"} }, `spec.schedule.concurrencyPolicy: "queue" is not one of forbid, allow, replace`},
		{"retention count", func(p *Plan) {
			p.Spec.Retention = &Retention{}
			p.Spec.Retention.KeepLast = 1
			p.Spec.Retention.KeepDaily = -2
		}, "spec.retention.keepDaily: must be >= 0 (or -1: keep every bucket)"},
		{"retention empty", func(p *Plan) { p.Spec.Retention = &Retention{} }, "spec.retention: keeps nothing, so it would delete every backup; set a keep rule or drop the block"},
		{"retention tag", func(p *Plan) { p.Spec.Retention = &Retention{}; p.Spec.Retention.KeepTags = []string{"pinned", "a,"} }, `spec.retention.keepTags[1]: "a," has an empty tag`},
		{"destination retention count", func(p *Plan) {
			p.Spec.Destinations = append(p.Spec.Destinations, Destination{Name: "remote", Plugin: Plugin{Type: "filesystem", Config: map[string]any{"path": "/r"}}, Retention: &Retention{}})
			p.Spec.Destinations[1].Retention.KeepLast = 5
			p.Spec.Destinations[1].Retention.KeepDaily = -2
		}, "spec.destinations[1].retention.keepDaily: must be >= 0 (or -1: keep every bucket)"},
		{"destination retention empty", func(p *Plan) { p.Spec.Destinations[0].Retention = &Retention{} }, "spec.destinations[0].retention: keeps nothing, so it would delete every backup; set a keep rule or drop the block"},
		{"destination retention tag", func(p *Plan) {
			p.Spec.Destinations[0].Retention = &Retention{}
			p.Spec.Destinations[0].Retention.KeepTags = []string{",b"}
		}, `spec.destinations[0].retention.keepTags[0]: ",b" has an empty tag`},
		{"retention inside the plugin's block", func(p *Plan) { p.Spec.Destinations[0].Config["retention"] = map[string]any{"keepLast": int64(2)} }, "spec.destinations[0].filesystem.retention: unknown field (the filesystem block takes path)"},
		{"alert expectEvery needed", func(p *Plan) { p.Spec.Alert = &Alert{} }, "spec.alert.expectEvery: required when the plan has no schedule"},
		{"alert expectEvery negative", func(p *Plan) { p.Spec.Alert = &Alert{ExpectEvery: neg(time.Hour)} }, "spec.alert.expectEvery: must be > 0"},
		{"alert grace", func(p *Plan) { p.Spec.Alert = &Alert{ExpectEvery: Duration(time.Hour), Grace: neg(time.Hour)} }, "spec.alert.grace: must be > 0"},
		{"runTimeout negative", func(p *Plan) { p.Spec.RunTimeout = neg(time.Hour) }, "spec.runTimeout: must be > 0"},
		{"runTimeout too long", func(p *Plan) { p.Spec.RunTimeout = Duration(8 * Day) }, "spec.runTimeout: 8d is longer than the maximum 7d"},
		{"require a word", func(p *Plan) { p.Spec.Require = "most" }, `spec.require: "most" is not all, any or a number of destinations`},
		{"require more copies than destinations", func(p *Plan) { p.Spec.Require = "5" }, "spec.require: 5 is not between 1 and the 1 destinations"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, base)
			tt.give(p)
			got := problemsOf(t, p.Validate(realChecker{}))
			if len(got) != 1 || got[0] != tt.want {
				t.Errorf("problems:\n%s\nwant exactly:\n%s", strings.Join(got, "\n"), tt.want)
			}
		})
	}
}

func toKube(p *Plan) {
	h := &p.Spec.Hooks[0]
	h.Type = HookKubernetes
	h.Kubernetes = &KubernetesHook{Namespace: "db", LabelSelector: "app=db"}
	h.Ops[0].SQL, h.Ops[1].SQL = "", ""
	h.Ops[0].Command, h.Ops[1].Command = Command{"lock"}, Command{"unlock"}
}

func toHTTP(p *Plan) {
	h := &p.Spec.Hooks[0]
	h.Type = HookHTTP
	h.HTTP = &HTTPHook{BaseURL: "http://127.0.0.1:8080"}
	h.Ops[0].SQL, h.Ops[1].SQL = "", ""
	h.Ops[0].HTTP = &HTTPRequest{Method: "POST", URL: "/lock"}
	h.Ops[1].HTTP = &HTTPRequest{Method: "POST", URL: "/unlock", ExpectStatus: 204}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	p := mustParse(t, strings.Replace(base, "inverseOp: unlock", "inverseOp: unlokc", 1))
	p.Metadata.Name = ""
	p.Spec.Destinations = nil
	p.Spec.Retention = &Retention{}
	p.Spec.Retention.KeepDaily = -3
	p.Spec.Schedule = &Schedule{Cron: "61 * * * *"}
	err := p.Validate(realChecker{})
	want := strings.Join([]string{
		"plans/orders.yaml: metadata.name: required",
		"plans/orders.yaml: spec.destinations: at least one destination is required",
		`plans/orders.yaml: spec.hooks[0].ops[0].inverseOp: "unlokc" is not an op of hook "db"`,
		"plans/orders.yaml: spec.schedule.cron: end of range (61) above maximum (59): 61",
		"plans/orders.yaml: spec.retention.keepDaily: must be >= 0 (or -1: keep every bucket)",
	}, "\n")
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

func TestNilCheckerSkipsPlugins(t *testing.T) {
	p := mustParse(t, base)
	p.Spec.Source.Type = "oracle"
	if err := p.Validate(nil); err != nil {
		t.Fatal(err)
	}
}

// joinChecker reports fixed, joined problems for every plugin.
type joinChecker struct{ err error }

func (c joinChecker) CheckSource(Plugin) error      { return c.err }
func (c joinChecker) CheckDestination(Plugin) error { return c.err }

func TestCheckerJoinedErrorsAreSeparateProblems(t *testing.T) {
	p := mustParse(t, base)
	c := joinChecker{errors.Join(errors.New("host: required"), errors.Join(errors.New("port: out of range"), errors.New("mode: bad")))}
	got := problemsOf(t, p.Validate(c))
	want := []string{
		"spec.source.command: host: required", "spec.source.command: port: out of range", "spec.source.command: mode: bad",
		"spec.destinations[0].filesystem: host: required", "spec.destinations[0].filesystem: port: out of range", "spec.destinations[0].filesystem: mode: bad",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestRunTimeout(t *testing.T) {
	tests := []struct {
		name string
		give string
		want time.Duration
	}{
		{"unset is the default", "", 6 * time.Hour},
		{"minutes", "  runTimeout: 45m\n", 45 * time.Minute},
		{"days", "  runTimeout: 2d\n", 2 * Day},
		{"the maximum", "  runTimeout: 1w\n", 7 * Day},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, base+tt.give)
			p.Defaults()
			if err := p.Validate(realChecker{}); err != nil {
				t.Fatal(err)
			}
			if got := p.Spec.EffectiveRunTimeout(); got != tt.want {
				t.Errorf("run timeout %v, want %v", got, tt.want)
			}
		})
	}
	// Defaults leaves it unset: a stored plan changes only when it sets it.
	p := mustParse(t, base)
	p.Defaults()
	if b, _ := p.Marshal(); strings.Contains(string(b), "runTimeout") {
		t.Errorf("defaulted plan stores runTimeout: %s", b)
	}
}

func TestRunTimeoutIsADurationString(t *testing.T) {
	for _, give := range []string{"  runTimeout: 3600\n", "  runTimeout: [1h]\n", "  runTimeout: 6hours\n"} {
		_, err := Parse("plans/orders.yaml", []byte(base+give))
		var de *DecodeError
		line := fmt.Sprintf("plans/orders.yaml:%d:", strings.Count(base, "\n")+1)
		if !errors.As(err, &de) || !strings.Contains(err.Error(), line) {
			t.Errorf("%q: %v, want a decode error at its line", give, err)
		}
	}
}

func TestRetentionFor(t *testing.T) {
	plan := func(r *Retention, dests ...Destination) *Plan {
		p := mustParse(t, base)
		p.Spec.Retention = r
		p.Spec.Destinations = dests
		return p
	}
	keep := func(n int) *Retention {
		r := &Retention{}
		r.KeepLast = n
		return r
	}
	planPolicy, short, long := keep(30), keep(2), keep(5)
	tests := []struct {
		name string
		give *Plan
		dest string
		want *Retention
	}{
		{"plan policy", plan(planPolicy, Destination{Name: "local"}), "local", planPolicy},
		{"own block wins", plan(planPolicy, Destination{Name: "local", Retention: short}, Destination{Name: "remote", Retention: long}), "remote", long},
		{"own block without a plan block", plan(nil, Destination{Name: "local", Retention: short}, Destination{Name: "remote"}), "local", short},
		{"no block anywhere", plan(nil, Destination{Name: "local", Retention: short}, Destination{Name: "remote"}), "remote", nil},
		{"unknown destination gets the plan's", plan(planPolicy, Destination{Name: "local", Retention: short}), "gone", planPolicy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.give.Spec.RetentionFor(tt.dest); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestDestinationRetentionParses(t *testing.T) {
	src := strings.Replace(base, "      filesystem: {path: /tmp/x}\n", `      filesystem: {path: /tmp/x}
      retention: {keepLast: 2}
    - name: remote
      type: filesystem
      filesystem: {path: /tmp/y}
      retention:
        keepLast: 5
        keepWithin: 30d
`, 1)
	p := mustParse(t, src)
	if err := p.Validate(realChecker{}); err != nil {
		t.Fatal(err)
	}
	if r := p.Spec.RetentionFor("local"); r == nil || r.KeepLast != 2 || !r.KeepWithin.IsZero() {
		t.Errorf("local: %+v", r)
	}
	if r := p.Spec.RetentionFor("remote"); r == nil || r.KeepLast != 5 || r.KeepWithin.String() != "30d" {
		t.Errorf("remote: %+v", r)
	}
	if p.Spec.Destinations[0].Config["retention"] != nil || p.Spec.Destinations[0].Config["path"] != "/tmp/x" {
		t.Errorf("the retention block leaked into the plugin's config: %+v", p.Spec.Destinations[0].Config)
	}
}

func TestRequiredCopies(t *testing.T) {
	dests := []Destination{{Name: "a"}, {Name: "b"}, {Name: "c"}}
	tests := []struct {
		give string
		want int
	}{{"", 3}, {"all", 3}, {"any", 1}, {"2", 2}}
	for _, tt := range tests {
		s := Spec{Destinations: dests, Require: tt.give}
		if got := s.RequiredCopies(); got != tt.want {
			t.Errorf("require %q: %d copies, want %d", tt.give, got, tt.want)
		}
	}
}

func TestEffectiveFrameSize(t *testing.T) {
	tests := []struct {
		name         string
		chunk, frame Size
		want         Size
	}{
		{"defaults", 0, 0, DefaultFrameSize},
		{"set", 256 * KiB, 4 * MiB, 4 * MiB},
		{"equal to the chunk", 512 * KiB, 512 * KiB, 512 * KiB},
		{"default rounded down to the chunk", 96 * KiB, 0, 8160 * KiB},
		{"default of a large chunk", 2 * MiB, 0, 8 * MiB},
		{"chunk not dividing the default", 3 * MiB, 0, 6 * MiB},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Spec{ChunkSize: tt.chunk, Filters: Filters{FrameSize: tt.frame}}
			if got := s.EffectiveFrameSize(); got != tt.want {
				t.Errorf("EffectiveFrameSize() = %s, want %s", got, tt.want)
			}
		})
	}
}
