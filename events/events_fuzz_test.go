package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"sort"
	"testing"

	"github.com/backstream/backstream/events"
)

// exampleTypes lists the types of examples in a fixed order, so the seed
// corpus is the same on every run.
func exampleTypes() []string {
	ts := make([]string, 0, len(examples))
	for t := range examples {
		ts = append(ts, t)
	}
	sort.Strings(ts)
	return ts
}

// FuzzDecode feeds arbitrary bytes through what a consumer does with a
// message: the structured-mode JSON decode (as bus.Decode does) and then
// events.Decode. A refusal must wrap ErrInvalid; an event that is accepted
// must survive the trip back onto the wire: encoded again and decoded, it has
// the same envelope and payload, the encoding is a fixed point, and New
// builds an event from its parts that decodes to the same payload.
func FuzzDecode(f *testing.F) {
	for _, typ := range exampleTypes() {
		b, err := json.Marshal(events.MustNew(exampleMeta, examples[typ]))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"specversion":"0.3","id":"x","source":"s","type":"io.backstream.backup.requested","subject":"p","runid":"r","data":{"trigger":"cli"}}`))
	f.Add([]byte(`{"specversion":"1.0","id":"x","source":"s","type":"io.backstream.backup.requested","subject":"p","runid":"r","datacontenttype":"application/json","data_base64":"eyJ0cmlnZ2VyIjoiY2xpIn0="}`))
	replayed := exampleMeta
	replayed.Attempt = 2
	if b, err := json.Marshal(events.MustNew(replayed, examples[events.BackupRequested])); err == nil {
		f.Add(b)
		f.Add(bytes.Replace(b, []byte(`"attempt":2`), []byte(`"attempt":2.5`), 1))
		f.Add(bytes.Replace(b, []byte(`"attempt":2`), []byte(`"attempt":"2"`), 1))
		f.Add(bytes.Replace(b, []byte(`"attempt":2`), []byte(`"attempt":-1`), 1))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var e events.Event
		if err := json.Unmarshal(b, &e); err != nil {
			return
		}
		p, err := events.Decode(e)
		if err != nil {
			if !errors.Is(err, events.ErrInvalid) {
				t.Fatalf("refusal does not wrap ErrInvalid: %v", err)
			}
			return
		}
		b2, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("an accepted event does not encode: %v", err)
		}
		var e2 events.Event
		if err := json.Unmarshal(b2, &e2); err != nil {
			t.Fatalf("an accepted event's encoding does not decode: %v\n%s", err, b2)
		}
		p2, err := events.Decode(e2)
		if err != nil {
			t.Fatalf("an accepted event is refused after a round trip: %v\n%s", err, b2)
		}
		sameEnvelope(t, e, e2)
		samePayload(t, p, p2)
		if b3, err := json.Marshal(e2); err != nil || !bytes.Equal(b2, b3) {
			t.Fatalf("encoding is not a fixed point (%v):\n%s\n%s", err, b2, b3)
		}
		if n := events.Attempt(e); n < 1 || n != events.Attempt(e2) {
			t.Fatalf("attempt %d, %d after a round trip", n, events.Attempt(e2))
		}
		m := events.Meta{ID: e.ID(), Source: e.Source(), Plan: e.Subject(), RunID: events.RunID(e),
			Step: events.Step(e), TraceParent: events.TraceParent(e), Time: e.Time(), Attempt: events.Attempt(e)}
		e3, err := events.New(m, p)
		if err != nil {
			t.Fatalf("New refuses the parts of an accepted event: %v\n%s", err, b)
		}
		p3, err := events.Decode(wire(t, e3))
		if err != nil {
			t.Fatalf("an event built by New from an accepted one is refused: %v", err)
		}
		samePayload(t, p, p3)
		if events.Attempt(e3) != events.Attempt(e) {
			t.Fatalf("attempt %d, %d in the event New built from it", events.Attempt(e), events.Attempt(e3))
		}
	})
}

// FuzzPayload decodes arbitrary JSON as the payload of each event type. A
// payload that validates must encode and decode back to itself, validate
// again, and make a valid event.
func FuzzPayload(f *testing.F) {
	for _, typ := range exampleTypes() {
		b, err := json.Marshal(examples[typ])
		if err != nil {
			f.Fatal(err)
		}
		f.Add(typ, b)
		f.Add(typ, []byte(`{}`))
	}
	f.Fuzz(func(t *testing.T, typ string, b []byte) {
		p, ok := events.NewPayload(typ)
		if !ok {
			return
		}
		if err := json.Unmarshal(b, p); err != nil || p.Validate() != nil {
			return
		}
		enc, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("a valid payload does not encode: %v", err)
		}
		q, _ := events.NewPayload(typ)
		if err := json.Unmarshal(enc, q); err != nil {
			t.Fatalf("a valid payload's encoding does not decode: %v\n%s", err, enc)
		}
		if err := q.Validate(); err != nil {
			t.Fatalf("a valid payload is invalid after a round trip: %v\n%s", err, enc)
		}
		samePayload(t, p, q)
		e, err := events.New(exampleMeta, p)
		if err != nil {
			t.Fatalf("New refuses a valid payload: %v\n%s", err, enc)
		}
		got, err := events.Decode(wire(t, e))
		if err != nil {
			t.Fatalf("an event of a valid payload is refused: %v\n%s", err, enc)
		}
		samePayload(t, p, got)
	})
}

func sameEnvelope(t *testing.T, a, b events.Event) {
	t.Helper()
	if a.SpecVersion() != b.SpecVersion() || a.ID() != b.ID() || a.Type() != b.Type() || a.Source() != b.Source() ||
		a.Subject() != b.Subject() || !a.Time().Equal(b.Time()) || a.DataContentType() != b.DataContentType() ||
		events.RunID(a) != events.RunID(b) || events.Step(a) != events.Step(b) || events.TraceParent(a) != events.TraceParent(b) {
		t.Fatalf("envelope changed in a round trip:\n%s\n%s", a, b)
	}
}

// samePayload compares payloads by their encoding: time.Time values that
// are equal may differ in their *Location, which reflect.DeepEqual sees.
func samePayload(t *testing.T, a, b events.Payload) {
	t.Helper()
	if a.EventType() != b.EventType() {
		t.Fatalf("payload type changed: %s, %s", a.EventType(), b.EventType())
	}
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	if errA != nil || errB != nil || !bytes.Equal(ja, jb) {
		t.Fatalf("payload changed in a round trip (%v, %v):\n%s\n%s", errA, errB, ja, jb)
	}
}
