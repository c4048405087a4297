package bus_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
)

// wireEvent is a valid backup.requested for plan demo as JSON, with set
// applied to its attributes first (a nil value removes one).
func wireEvent(t *testing.T, set map[string]any) []byte {
	t.Helper()
	b, err := bus.Encode(requested(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range set {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// edgeCases are messages every consumer must refuse at once, each with the
// words its reason must contain. They are published on the subject of a
// backup.requested for plan demo.
func edgeCases(t *testing.T) []struct {
	name   string
	data   []byte
	reason string
} {
	return []struct {
		name   string
		data   []byte
		reason string
	}{
		{"specversion 0.3", wireEvent(t, map[string]any{"specversion": "0.3"}), `specversion "0.3": must be "1.0"`},
		{"time in 2099", wireEvent(t, map[string]any{"time": "2099-01-01T00:00:00Z"}), "time 2099-01-01T00:00:00Z: more than 5m0s in the future"},
		{"no time", wireEvent(t, map[string]any{"time": nil}), "time: required"},
		{"runid with a dot", wireEvent(t, map[string]any{"runid": "a.b"}), `runid "a.b": must be a ULID`},
		{"runid with a space", wireEvent(t, map[string]any{"runid": "a b"}), `runid "a b": must be a ULID`},
		{"runid with a wildcard", wireEvent(t, map[string]any{"runid": "*"}), `runid "*": must be a ULID`},
		{"type of another subject", wireEvent(t, map[string]any{"type": events.BackupSucceeded}), `a io.backstream.backup.succeeded about plan "demo" travels on "bs.events.backup.succeeded.demo"`},
		{"plan of another subject", wireEvent(t, map[string]any{"subject": "other"}), `arrived on subject "bs.events.backup.requested.demo", but a io.backstream.backup.requested about plan "other"`},
	}
}

func TestAcceptRefusesAtTheEdge(t *testing.T) {
	subject := events.Subject(events.BackupRequested, "demo")
	tests := append(edgeCases(t), []struct {
		name   string
		data   []byte
		reason string
	}{
		{"valid", wireEvent(t, nil), ""},
		{"larger than an event may be", append(wireEvent(t, nil), bytes.Repeat([]byte(" "), events.MaxEventSize)...), "larger than an event may be"},
		{"not JSON", []byte("\x00\xff garbage"), "not a CloudEvent"},
		{"missing payload field", wireEvent(t, map[string]any{"data": map[string]any{}}), "trigger: required"},
	}...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := bus.Accept(subject, tt.data)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("Accept: %v", err)
				}
				return
			}
			if !errors.Is(err, events.ErrInvalid) || !bus.IsPermanent(err) || !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("Accept: got %v, want a permanent ErrInvalid naming %q", err, tt.reason)
			}
		})
	}
}

