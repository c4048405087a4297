package bus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

func requested(t *testing.T, id string) events.Event {
	t.Helper()
	e, err := events.New(events.Meta{ID: id, Source: "test/cli", Plan: "demo", RunID: events.NewID()},
		events.BackupRequestedData{Trigger: events.TriggerCLI})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// collect runs a consumer in the background and returns the events it saw.
func collect(t *testing.T, b *bus.Bus, spec bus.ConsumerSpec) (got func() []events.Event, stop func()) {
	t.Helper()
	var mu sync.Mutex
	var seen []events.Event
	inner := spec.Handler
	spec.Handler = func(ctx context.Context, e events.Event) ([]events.Event, error) {
		out, err := inner(ctx, e)
		if err == nil {
			mu.Lock()
			seen = append(seen, e)
			mu.Unlock()
		}
		return out, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, spec) }()
	stopOnce := sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("consumer %s: %v", spec.Name, err)
		}
	})
	t.Cleanup(stopOnce)
	return func() []events.Event {
		mu.Lock()
		defer mu.Unlock()
		return append([]events.Event(nil), seen...)
	}, stopOnce
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDuplicateIDWithinWindowIsStoredOnce(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	e := requested(t, "sched-demo-1700000000")
	if err := b.Publish(ctx, e, e); err != nil {
		t.Fatal(err)
	}
	again := requested(t, "sched-demo-1700000000") // same id, fresh run id
	if err := b.Publish(ctx, again); err != nil {
		t.Fatal(err)
	}
	s, err := b.JS.Stream(ctx, bus.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages, want 1", info.State.Msgs)
	}
}

func TestRetryWithBackoffThenSuccess(t *testing.T) {
	_, b := bustest.Start(t)
	var calls atomic.Int32
	var times []time.Time
	var mu sync.Mutex
	got, _ := collect(t, b, bus.ConsumerSpec{
		Name:    "flaky",
		Types:   []string{events.BackupRequested},
		Backoff: []time.Duration{200 * time.Millisecond, 400 * time.Millisecond},
		Handler: func(ctx context.Context, e events.Event) ([]events.Event, error) {
			mu.Lock()
			times = append(times, time.Now())
			mu.Unlock()
			if calls.Add(1) <= 2 {
				return nil, errors.New("transient")
			}
			return nil, nil
		},
	})
	if err := b.Publish(context.Background(), requested(t, "")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "success after two failures", func() bool { return len(got()) == 1 })
	if n := calls.Load(); n != 3 {
		t.Fatalf("handler called %d times, want 3", n)
	}
	mu.Lock()
	defer mu.Unlock()
	// The nak delays are the configured backoff: a lower bound, not a timing assertion.
	if d := times[1].Sub(times[0]); d < 200*time.Millisecond {
		t.Errorf("second delivery after %v, want >= 200ms backoff", d)
	}
	if d := times[2].Sub(times[1]); d < 400*time.Millisecond {
		t.Errorf("third delivery after %v, want >= 400ms backoff", d)
	}
}

func deadLetters(t *testing.T, b *bus.Bus, consumer string, want int) []*nats.Msg {
	t.Helper()
	ctx := context.Background()
	var out []*nats.Msg
	waitFor(t, fmt.Sprintf("%d dead letters", want), func() bool {
		s, err := b.JS.Stream(ctx, bus.DeadLetterStream)
		if err != nil {
			return false
		}
		info, err := s.Info(ctx)
		return err == nil && info.State.Msgs >= uint64(want)
	})
	s, _ := b.JS.Stream(ctx, bus.DeadLetterStream)
	for seq := uint64(1); len(out) < want; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("dead letter %d: %v", seq, err)
		}
		if m.Subject == events.DeadLetterRoot+"."+consumer {
			out = append(out, &nats.Msg{Subject: m.Subject, Data: m.Data, Header: m.Header})
		}
	}
	return out
}

