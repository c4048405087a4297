package bus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
)

// dlqFixture is a consumer "picky" that gives up on backup requests for
// plan ghost until fixed, and the dead letters it made: one for that
// event, one for a message that is not a CloudEvent, one cut (too large to
// keep whole).
type dlqFixture struct {
	b                 *bus.Bus
	url               string
	fixed             atomic.Bool
	got               func() []events.Event
	ghost             events.Event
	ghostData         []byte
	ghostSeq          uint64
	junkSeq, bigSeq   uint64
	junkData, bigData []byte
}

func newDLQFixture(t *testing.T) *dlqFixture {
	t.Helper()
	srv, b := bustest.Start(t)
	f := &dlqFixture{b: b, url: srv.URL()}
	ctx := context.Background()
	f.got, _ = collect(t, b, bus.ConsumerSpec{
		Name:  "picky",
		Types: []string{events.BackupRequested},
		Handler: func(ctx context.Context, e events.Event) ([]events.Event, error) {
			if e.Subject() == "ghost" && !f.fixed.Load() {
				return nil, bus.Permanent(fmt.Errorf("event %s for plan %q: plan not found", e.Type(), e.Subject()))
			}
			return nil, nil
		},
	})
	f.ghost = events.MustNew(events.Meta{Source: "test/cli", Plan: "ghost", RunID: events.NewID()}, events.BackupRequestedData{Trigger: events.TriggerCLI})
	if err := b.Publish(ctx, f.ghost); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.ghostData, err = bus.Encode(f.ghost); err != nil {
		t.Fatal(err)
	}
	subject := events.Subject(events.BackupRequested, "demo")
	f.junkData = []byte("{not json")
	f.bigData = bytes.Repeat([]byte("x"), bus.DeadLetterMaxData+1000)
	for _, d := range [][]byte{f.junkData, f.bigData} {
		if _, err := b.JS.Publish(ctx, subject, d); err != nil {
			t.Fatal(err)
		}
	}
	var list []bus.DeadLetter
	waitFor(t, "three dead letters", func() bool {
		list, err = b.DeadLetters().List(ctx, bus.DeadLetterFilter{})
		return err == nil && len(list) == 3
	})
	for _, dl := range list {
		switch {
		case dl.Plan == "ghost":
			f.ghostSeq = dl.Seq
		case dl.Cut:
			f.bigSeq = dl.Seq
		default:
			f.junkSeq = dl.Seq
		}
	}
	if f.ghostSeq == 0 || f.junkSeq == 0 || f.bigSeq == 0 {
		t.Fatalf("dead letters %+v: want one of plan ghost, one cut, one junk", list)
	}
	return f
}

