package events_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
)

var exampleMeta = events.Meta{
	ID:          "01JNR4S7T0000000000000000Z",
	Source:      "backstream/snapshot/host-1",
	Plan:        "orders-db",
	RunID:       "01JNR4S7T0000000000000000A",
	Step:        events.StepSnapshot,
	TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
	Time:        exampleTime,
}

// wire marshals e as a structured-mode CloudEvent and reads it back, as a
// consumer on the other side of NATS would.
func wire(t *testing.T, e events.Event) events.Event {
	t.Helper()
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatalf("marshal event: %v", err)
	}
	var got events.Event
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("unmarshal event: %v", err)
	}
	return got
}

func TestNewDecodeRoundTrip(t *testing.T) {
	for typ, p := range examples {
		t.Run(typ, func(t *testing.T) {
			e, err := events.New(exampleMeta, p)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			got := wire(t, e)
			if got.Type() != typ || got.ID() != exampleMeta.ID || got.Source() != exampleMeta.Source ||
				got.Subject() != exampleMeta.Plan || !got.Time().Equal(exampleTime) {
				t.Errorf("envelope: got type %s id %s source %s subject %s time %s",
					got.Type(), got.ID(), got.Source(), got.Subject(), got.Time())
			}
			if events.RunID(got) != exampleMeta.RunID || events.Step(got) != exampleMeta.Step ||
				events.TraceParent(got) != exampleMeta.TraceParent {
				t.Errorf("extensions: got runid %q step %q traceparent %q",
					events.RunID(got), events.Step(got), events.TraceParent(got))
			}
			if got.DataContentType() != "application/json" {
				t.Errorf("datacontenttype = %q", got.DataContentType())
			}
			dp, err := events.Decode(got)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			want := reflect.Indirect(reflect.ValueOf(p)).Interface()
			if have := reflect.ValueOf(dp).Elem().Interface(); !reflect.DeepEqual(have, want) {
				t.Errorf("payload:\n got %#v\nwant %#v", have, want)
			}
			if dp.EventType() != typ {
				t.Errorf("decoded payload EventType() = %s", dp.EventType())
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	before := time.Now().Add(-time.Second)
	e, err := events.New(events.Meta{Source: "myorg/cron", Plan: "orders-db", RunID: events.NewID()},
		events.BackupRequestedData{Trigger: events.TriggerCLI})
	if err != nil {
		t.Fatal(err)
	}
	if e.ID() == "" || e.ID() == events.RunID(e) {
		t.Errorf("id = %q, want a fresh ULID", e.ID())
	}
	if e.Time().Before(before) || e.Time().Location() != time.UTC {
		t.Errorf("time = %s, want now in UTC", e.Time())
	}
	if _, ok := e.Extensions()[events.ExtStep]; ok {
		t.Error("empty step set as an extension")
	}
	if _, ok := e.Extensions()[events.ExtTraceParent]; ok {
		t.Error("empty traceparent set as an extension")
	}
}

func TestNewRejects(t *testing.T) {
	tests := []struct {
		name string
		meta events.Meta
		give events.Payload
		want string
	}{
		{"invalid payload", exampleMeta, events.BackupRequestedData{}, "trigger: required"},
		{"bad plan name", withMeta(func(m *events.Meta) { m.Plan = "Orders_DB" }), examples[events.BackupRequested], `subject "Orders_DB"`},
		{"no plan", withMeta(func(m *events.Meta) { m.Plan = "" }), examples[events.BackupRequested], `subject ""`},
		{"no run id", withMeta(func(m *events.Meta) { m.RunID = "" }), examples[events.BackupRequested], "runid: missing"},
		{"no source", withMeta(func(m *events.Meta) { m.Source = "" }), examples[events.BackupRequested], "source"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := events.New(tt.meta, tt.give)
			if !errors.Is(err, events.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: got %v, want ErrInvalid naming %q", err, tt.want)
			}
		})
	}
}

func TestMustNewPanicsOnInvalid(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("MustNew accepted an invalid payload")
		}
	}()
	events.MustNew(exampleMeta, events.FilterFailedData{})
}

func withMeta(f func(*events.Meta)) events.Meta {
	m := exampleMeta
	f(&m)
	return m
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*events.Event)
		want   string
	}{
		{"bad JSON data", func(e *events.Event) { setData(e, `{"trigger":`) }, "data:"},
		{"data of the wrong shape", func(e *events.Event) { setData(e, `{"trigger":12}`) }, "data:"},
		{"missing field", func(e *events.Event) { setData(e, `{"reason":"x"}`) }, "trigger: required"},
		{"missing slot of a scheduled trigger", func(e *events.Event) { setData(e, `{"trigger":"schedule"}`) }, "slot: required"},
		{"unknown type", func(e *events.Event) { e.SetType(events.TypePrefix + "backup.exploded") }, "unknown event type"},
		{"foreign type", func(e *events.Event) { e.SetType("com.example.backup.requested") }, `must start with "io.backstream."`},
		{"missing runid", func(e *events.Event) { e.SetExtension(events.ExtRunID, nil) }, "runid: missing"},
		{"empty runid", func(e *events.Event) { e.SetExtension(events.ExtRunID, "") }, "runid: missing"},
		{"attempt 0", func(e *events.Event) { e.SetExtension(events.ExtAttempt, 0) }, "attempt 0: must be an integer of at least 1"},
		{"attempt not a number", func(e *events.Event) { e.SetExtension(events.ExtAttempt, "second") }, "attempt second: must be an integer"},
		{"plan name with a dot", func(e *events.Event) { e.SetSubject("orders.db") }, `subject "orders.db"`},
		{"plan name with a wildcard", func(e *events.Event) { e.SetSubject("*") }, `subject "*"`},
		{"no plan", func(e *events.Event) { e.SetSubject("") }, `subject ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := events.MustNew(exampleMeta, examples[events.BackupRequested])
			tt.mutate(&e)
			_, err := events.Decode(wireOrSelf(t, e))
			if !errors.Is(err, events.ErrInvalid) {
				t.Fatalf("Decode: got %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Decode: %q does not name %q", err, tt.want)
			}
		})
	}
}

// wireOrSelf sends e over the wire when it can be encoded; an envelope the
// SDK refuses to encode is decoded as it is.
func wireOrSelf(t *testing.T, e events.Event) events.Event {
	t.Helper()
	if _, err := json.Marshal(e); err != nil {
		return e
	}
	return wire(t, e)
}

func setData(e *events.Event, s string) {
	if err := e.SetData("application/json", []byte(s)); err != nil {
		panic(err)
	}
}

// TestDecodeWireJSON decodes structured-mode CloudEvents as a publisher in
// another language would write them.
func TestDecodeWireJSON(t *testing.T) {
	const envelope = `"specversion":"1.0","id":"orders-db.2026-03-01T02:00:00Z","source":"myorg/cron",` +
		`"type":"io.backstream.backup.requested","subject":"orders-db","datacontenttype":"application/json",` +
		`"time":"2026-03-01T02:00:00Z"`
	tests := []struct {
		name    string
		give    string
		wantErr string
	}{
		{"valid", `{` + envelope + `,"runid":"01JNR4S7T0000000000000000A","data":{"trigger":"schedule","slot":"2026-03-01T02:00:00Z"}}`, ""},
		{"unknown data fields are ignored", `{` + envelope + `,"runid":"01JNR4S7T0000000000000000A","data":{"trigger":"cli","priority":"high"}}`, ""},
		{"no runid", `{` + envelope + `,"data":{"trigger":"cli"}}`, "runid: missing"},
		{"no data", `{` + envelope + `,"runid":"01JNR4S7T0000000000000000A"}`, "data:"},
		{"bad slot", `{` + envelope + `,"runid":"01JNR4S7T0000000000000000A","data":{"trigger":"schedule","slot":"tonight"}}`, "data:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e events.Event
			if err := json.Unmarshal([]byte(tt.give), &e); err != nil {
				t.Fatalf("unmarshal: %v", err)
			}
			_, err := events.Decode(e)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				return
			}
			if !errors.Is(err, events.ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Decode: got %v, want ErrInvalid naming %q", err, tt.wantErr)
			}
		})
	}
}

// TestEdgeRules covers the envelope rules a consumer refuses at once:
// CloudEvents 1.0 only, a time not beyond MaxClockSkew in the future, and a
// run id that is a ULID (a KV key, a subject token and an object key
// segment). Each refusal names the attribute.
func TestEdgeRules(t *testing.T) {
	const base = `"id":"x1","source":"myorg/cron","type":"io.backstream.backup.requested","subject":"orders-db",` +
		`"datacontenttype":"application/json","data":{"trigger":"cli"}`
	ulid := events.NewID()
	soon := time.Now().Add(events.MaxClockSkew - time.Minute).UTC().Format(time.RFC3339)
	later := time.Now().Add(events.MaxClockSkew + time.Minute).UTC().Format(time.RFC3339)
	event := func(specversion, tm, runid string) string {
		s := `{"specversion":"` + specversion + `",` + base
		if tm != "" {
			s += `,"time":"` + tm + `"`
		}
		if runid != "" {
			s += `,"runid":"` + runid + `"`
		}
		return s + `}`
	}
	tests := []struct {
		name    string
		give    string
		wantErr string
	}{
		{"valid", event("1.0", "2026-03-01T02:00:00Z", ulid), ""},
		{"time within the allowed skew", event("1.0", soon, ulid), ""},
		{"specversion 0.3", event("0.3", "2026-03-01T02:00:00Z", ulid), `specversion "0.3": must be "1.0"`},
		{"time in 2099", event("1.0", "2099-01-01T00:00:00Z", ulid), "time 2099-01-01T00:00:00Z: more than 5m0s in the future"},
		{"time just beyond the skew", event("1.0", later, ulid), "in the future"},
		{"no time", event("1.0", "", ulid), "time: required"},
		{"runid with a dot", event("1.0", "2026-03-01T02:00:00Z", "a.b"), `runid "a.b": must be a ULID`},
		{"runid with a wildcard", event("1.0", "2026-03-01T02:00:00Z", "01JNR4S7T000000000000000*>"), "runid"},
		{"runid with a space", event("1.0", "2026-03-01T02:00:00Z", "run 1"), "runid"},
		{"runid with a slash", event("1.0", "2026-03-01T02:00:00Z", "../../etc"), "runid"},
		{"runid in lower case", event("1.0", "2026-03-01T02:00:00Z", strings.ToLower(ulid)), "runid"},
		{"runid too long", event("1.0", "2026-03-01T02:00:00Z", ulid+"0"), "runid"},
		{"runid that overflows a ULID", event("1.0", "2026-03-01T02:00:00Z", "8"+ulid[1:]), "runid"},
		{"runid of an index key", event("1.0", "2026-03-01T02:00:00Z", "_idx.active.x"), "runid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var e events.Event
			if err := json.Unmarshal([]byte(tt.give), &e); err != nil {
				t.Fatalf("unmarshal: %v", err)
			}
			err := events.CheckEnvelope(e)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckEnvelope: %v", err)
				}
				return
			}
			if !errors.Is(err, events.ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("CheckEnvelope: got %v, want ErrInvalid naming %q", err, tt.wantErr)
			}
			if _, derr := events.Decode(e); derr == nil {
				t.Error("Decode accepted what CheckEnvelope refused")
			}
		})
	}
}

// TestNewRefusesAFutureTime keeps publishers that import the module from
// sending what every consumer would refuse.
func TestNewRefusesAFutureTime(t *testing.T) {
	m := exampleMeta
	m.Time = time.Now().Add(time.Hour)
	if _, err := events.New(m, examples[events.BackupRequested]); !errors.Is(err, events.ErrInvalid) || !strings.Contains(err.Error(), "in the future") {
		t.Errorf("New with a time an hour ahead: got %v, want ErrInvalid naming the time", err)
	}
}

func TestCheckSubject(t *testing.T) {
	e := events.MustNew(exampleMeta, examples[events.BackupRequested])
	tests := []struct {
		name    string
		subject string
		wantErr string
	}{
		{"its own subject", "bs.events.backup.requested.orders-db", ""},
		{"another type", "bs.events.backup.succeeded.orders-db", `arrived on subject "bs.events.backup.succeeded.orders-db"`},
		{"another plan", "bs.events.backup.requested.payroll", "about plan \"orders-db\" travels on \"bs.events.backup.requested.orders-db\""},
		{"an extra token", "bs.events.backup.requested.orders-db.x", "arrived on subject"},
		{"outside the events root", "bs.dlq.backup.requested.orders-db", "arrived on subject"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := events.CheckSubject(tt.subject, e)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckSubject: %v", err)
				}
				return
			}
			if !errors.Is(err, events.ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("CheckSubject: got %v, want ErrInvalid naming %q", err, tt.wantErr)
			}
		})
	}
}

func TestValidRunID(t *testing.T) {
	tests := []struct {
		give string
		want bool
	}{
		{events.NewID(), true},
		{"01JNR4S7T0000000000000000A", true},
		{"7ZZZZZZZZZZZZZZZZZZZZZZZZZ", true},
		{"", false},
		{"8ZZZZZZZZZZZZZZZZZZZZZZZZZ", false},
		{"01JNR4S7T0000000000000000I", false}, // I, L, O, U are not Crockford digits
		{"01jnr4s7t0000000000000000a", false},
		{"01JNR4S7T0000000000000000", false},
		{"missed-orders-1700000000", false},
	}
	for _, tt := range tests {
		if got := events.ValidRunID(tt.give); got != tt.want {
			t.Errorf("ValidRunID(%q) = %v, want %v", tt.give, got, tt.want)
		}
	}
}

func TestDecodeAs(t *testing.T) {
	e := events.MustNew(exampleMeta, examples[events.UploadCompleted])
	got, err := events.DecodeAs[*events.UploadCompletedData](e)
	if err != nil {
		t.Fatalf("DecodeAs: %v", err)
	}
	if got.Destination != "s3-main" {
		t.Errorf("destination = %q", got.Destination)
	}
	byValue, err := events.DecodeAs[events.UploadCompletedData](e)
	if err != nil || byValue.Destination != "s3-main" {
		t.Errorf("DecodeAs by value: got %+v, %v", byValue, err)
	}
	_, err = events.DecodeAs[events.UploadFailedData](e)
	if !errors.Is(err, events.ErrInvalid) {
		t.Errorf("DecodeAs wrong payload by value: got %v", err)
	}
	_, err = events.DecodeAs[*events.UploadFailedData](e)
	if !errors.Is(err, events.ErrInvalid) || !strings.Contains(err.Error(), "not the expected payload") {
		t.Errorf("DecodeAs wrong payload: got %v", err)
	}
}

func TestValidateFailures(t *testing.T) {
	bad := "ABC"
	tests := []struct {
		name string
		give events.Payload
		want []string
	}{
		{"trigger missing", events.BackupRequestedData{}, []string{"trigger: required"}},
		{"trigger unknown", events.BackupRequestedData{Trigger: "cron"}, []string{`trigger: "cron" is not one of`}},
		{"schedule without slot", events.BackupRequestedData{Trigger: events.TriggerSchedule}, []string{"slot: required"}},
		{"succeeded empty", events.BackupSucceededData{}, []string{"backupId: required", "plaintextSha256:", "source: required", "objects: at least one"}},
		{"succeeded bad object", events.BackupSucceededData{
			BackupID: "b", PlaintextSHA256: digestA, Source: "s", Bytes: -1,
			Objects: []events.BackupObject{{Destination: "S3", Size: -1, SHA256: bad}},
		}, []string{"bytes: must be >= 0", "objects[0].destination:", "objects[0].key: required", "objects[0].manifestKey: required", "objects[0].size:", "objects[0].sha256:"}},
		{"failed empty", events.BackupFailedData{}, []string{"stage: required", "reason: required"}},
		{"missed empty", events.BackupMissedData{}, []string{"expectedBy: required", "slot: required"}},
		{"step completed", events.StepCompletedData{DurationMs: -5}, []string{"step: required", "durationMs: must be >= 0, got -5"}},
		{"step failed", events.StepFailedData{}, []string{"step: required", "reason: required"}},
		{"hook names", events.HookCompletedData{Hook: "DB", Op: "lock/now"}, []string{`hook: "DB" is not a lowercase DNS label`, `op: "lock/now"`}},
		{"hook failed policy", events.HookFailedData{Hook: "db", Op: "lock", Error: "e", OnError: "retry"}, []string{`onError: "retry" is not one of fail, continue`}},
		{"snapshot started", events.SnapshotStartedData{}, []string{"source: required", "dataSubject: required", "chunkSize: must be > 0"}},
		{"progress", events.ProgressData{Bytes: -1, Chunks: -1, ElapsedMs: -1}, []string{"bytes:", "chunks:", "elapsedMs:"}},
		{"snapshot completed non-zero exit", events.SnapshotCompletedData{Source: "s", SHA256: digestA, ExitStatus: 2}, []string{"exitStatus: a completed snapshot exits 0, got 2"}},
		{"snapshot completed digest", events.SnapshotCompletedData{Source: "s", SHA256: strings.ToUpper(digestA)}, []string{"sha256: must be 64 lowercase hex digits"}},
		{"snapshot failed", events.SnapshotFailedData{}, []string{"source: required", "error: required"}},
		{"filter completed", events.FilterCompletedData{Frames: -1, BytesIn: -1, BytesOut: -1}, []string{"frames:", "bytesIn:", "bytesOut:"}},
		{"filter failed", events.FilterFailedData{}, []string{"error: required"}},
		{"upload completed", events.UploadCompletedData{}, []string{"destination: required", "key: required", "manifestKey: required", "sha256:"}},
		{"upload failed", events.UploadFailedData{Destination: "-s3"}, []string{"destination:", "error: required"}},
		{"verify completed full without digest", events.VerifyCompletedData{Destination: "s3", Key: "k", SHA256: digestA, Mode: "full"}, []string{"plaintextSha256:"}},
		{"verify completed mode", events.VerifyCompletedData{Destination: "s3", Key: "k", SHA256: digestA, Mode: "quick"}, []string{`mode: "quick" is not one of full, ciphertext`}},
		{"verify failed", events.VerifyFailedData{}, []string{"destination: required", "error: required"}},
		{"retention decisions", events.RetentionCompletedData{
			Destination: "s3",
			Kept:        []events.RetentionDecision{{}},
			Removed:     []events.RetentionDecision{{}},
		}, []string{"kept[0].backupId: required", "kept[0].reasons: a kept backup needs a reason", "removed[0].backupId: required"}},
		{"retention failed", events.RetentionFailedData{}, []string{"destination: required", "error: required"}},
		{"compensation failed", events.CompensationFailedData{}, []string{"op: required", "error: required", "attempts: must be >= 1, got 0"}},
		{"restore requested", events.RestoreRequestedData{}, []string{"backupId: required", "destination: required"}},
		{"restore started", events.RestoreStartedData{Size: -1}, []string{"backupId: required", "destination: required", "key: required", "size:"}},
		{"restore succeeded", events.RestoreSucceededData{}, []string{"backupId: required", "sha256:"}},
		{"restore failed", events.RestoreFailedData{}, []string{"stage: required", "error: required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.give.Validate()
			if err == nil {
				t.Fatal("Validate accepted an invalid payload")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate: %q does not name %q", err, w)
				}
			}
		})
	}
}

func TestRunEventID(t *testing.T) {
	const run = "01JNR4S7T0000000000000000A"
	tests := []struct {
		name string
		typ  string
		step string
		want string
	}{
		{"with step", events.StepCompleted, "db/lock", run + ".step.completed.db/lock"},
		{"without step", events.BackupSucceeded, "", run + ".backup.succeeded"},
		{"snapshot step", events.SnapshotCompleted, events.StepSnapshot, run + ".snapshot.completed.snapshot"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := events.RunEventID(run, tt.typ, tt.step)
			if got != tt.want {
				t.Errorf("RunEventID = %q, want %q", got, tt.want)
			}
			if again := events.RunEventID(run, tt.typ, tt.step); again != got {
				t.Errorf("not deterministic: %q then %q", got, again)
			}
		})
	}
	seen := map[string]string{}
	for _, typ := range events.Types() {
		for _, step := range []string{"", "db/lock", "db/unlock", events.StepSnapshot} {
			id := events.RunEventID(run, typ, step)
			if prev, ok := seen[id]; ok {
				t.Errorf("%s/%s and %s make the same id %q", typ, step, prev, id)
			}
			seen[id] = typ + "/" + step
		}
	}
	if events.RunEventID(run, events.StepCompleted, "a") == events.RunEventID("01JNR4S7T0000000000000000B", events.StepCompleted, "a") {
		t.Error("two runs share an event id")
	}
}

func TestSubject(t *testing.T) {
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"backup requested", events.Subject(events.BackupRequested, "orders-db"), "bs.events.backup.requested.orders-db"},
		{"snapshot completed", events.Subject(events.SnapshotCompleted, "redis"), "bs.events.snapshot.completed.redis"},
		{"filter for every plan", events.SubjectFilter(events.UploadCompleted), "bs.events.upload.completed.*"},
		{"wildcard", events.SubjectWildcard, "bs.events.>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
	for _, typ := range events.Types() {
		s := events.Subject(typ, "p")
		if tokens := strings.Split(s, "."); len(tokens) != 5 {
			t.Errorf("%s: subject %q has %d tokens, want bs.events.<noun>.<verb>.<plan>", typ, s, len(tokens))
		}
	}
}

func TestTypesAndNewPayload(t *testing.T) {
	types := events.Types()
	for i, typ := range types {
		if i > 0 && types[i-1] >= typ {
			t.Errorf("Types not sorted at %s", typ)
		}
		p, ok := events.NewPayload(typ)
		if !ok || p.EventType() != typ {
			t.Errorf("NewPayload(%s) = %v, %v", typ, p, ok)
		}
	}
	if _, ok := events.NewPayload("io.backstream.backup.exploded"); ok {
		t.Error("NewPayload accepted an unknown type")
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		give string
		want bool
	}{
		{"orders-db", true},
		{"a", true},
		{"0", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"-a", false},
		{"a-", false},
		{"Orders", false},
		{"orders.db", false},
		{"orders_db", false},
		{"*", false},
		{">", false},
	}
	for _, tt := range tests {
		if got := events.ValidName(tt.give); got != tt.want {
			t.Errorf("ValidName(%q) = %v, want %v", tt.give, got, tt.want)
		}
	}
}

// TestAttemptRoundTrips: the attempt of a replay travels as an Integer
// extension through the wire form; an event without it is of attempt 1.
func TestAttemptRoundTrips(t *testing.T) {
	tests := []struct {
		name string
		give int
		want int
	}{
		{"first attempt: no extension", 1, 1},
		{"unset", 0, 1},
		{"a replay", 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := exampleMeta
			m.Attempt = tt.give
			e := wireOrSelf(t, events.MustNew(m, examples[events.BackupRequested]))
			if got := events.Attempt(e); got != tt.want {
				t.Errorf("attempt %d, want %d", got, tt.want)
			}
			if _, ok := e.Extensions()[events.ExtAttempt]; ok != (tt.want > 1) {
				t.Errorf("attempt extension present %v for attempt %d", ok, tt.want)
			}
		})
	}
}

// TestIDsSortInTheOrderTheyWereMade: ids made one after the other, many in
// the same millisecond, sort in that order (a listing newest first by run
// id shows a burst of triggers as they came), and are all valid run ids.
func TestIDsSortInTheOrderTheyWereMade(t *testing.T) {
	prev := events.NewID()
	for range 20000 {
		id := events.NewID()
		if id <= prev || !events.ValidRunID(id) {
			t.Fatalf("%s made after %s (valid run id: %v)", id, prev, events.ValidRunID(id))
		}
		prev = id
	}
}