// TestEdgeRefusalsAreDeadLetteredAtOnce publishes each refused kind
// straight onto a consumer's subject: each is dead-lettered on its first
// delivery with its reason, the handler never sees it, and OnDead (which
// fails runs) is never told, so a forged message cannot fail a run.
func TestEdgeRefusalsAreDeadLetteredAtOnce(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	var onDead atomic.Int32
	got, _ := collect(t, b, bus.ConsumerSpec{
		Name:    "edge",
		Types:   []string{events.BackupRequested},
		Handler: func(ctx context.Context, e events.Event) ([]events.Event, error) { return nil, nil },
		OnDead: func(ctx context.Context, e events.Event, reason string) ([]events.Event, error) {
			onDead.Add(1)
			return nil, nil
		},
	})
	subject := events.Subject(events.BackupRequested, "demo")
	cases := edgeCases(t)
	for _, c := range cases {
		if _, err := b.JS.Publish(ctx, subject, c.data); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	if err := b.Publish(ctx, requested(t, "")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the good event after the refused ones", func() bool { return len(got()) == 1 })
	dls := deadLetters(t, b, "edge", len(cases))
	for _, c := range cases {
		var found *nats.Msg
		for _, dl := range dls {
			if bytes.Equal(dl.Data, c.data) {
				found = dl
			}
		}
		if found == nil {
			t.Errorf("%s: no dead letter carries the original bytes", c.name)
			continue
		}
		if reason := found.Header.Get(bus.HeaderDeadReason); !strings.Contains(reason, c.reason) {
			t.Errorf("%s: dead-letter reason %q does not name %q", c.name, reason, c.reason)
		}
		if n := found.Header.Get(bus.HeaderDeadTries); n != "1" {
			t.Errorf("%s: dead-lettered after %s deliveries, want 1 (no retries)", c.name, n)
		}
		sum := sha256.Sum256(c.data)
		if found.Header.Get(bus.HeaderDeadSHA256) != hex.EncodeToString(sum[:]) || found.Header.Get(bus.HeaderDeadSize) != strconv.Itoa(len(c.data)) ||
			found.Header.Get(bus.HeaderDeadSequence) == "" || found.Header.Get(bus.HeaderDeadCut) != "" {
			t.Errorf("%s: dead-letter headers %v, want the original's size, SHA-256 and sequence, not cut", c.name, found.Header)
		}
	}
	if n := onDead.Load(); n != 0 {
		t.Errorf("OnDead told about %d refused messages, want none", n)
	}
}

func TestDeadLetterMsgAlwaysFits(t *testing.T) {
	headers := nats.Header{bus.HeaderContentType: {bus.ContentTypeCloudEvents}, bus.HeaderMsgID: {"orig-id"}, "X-Big": {strings.Repeat("h", 3000)}}
	reason := strings.Repeat("why ", 1000)
	tests := []struct {
		name    string
		size    int
		limit   int
		wantCut bool
	}{
		{"small message, large limit", 100, 1 << 20, false},
		{"message of DeadLetterMaxData", bus.DeadLetterMaxData, 1 << 20, false},
		{"message above DeadLetterMaxData", bus.DeadLetterMaxData + 1, 1 << 20, true},
		{"message near the limit", 1<<20 - 100, 1 << 20, true},
		{"message at the limit", 1 << 20, 1 << 20, true},
		{"tiny limit", 10000, 4096, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := bytes.Repeat([]byte("d"), tt.size)
			dl := bus.DeadLetterMsg("metrics", "bs.events.backup.requested.demo", headers, data, 42, 3, reason, tt.limit)
			if size := encodedHeaderSize(dl.Header) + len(dl.Data); size > tt.limit {
				t.Errorf("dead letter of %d bytes exceeds the limit %d", size, tt.limit)
			}
			sum := sha256.Sum256(data)
			for k, want := range map[string]string{
				bus.HeaderDeadSequence: "42", bus.HeaderDeadSize: strconv.Itoa(tt.size), bus.HeaderDeadSHA256: hex.EncodeToString(sum[:]),
				bus.HeaderDeadFrom: "metrics", bus.HeaderDeadSubject: "bs.events.backup.requested.demo", bus.HeaderDeadTries: "3",
				bus.HeaderMsgID: "dlq.metrics.42", bus.HeaderContentType: bus.ContentTypeCloudEvents,
			} {
				if got := dl.Header.Get(k); got != want {
					t.Errorf("header %s = %q, want %q", k, got, want)
				}
			}
			if !strings.HasPrefix(dl.Header.Get(bus.HeaderDeadReason), "why why") {
				t.Errorf("reason header %q", dl.Header.Get(bus.HeaderDeadReason))
			}
			cut := dl.Header.Get(bus.HeaderDeadCut) == "true"
			if cut != tt.wantCut || !bytes.HasPrefix(data, dl.Data) || (!cut && len(dl.Data) != tt.size) {
				t.Errorf("cut %v with %d of %d bytes kept, want cut %v and a prefix", cut, len(dl.Data), tt.size, tt.wantCut)
			}
			if cut && len(dl.Data) > bus.DeadLetterMaxData {
				t.Errorf("a cut copy kept %d bytes, more than DeadLetterMaxData", len(dl.Data))
			}
			if cut && dl.Header.Get("X-Big") != "" {
				t.Error("a cut copy kept the original's headers")
			}
		})
	}
}

// encodedHeaderSize is the size of h on the wire, as the server counts it.
func encodedHeaderSize(h nats.Header) int {
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(": \r\n") + len(v)
		}
	}
	return n
}