func TestDeadLettersListAndGet(t *testing.T) {
	f := newDLQFixture(t)
	ctx := context.Background()
	q := f.b.DeadLetters()
	list, err := q.List(ctx, bus.DeadLetterFilter{})
	if err != nil {
		t.Fatal(err)
	}
	byseq := map[uint64]bus.DeadLetter{}
	for i, dl := range list {
		byseq[dl.Seq] = dl
		if i > 0 && list[i-1].Seq >= dl.Seq {
			t.Errorf("list not oldest first: %d before %d", list[i-1].Seq, dl.Seq)
		}
		if dl.Consumer != "picky" || dl.Deliveries != 1 || dl.EventSeq == 0 || dl.Time.IsZero() || len(dl.SHA256) != 64 {
			t.Errorf("dead letter %d: consumer %q, deliveries %d, event seq %d, time %v, sha256 %q", dl.Seq, dl.Consumer, dl.Deliveries, dl.EventSeq, dl.Time, dl.SHA256)
		}
	}
	g := byseq[f.ghostSeq]
	want := bus.DeadLetter{Seq: f.ghostSeq, Consumer: "picky", Subject: events.Subject(events.BackupRequested, "ghost"),
		EventID: f.ghost.ID(), Type: events.BackupRequested, Plan: "ghost", RunID: events.RunID(f.ghost),
		Size: len(f.ghostData)}
	if g.Subject != want.Subject || g.EventID != want.EventID || g.Type != want.Type || g.Plan != want.Plan ||
		g.RunID != want.RunID || g.Size != want.Size || g.Cut || !strings.Contains(g.Reason, `plan "ghost": plan not found`) {
		t.Errorf("ghost dead letter:\n got %+v\nwant %+v with the handler's reason", g, want)
	}
	// Where the data says nothing, type and plan come from the subject.
	for _, seq := range []uint64{f.junkSeq, f.bigSeq} {
		if dl := byseq[seq]; dl.Type != events.BackupRequested || dl.Plan != "demo" || dl.RunID != "" || !strings.Contains(dl.Reason, "not a CloudEvent") {
			t.Errorf("dead letter %d: type %q plan %q run %q reason %q", seq, dl.Type, dl.Plan, dl.RunID, dl.Reason)
		}
	}
	if big := byseq[f.bigSeq]; !big.Cut || big.Size != len(f.bigData) {
		t.Errorf("large dead letter: cut %v, size %d, want cut and %d", big.Cut, big.Size, len(f.bigData))
	}

	filters := []struct {
		name string
		give bus.DeadLetterFilter
		want []uint64
	}{
		{"by plan", bus.DeadLetterFilter{Plan: "ghost"}, []uint64{f.ghostSeq}},
		{"by plan with none", bus.DeadLetterFilter{Plan: "nope"}, nil},
		{"by consumer", bus.DeadLetterFilter{Consumer: "picky"}, []uint64{list[0].Seq, list[1].Seq, list[2].Seq}},
		{"by a consumer with none", bus.DeadLetterFilter{Consumer: "nobody"}, nil},
		{"by consumer and plan", bus.DeadLetterFilter{Consumer: "picky", Plan: "demo"}, []uint64{min(f.junkSeq, f.bigSeq), max(f.junkSeq, f.bigSeq)}},
		{"a page", bus.DeadLetterFilter{Limit: 2}, []uint64{list[0].Seq, list[1].Seq}},
		{"the page after it", bus.DeadLetterFilter{Limit: 2, After: list[1].Seq}, []uint64{list[2].Seq}},
		{"after the last", bus.DeadLetterFilter{After: list[2].Seq}, nil},
		{"a page of one plan", bus.DeadLetterFilter{Plan: "demo", Limit: 1}, []uint64{min(f.junkSeq, f.bigSeq)}},
		{"the page after it of one plan", bus.DeadLetterFilter{Plan: "demo", Limit: 1, After: min(f.junkSeq, f.bigSeq)}, []uint64{max(f.junkSeq, f.bigSeq)}},
		{"a page of one consumer after the last", bus.DeadLetterFilter{Consumer: "picky", After: list[2].Seq}, nil},
	}
	for _, tt := range filters {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			got, err := q.List(ctx, tt.give)
			if err != nil {
				t.Fatal(err)
			}
			var seqs []uint64
			for _, dl := range got {
				seqs = append(seqs, dl.Seq)
			}
			if fmt.Sprint(seqs) != fmt.Sprint(tt.want) {
				t.Errorf("got %v, want %v", seqs, tt.want)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("listing took %s", d)
			}
		})
	}
	if _, err := q.List(ctx, bus.DeadLetterFilter{Consumer: "a.>"}); err == nil || !strings.Contains(err.Error(), `consumer "a.>"`) {
		t.Errorf("a wildcard consumer filter: %v, want an error naming it", err)
	}

	c, err := q.Get(ctx, f.ghostSeq)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.Data, f.ghostData) || c.Header.Get(bus.HeaderDeadReason) != g.Reason || c.DeadLetter != g {
		t.Errorf("get %d: data %q, reason header %q, entry %+v; want the original bytes and the listed entry", f.ghostSeq, c.Data, c.Header.Get(bus.HeaderDeadReason), c.DeadLetter)
	}
	if _, err := q.Get(ctx, 9999); !errors.Is(err, bus.ErrNoDeadLetter) || !strings.Contains(err.Error(), "9999") {
		t.Errorf("get 9999: %v, want ErrNoDeadLetter naming it", err)
	}
}