func TestMalformedEventsAreDeadLetteredAndConsumerKeepsWorking(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	got, _ := collect(t, b, bus.ConsumerSpec{
		Name:    "strict",
		Types:   []string{events.BackupRequested},
		Handler: func(ctx context.Context, e events.Event) ([]events.Event, error) { return nil, nil },
	})
	subject := events.Subject(events.BackupRequested, "demo")
	missingTrigger := requested(t, "")
	_ = missingTrigger.SetData("application/json", map[string]string{"reason": "no trigger"})
	missingData, _ := bus.Encode(missingTrigger)
	unknown := requested(t, "")
	unknown.SetType(events.TypePrefix + "backup.exploded")
	unknownData, _ := bus.Encode(unknown)

	bad := []struct {
		name   string
		data   []byte
		reason string
	}{
		{"bad json", []byte("{not json"), "not a CloudEvent"},
		{"missing field", missingData, "trigger: required"},
		{"unknown type", unknownData, "unknown event type"},
	}
	for _, m := range bad {
		if _, err := b.JS.Publish(ctx, subject, m.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Publish(ctx, requested(t, "")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the good event after three bad ones", func() bool { return len(got()) == 1 })
	dls := deadLetters(t, b, "strict", len(bad))
	// Handlers run concurrently, so dead letters are matched by their bytes.
	for _, m := range bad {
		var found *nats.Msg
		for _, dl := range dls {
			if bytes.Equal(dl.Data, m.data) {
				found = dl
			}
		}
		if found == nil {
			t.Errorf("%s: no dead letter carries the original bytes", m.name)
			continue
		}
		if reason := found.Header.Get(bus.HeaderDeadReason); !bytes.Contains([]byte(reason), []byte(m.reason)) {
			t.Errorf("%s: dead-letter reason %q does not mention %q", m.name, reason, m.reason)
		}
	}
}

func TestPermanentErrorAndExhaustedRetriesAreDeadLettered(t *testing.T) {
	_, b := bustest.Start(t)
	ctx := context.Background()
	var calls atomic.Int32
	collect(t, b, bus.ConsumerSpec{
		Name:       "doomed",
		Types:      []string{events.BackupRequested},
		MaxDeliver: 3,
		Backoff:    []time.Duration{50 * time.Millisecond},
		Handler: func(ctx context.Context, e events.Event) ([]events.Event, error) {
			calls.Add(1)
			var d events.BackupRequestedData
			_ = e.DataAs(&d)
			if d.Reason == "permanent" {
				return nil, bus.Permanent(errors.New("plan \"demo\" does not exist"))
			}
			return nil, errors.New("still broken")
		},
	})
	perm := events.MustNew(events.Meta{Source: "t", Plan: "demo", RunID: events.NewID()}, events.BackupRequestedData{Trigger: "cli", Reason: "permanent"})
	if err := b.Publish(ctx, perm, requested(t, "")); err != nil {
		t.Fatal(err)
	}
	dls := deadLetters(t, b, "doomed", 2)
	reasons := dls[0].Header.Get(bus.HeaderDeadReason) + " | " + dls[1].Header.Get(bus.HeaderDeadReason)
	for _, want := range []string{"does not exist", "gave up after 3 deliveries: still broken"} {
		if !bytes.Contains([]byte(reasons), []byte(want)) {
			t.Errorf("dead-letter reasons %q lack %q", reasons, want)
		}
	}
	if n := calls.Load(); n != 4 {
		t.Errorf("handler called %d times, want 1 (permanent) + 3 (exhausted)", n)
	}
}

func TestSetupIsIdempotentUnderConcurrentStarts(t *testing.T) {
	srv := bustest.Server(t)
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			auth, _ := bustest.AuthFor(srv.URL(), bus.RoleAdmin)
			b, err := bus.Connect(ctx, srv.URL(), "replica", bus.Config{Auth: auth}, bustest.Logger(t))
			if err != nil {
				errs <- err
				return
			}
			defer b.NC.Close()
			_, err = b.EnsureConsumer(ctx, bus.ConsumerSpec{Name: "snapshot", Types: []string{events.BackupRequested}})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	_ = jetstream.ErrConsumerNotFound
}