// TestADeadLetterNearTheSizeLimitIsStoredCut is the message that used to be
// lost: an event just below the events stream's limit, whose copy with the
// dead-letter headers would not fit. It is stored cut to DeadLetterMaxData,
// with the headers that find the original, and terminated.
func TestADeadLetterNearTheSizeLimitIsStoredCut(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	collect(t, b, bus.ConsumerSpec{
		Name:    "near",
		Types:   []string{events.BackupRequested},
		Handler: func(ctx context.Context, e events.Event) ([]events.Event, error) { return nil, nil },
	})
	data := append([]byte(`{"specversion":"0.3","padding":"`), bytes.Repeat([]byte("x"), events.MaxEventSize-200)...)
	data = append(data, `"}`...)
	ack, err := b.JS.Publish(ctx, events.Subject(events.BackupRequested, "demo"), data)
	if err != nil {
		t.Fatalf("publish an event just below the limit: %v", err)
	}
	dl := deadLetters(t, b, "near", 1)[0]
	sum := sha256.Sum256(data)
	if dl.Header.Get(bus.HeaderDeadCut) != "true" || !bytes.HasPrefix(data, dl.Data) || len(dl.Data) != bus.DeadLetterMaxData ||
		dl.Header.Get(bus.HeaderDeadSize) != strconv.Itoa(len(data)) || dl.Header.Get(bus.HeaderDeadSHA256) != hex.EncodeToString(sum[:]) ||
		dl.Header.Get(bus.HeaderDeadSequence) != strconv.FormatUint(ack.Sequence, 10) || !strings.Contains(dl.Header.Get(bus.HeaderDeadReason), `specversion "0.3"`) {
		t.Errorf("dead letter: %d bytes, headers %v; want a cut prefix with the original's size, SHA-256, sequence %d and the reason", len(dl.Data), dl.Header, ack.Sequence)
	}
	// Terminated, not redelivered.
	c, err := b.JS.Consumer(ctx, bus.EventsStream, "near")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the cut event terminated", func() bool {
		info, err := c.Info(ctx)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
}

// TestALargerPublishIsRefusedByTheServer: the events stream stores nothing
// above events.MaxEventSize, so no consumer ever holds such a message.
func TestALargerPublishIsRefusedByTheServer(t *testing.T) {
	_, b := bustest.Start(t)
	_, err := b.JS.Publish(context.Background(), events.Subject(events.BackupRequested, "demo"), bytes.Repeat([]byte("x"), events.MaxEventSize+1))
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("publish of %d bytes: got %v, want the server's refusal", events.MaxEventSize+1, err)
	}
}