func TestDeadLetterReplay(t *testing.T) {
	f := newDLQFixture(t)
	ctx := context.Background()
	q := f.b.DeadLetters()

	refusals := []struct {
		name string
		seq  uint64
		is   error
		want string
	}{
		{"cut", f.bigSeq, bus.ErrDeadLetterCut, fmt.Sprintf("dead letter %d: dead letter holds only part of its event: it keeps the first %d of the event's %d bytes", f.bigSeq, bus.DeadLetterMaxData, len(f.bigData))},
		{"still invalid", f.junkSeq, events.ErrInvalid, fmt.Sprintf("dead letter %d: still refused by every consumer: invalid event: not a CloudEvent", f.junkSeq)},
		{"unknown", 9999, bus.ErrNoDeadLetter, "dead letter 9999"},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			_, err := q.Replay(ctx, tt.seq)
			if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("replay: %v, want %v saying %q", err, tt.is, tt.want)
			}
		})
	}

	// Before the cause is fixed the replay is dead-lettered again, and the
	// new entry says where it came from. The original id is still inside
	// the events stream's duplicate window: the replay must get through.
	r, err := q.Replay(ctx, f.ghostSeq)
	if err != nil {
		t.Fatal(err)
	}
	wantID := f.ghost.ID() + ":dlq:" + strconv.FormatUint(f.ghostSeq, 10)
	if r.Duplicate || r.MsgID != wantID || r.EventID != f.ghost.ID() || r.Subject != events.Subject(events.BackupRequested, "ghost") {
		t.Errorf("replay: %+v, want msg id %s", r, wantID)
	}
	s, err := f.b.JS.Stream(ctx, bus.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(ctx, r.EventSeq)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.Data, f.ghostData) || m.Header.Get(bus.HeaderMsgID) != wantID || m.Header.Get(bus.HeaderReplayOf) != strconv.FormatUint(f.ghostSeq, 10) {
		t.Errorf("replayed message: data equal %v, headers %v", bytes.Equal(m.Data, f.ghostData), m.Header)
	}
	var again bus.DeadLetter
	waitFor(t, "the replay dead-lettered again", func() bool {
		l, err := q.List(ctx, bus.DeadLetterFilter{Plan: "ghost"})
		if err != nil || len(l) < 2 {
			return false
		}
		again = l[1]
		return true
	})
	if again.ReplayOf != f.ghostSeq || again.EventID != f.ghost.ID() || again.EventSeq != r.EventSeq {
		t.Errorf("second dead letter: %+v, want replay of %d, event seq %d", again, f.ghostSeq, r.EventSeq)
	}

	// The same entry replayed within the duplicate window is stored once.
	dup, err := q.Replay(ctx, f.ghostSeq)
	if err != nil || !dup.Duplicate || dup.EventSeq != r.EventSeq {
		t.Errorf("second replay of %d: %+v, %v; want a duplicate of events seq %d", f.ghostSeq, dup, err, r.EventSeq)
	}

	// Fixed: the replay of the newer entry is handled.
	f.fixed.Store(true)
	if _, err := q.Replay(ctx, again.Seq); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the replayed event handled", func() bool {
		for _, e := range f.got() {
			if e.ID() == f.ghost.ID() {
				return true
			}
		}
		return false
	})
	// Both entries stay until purged.
	if l, err := q.List(ctx, bus.DeadLetterFilter{Plan: "ghost"}); err != nil || len(l) != 2 {
		t.Errorf("after replays: %d entries of plan ghost (%v), want both kept", len(l), err)
	}
}

// TestDeadLetterReplayRefusedByTheServer replays as roles that may not
// publish the event: the server's refusal comes back at once, naming the
// subject, not as a timeout.
func TestDeadLetterReplayRefusedByTheServer(t *testing.T) {
	f := newDLQFixture(t)
	ctx := context.Background()
	viewer := bustest.ConnectAs(t, f.url, "viewer-tool", bus.RoleViewer)
	if l, err := viewer.DeadLetters().List(ctx, bus.DeadLetterFilter{}); err != nil || len(l) != 3 {
		t.Fatalf("viewer lists %d dead letters (%v), want 3", len(l), err)
	}
	start := time.Now()
	_, err := viewer.DeadLetters().Replay(ctx, f.ghostSeq)
	var refused *bus.PublishRefusedError
	if !errors.As(err, &refused) || refused.Subject != events.Subject(events.BackupRequested, "ghost") || refused.Seq != f.ghostSeq {
		t.Fatalf("viewer replays: %v, want a PublishRefusedError naming the subject", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the refusal took %s", d)
	}
	if _, err := viewer.DeadLetters().Purge(ctx, f.ghostSeq); err == nil || !strings.Contains(err.Error(), "refused by the server") {
		t.Errorf("viewer purges: %v, want refused by the server", err)
	}
	if l, _ := f.b.DeadLetters().List(ctx, bus.DeadLetterFilter{}); len(l) != 3 {
		t.Errorf("%d dead letters after refused replay and purge, want 3", len(l))
	}
}

func TestDeadLetterPurge(t *testing.T) {
	f := newDLQFixture(t)
	ctx := context.Background()
	// The API's role may delete dead letters one by one.
	q := bustest.ConnectAs(t, f.url, "api", "api").DeadLetters()

	_, err := q.Purge(ctx, f.ghostSeq, 9999, 9998)
	if !errors.Is(err, bus.ErrNoDeadLetter) || !strings.Contains(err.Error(), "9998, 9999 (nothing purged)") {
		t.Errorf("purge with unknown sequences: %v, want both named and nothing purged", err)
	}
	if l, _ := q.List(ctx, bus.DeadLetterFilter{}); len(l) != 3 {
		t.Fatalf("%d dead letters after a refused purge, want 3", len(l))
	}
	done, err := q.Purge(ctx, f.junkSeq, f.ghostSeq, f.junkSeq)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 2 || done[0].Seq != min(f.junkSeq, f.ghostSeq) || done[1].Seq != max(f.junkSeq, f.ghostSeq) {
		t.Errorf("purged %+v, want %d and %d once each", done, f.junkSeq, f.ghostSeq)
	}
	l, err := q.List(ctx, bus.DeadLetterFilter{})
	if err != nil || len(l) != 1 || l[0].Seq != f.bigSeq {
		t.Errorf("left: %+v (%v), want only %d", l, err, f.bigSeq)
	}
	if _, err := q.Get(ctx, f.ghostSeq); !errors.Is(err, bus.ErrNoDeadLetter) {
		t.Errorf("get a purged dead letter: %v", err)
	}
}