// syncLog collects log lines for assertions.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncLog) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAnUnstorableDeadLetterIsNakedAndSaysSo: with the dead-letter stream
// gone the copy cannot be stored, so the event is nak'ed, the log says so
// with the delivery count, and once the stream is back the event is
// dead-lettered on its redelivery: never lost.
func TestAnUnstorableDeadLetterIsNakedAndSaysSo(t *testing.T) {
	srv, b := bustest.Start(t)
	ctx := context.Background()
	var logs syncLog
	b.Log = slog.New(slog.NewTextHandler(&logs, nil))
	if err := b.JS.DeleteStream(ctx, bus.DeadLetterStream); err != nil {
		t.Fatal(err)
	}
	collect(t, b, bus.ConsumerSpec{
		Name:    "nodlq",
		Types:   []string{events.BackupRequested},
		Handler: func(ctx context.Context, e events.Event) ([]events.Event, error) { return nil, nil },
	})
	if _, err := b.JS.Publish(ctx, events.Subject(events.BackupRequested, "demo"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the failed copy logged", func() bool {
		return strings.Contains(logs.String(), "dead-letter copy failed; event nak'ed for redelivery in 5s")
	})
	line := logs.String()
	if !strings.Contains(line, "deliveries=1") || strings.Contains(line, "event dead-lettered") {
		t.Errorf("log does not say what happened:\n%s", line)
	}
	// The stream comes back (a second Connect sets it up again).
	bustest.Connect(t, srv.URL(), "again")
	dl := deadLetters(t, b, "nodlq", 1)[0]
	if !bytes.Equal(dl.Data, []byte("{not json")) || dl.Header.Get(bus.HeaderDeadTries) != "2" {
		t.Errorf("dead letter after the stream returned: %q, deliveries %s", dl.Data, dl.Header.Get(bus.HeaderDeadTries))
	}
}

// TestBytesInFlightAreBounded: a consumer that may run many handlers at once
// holds no more event bytes than its MaxBytesInFlight, however large the
// events, and still handles every one.
func TestBytesInFlightAreBounded(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	const (
		n      = 24
		size   = 100 << 10
		budget = 3 * size
	)
	var inFlight, most, handled atomic.Int64
	collect(t, b, bus.ConsumerSpec{
		Name:             "wide",
		Types:            []string{events.BackupRequested},
		Concurrency:      64,
		MaxBytesInFlight: budget,
		Handler: func(ctx context.Context, e events.Event) ([]events.Event, error) {
			now := inFlight.Add(int64(len(e.Data()) + 512))
			for m := most.Load(); now > m && !most.CompareAndSwap(m, now); m = most.Load() {
			}
			time.Sleep(30 * time.Millisecond)
			inFlight.Add(-int64(len(e.Data()) + 512))
			handled.Add(1)
			return nil, nil
		},
	})
	for range n {
		e, err := events.New(events.Meta{Source: "test/cli", Plan: "demo", RunID: events.NewID()},
			events.BackupRequestedData{Trigger: events.TriggerCLI, Reason: strings.Repeat("r", size)})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every large event handled", func() bool { return handled.Load() == n })
	if m := most.Load(); m > budget {
		t.Errorf("%d bytes of events in flight at once, more than the bound %d", m, budget)
	}
	if m := most.Load(); m < 2*size {
		t.Errorf("at most %d bytes in flight: the consumer ran one event at a time", m)
	}
}

// TestAnUnstorableDeadLetterOnTheLastDeliverySaysWhereItStays: when the
// server will not deliver the event again, the log says so and where the
// event is, instead of promising a redelivery.
func TestAnUnstorableDeadLetterOnTheLastDeliverySaysWhereItStays(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	var logs syncLog
	b.Log = slog.New(slog.NewTextHandler(&logs, nil))
	if err := b.JS.DeleteStream(ctx, bus.DeadLetterStream); err != nil {
		t.Fatal(err)
	}
	collect(t, b, bus.ConsumerSpec{
		Name:       "lastcall",
		Types:      []string{events.BackupRequested},
		MaxDeliver: 1,
		Handler:    func(ctx context.Context, e events.Event) ([]events.Event, error) { return nil, nil },
	})
	if _, err := b.JS.Publish(ctx, events.Subject(events.BackupRequested, "demo"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the last delivery's log line", func() bool {
		return strings.Contains(logs.String(), "dead-letter copy failed on the last delivery; the event stays in the events stream, not redelivered to this consumer")
	})
	out := logs.String()
	for _, want := range []string{"deliveries=1", "nak'ed for redelivery in 5s", "deliveries=2", "stream=" + bus.EventsStream, "sequence=1"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}
