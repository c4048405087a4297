package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/events"
)

// HeaderReplayOf marks an event republished from a dead letter with that
// dead letter's sequence. Consumers ignore it; when the replay is
// dead-lettered again its copy keeps the header (DeadLetterMsg keeps the
// original's headers), so the new entry says which one it came from.
const HeaderReplayOf = "Backstream-Replay-Of"

// Errors of the dead-letter tool. Callers test them with errors.Is; a
// replay that still fails the event contract wraps events.ErrInvalid, and
// a publish the server refuses is a *PublishRefusedError.
var (
	// ErrNoDeadLetter: no dead letter has that sequence (never had, or
	// purged, or past the stream's max age).
	ErrNoDeadLetter = errors.New("no such dead letter")
	// ErrDeadLetterCut: the copy keeps only a prefix of the event, so it
	// cannot be replayed.
	ErrDeadLetterCut = errors.New("dead letter holds only part of its event")
)

// PublishRefusedError is a replay the server refused because this NATS
// user may not publish on the event's subject (a role other than admin
// publishes only the events of its own stage).
type PublishRefusedError struct {
	Seq     uint64
	Subject string
	Err     error
}

func (e *PublishRefusedError) Error() string {
	return fmt.Sprintf("replay dead letter %d: this NATS user may not publish %s: %v", e.Seq, e.Subject, e.Err)
}

func (e *PublishRefusedError) Unwrap() error { return e.Err }

// DeadLetter is one entry of the dead-letter stream: what its headers say
// and, when its data parses as a CloudEvent, which event it holds. The
// event's attributes are as the refused message had them (untrusted, cut
// to 256 bytes); where the data does not parse, type and plan come from the
// original subject.
type DeadLetter struct {
	// Seq is the entry's sequence in BACKSTREAM_DLQ: what Get, Replay and
	// Purge take.
	Seq uint64 `json:"seq"`
	// Time is when it was dead-lettered.
	Time     time.Time `json:"time"`
	Consumer string    `json:"consumer"`
	// Subject is the subject the event was published on; a replay goes there.
	Subject string `json:"subject"`
	EventID string `json:"eventId,omitempty"`
	Type    string `json:"type,omitempty"`
	Plan    string `json:"plan,omitempty"`
	RunID   string `json:"runId,omitempty"`
	Step    string `json:"step,omitempty"`
	Reason  string `json:"reason"`
	// Deliveries is how often the consumer was handed the event.
	Deliveries int `json:"deliveries"`
	// EventSeq is the original's sequence in BACKSTREAM_EVENTS, where it
	// stays while that stream keeps events.
	EventSeq uint64 `json:"eventSeq,omitempty"`
	// Size is the original's size in bytes; SHA256 its digest (hex).
	Size   int    `json:"size"`
	SHA256 string `json:"sha256,omitempty"`
	// Cut is set when the copy keeps only a prefix of the original (it was
	// larger than a dead letter may hold): such an entry cannot be replayed.
	Cut bool `json:"cut"`
	// ReplayOf is the dead letter this event was replayed from, when it was.
	ReplayOf uint64 `json:"replayOf,omitempty"`
}

// DeadLetterCopy is a dead letter with what it stores: its headers and the
// original event's bytes (a prefix of them when Cut).
type DeadLetterCopy struct {
	DeadLetter
	Header nats.Header
	Data   []byte
}

// DeadLetterFilter selects dead letters. Empty fields select all.
type DeadLetterFilter struct {
	// Consumer is the durable consumer that gave up (bs.dlq.<consumer>).
	Consumer string
	// Plan is the plan the event is about.
	Plan string
	// After keeps only entries with a higher sequence: the last Seq of
	// the previous page.
	After uint64
	// Limit is the most entries listed: <= 0 means DefaultDeadLetterLimit,
	// more than MaxDeadLetterLimit means MaxDeadLetterLimit.
	Limit int
}

// DefaultDeadLetterLimit and MaxDeadLetterLimit bound a page of List: a
// flood of junk may leave any number of dead letters.
const (
	DefaultDeadLetterLimit = 100
	MaxDeadLetterLimit     = 1000
)

// Validate refuses a consumer name that is not one subject token.
func (f DeadLetterFilter) Validate() error {
	if f.Consumer != "" && (strings.ContainsAny(f.Consumer, ".*> \t\r\n") || len(f.Consumer) > 64) {
		return fmt.Errorf("consumer %q: must be a consumer's name (one subject token, no wildcards)", truncate(f.Consumer, 64))
	}
	return nil
}

// Replayed is what a replay published.
type Replayed struct {
	// Seq is the dead letter replayed.
	Seq uint64 `json:"seq"`
	// EventID is the CloudEvent id, unchanged.
	EventID string `json:"eventId"`
	Subject string `json:"subject"`
	// MsgID is the replay's Nats-Msg-Id: <event id>:dlq:<seq>, so the
	// events stream's duplicate window, which may still hold the original
	// id, does not drop it.
	MsgID string `json:"msgId"`
	// EventSeq is where the replay is stored in BACKSTREAM_EVENTS.
	EventSeq uint64 `json:"eventSeq"`
	// Duplicate is set when this dead letter was already replayed within
	// the duplicate window: the stream kept that replay (at EventSeq) and
	// dropped this one.
	Duplicate bool `json:"duplicate,omitempty"`
}

// DeadLetters reads, replays and removes the dead letters of a bus. It
// needs the permissions of the viewer role to read; Replay publishes on
// the event's own subject and Purge deletes single messages of
// BACKSTREAM_DLQ, which only the roles granted that may (admin; api for
// deleting). Its methods may be called from several goroutines.
type DeadLetters struct{ b *Bus }

// DeadLetters is the dead-letter tool of b.
func (b *Bus) DeadLetters() *DeadLetters { return &DeadLetters{b: b} }

// maxAttr bounds an event attribute taken from a dead letter's data: it
// was refused, so its size is the sender's choice.
const maxAttr = 256

// List returns the dead letters f selects, oldest first, at most f.Limit
// of them: a full page may have more after its last Seq (f.After of the
// next page). It reads the stream through an ordered consumer from the
// first entry the page can hold (so a long queue is not a request per
// entry) and keeps only the summaries.
func (q *DeadLetters) List(ctx context.Context, f DeadLetterFilter) ([]DeadLetter, error) {
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	if f.Limit <= 0 {
		f.Limit = DefaultDeadLetterLimit
	}
	f.Limit = min(f.Limit, MaxDeadLetterLimit)
	subject := events.DeadLetterRoot + ".>"
	if f.Consumer != "" {
		subject = events.DeadLetterRoot + "." + f.Consumer
	}
	s, err := q.b.JS.Stream(ctx, DeadLetterStream)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	// The first entry decides whether to read at all: an ordered consumer
	// on a filter nothing matches would wait for the first message forever.
	first, err := s.GetMsg(ctx, f.After+1, jetstream.WithGetMsgSubject(subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	c, err := q.b.JS.OrderedConsumer(ctx, DeadLetterStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject},
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: first.Sequence})
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	// A batch holds at most what one message may be, as Run's pulls do.
	iter, err := c.Messages(jetstream.PullMaxMessagesWithBytesLimit(64, int(q.b.NC.MaxPayload())+pullSlack))
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	defer iter.Stop()
	var out []DeadLetter
	for {
		// Bounded: the entries counted above may be purged meanwhile.
		nctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		msg, err := iter.Next(jetstream.NextContext(nctx))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("list dead letters: %w", ctx.Err())
			}
			if errors.Is(err, context.DeadlineExceeded) {
				return out, nil
			}
			return nil, fmt.Errorf("list dead letters: %w", err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return nil, fmt.Errorf("list dead letters: %w", err)
		}
		dl := parseDeadLetter(md.Sequence.Stream, md.Timestamp, msg.Subject(), msg.Headers(), msg.Data())
		if f.Plan == "" || dl.Plan == f.Plan {
			out = append(out, dl)
		}
		if md.NumPending == 0 || len(out) == f.Limit {
			return out, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("list dead letters: %w", err)
		}
	}
}

// Get returns the dead letter at seq with its headers and data, or
// ErrNoDeadLetter.
func (q *DeadLetters) Get(ctx context.Context, seq uint64) (*DeadLetterCopy, error) {
	s, err := q.b.JS.Stream(ctx, DeadLetterStream)
	if err != nil {
		return nil, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	if seq == 0 {
		return nil, fmt.Errorf("dead letter 0: %w (sequences start at 1)", ErrNoDeadLetter)
	}
	m, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("dead letter %d: %w", seq, ErrNoDeadLetter)
	}
	if err != nil {
		return nil, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	return &DeadLetterCopy{
		DeadLetter: parseDeadLetter(m.Sequence, m.Time, m.Subject, m.Header, m.Data),
		Header:     m.Header,
		Data:       m.Data,
	}, nil
}

// Replay republishes the event dead letter seq holds, byte for byte, on the
// subject it was first published on, once its cause is fixed. Its
// Nats-Msg-Id is <event id>:dlq:<seq>: the original id may still be inside
// the events stream's duplicate window, which would drop the replay
// silently, while replaying the same entry twice within the window stores
// it once (Replayed.Duplicate). Every consumer of the event's type sees it
// again, not only the one that gave up; handlers are idempotent on (run,
// step), so those that handled it already change nothing.
//
// Replay refuses, before publishing anything, a dead letter that is cut
// (ErrDeadLetterCut) and one whose event still fails the contract every
// consumer checks first (Accept; wraps events.ErrInvalid): published, it
// would only be dead-lettered again. A publish this NATS user may not make
// fails at once with a *PublishRefusedError. The entry is kept: purging it
// is the operator's decision.
func (q *DeadLetters) Replay(ctx context.Context, seq uint64) (Replayed, error) {
	c, err := q.Get(ctx, seq)
	if err != nil {
		return Replayed{}, fmt.Errorf("replay: %w", err)
	}
	if c.Cut {
		where := ""
		if c.EventSeq > 0 {
			where = fmt.Sprintf("; the original is in %s at sequence %d while that stream keeps it", EventsStream, c.EventSeq)
		}
		return Replayed{}, fmt.Errorf("replay dead letter %d: %w: it keeps the first %d of the event's %d bytes (the event was larger than a dead letter may hold, %d bytes), so it cannot be replayed%s",
			seq, ErrDeadLetterCut, len(c.Data), c.Size, DeadLetterMaxData, where)
	}
	e, err := Accept(c.Subject, c.Data)
	if err != nil {
		return Replayed{}, fmt.Errorf("replay dead letter %d: still refused by every consumer: %w", seq, err)
	}
	r := Replayed{
		Seq:     seq,
		EventID: e.ID(),
		Subject: c.Subject,
		// The id is the sender's: one header line, bounded.
		MsgID: headerValue(e.ID(), maxAttr) + ":dlq:" + strconv.FormatUint(seq, 10),
	}
	msg := &nats.Msg{Subject: c.Subject, Data: c.Data, Header: nats.Header{}}
	msg.Header.Set(HeaderMsgID, r.MsgID)
	msg.Header.Set(HeaderContentType, ContentTypeCloudEvents)
	msg.Header.Set(HeaderReplayOf, strconv.FormatUint(seq, 10))

	// The server refuses a publish this user may not make by an
	// asynchronous error, never by an answer: without untilRefused the
	// request would wait out its timeout and say only that.
	pctx, cancel := q.b.untilRefused(ctx)
	defer cancel()
	ack, err := q.b.JS.PublishMsg(pctx, msg)
	if err != nil {
		if d := q.b.denied.Load(); d != nil && strings.Contains((*d).Error(), `"`+c.Subject+`"`) {
			return Replayed{}, &PublishRefusedError{Seq: seq, Subject: c.Subject, Err: *d}
		}
		return Replayed{}, fmt.Errorf("replay dead letter %d: publish %s: %w", seq, c.Subject, err)
	}
	r.EventSeq, r.Duplicate = ack.Sequence, ack.Duplicate
	return r, nil
}

// Purge deletes the dead letters at seqs and returns what it deleted. It
// first looks every one up: when any is unknown it deletes none and says
// which (ErrNoDeadLetter), so a mistyped sequence never leaves a half-done
// purge. A sequence given twice is deleted once.
func (q *DeadLetters) Purge(ctx context.Context, seqs ...uint64) ([]DeadLetter, error) {
	seqs = slices.Clone(seqs)
	slices.Sort(seqs)
	seqs = slices.Compact(seqs)
	var found []DeadLetter
	var unknown []string
	for _, seq := range seqs {
		c, err := q.Get(ctx, seq)
		if errors.Is(err, ErrNoDeadLetter) {
			unknown = append(unknown, strconv.FormatUint(seq, 10))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("purge: %w", err)
		}
		found = append(found, c.DeadLetter)
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("purge: %w: %s (nothing purged)", ErrNoDeadLetter, strings.Join(unknown, ", "))
	}
	s, err := q.b.JS.Stream(ctx, DeadLetterStream)
	if err != nil {
		return nil, fmt.Errorf("purge: %w", err)
	}
	var done []DeadLetter
	for _, dl := range found {
		// A refused delete is never answered either (see Replay).
		dctx, cancel := q.b.untilRefused(ctx)
		err := s.DeleteMsg(dctx, dl.Seq)
		cancel()
		if err != nil {
			return done, fmt.Errorf("purge dead letter %d: %w", dl.Seq, q.b.refused(err))
		}
		done = append(done, dl)
	}
	return done, nil
}

// parseDeadLetter reads an entry's headers and, leniently, the event
// attributes of its data: the data was refused, so it need not be a valid
// CloudEvent, and a cut copy is not JSON at all.
func parseDeadLetter(seq uint64, at time.Time, subject string, h nats.Header, data []byte) DeadLetter {
	dl := DeadLetter{
		Seq:      seq,
		Time:     at.UTC(),
		Consumer: h.Get(HeaderDeadFrom),
		Subject:  h.Get(HeaderDeadSubject),
		Reason:   h.Get(HeaderDeadReason),
		SHA256:   h.Get(HeaderDeadSHA256),
		Cut:      h.Get(HeaderDeadCut) == "true",
	}
	if dl.Consumer == "" {
		dl.Consumer = strings.TrimPrefix(subject, events.DeadLetterRoot+".")
	}
	dl.Deliveries, _ = strconv.Atoi(h.Get(HeaderDeadTries))
	dl.EventSeq, _ = strconv.ParseUint(h.Get(HeaderDeadSequence), 10, 64)
	dl.ReplayOf, _ = strconv.ParseUint(h.Get(HeaderReplayOf), 10, 64)
	if n, err := strconv.Atoi(h.Get(HeaderDeadSize)); err == nil {
		dl.Size = n
	} else {
		dl.Size = len(data)
	}
	if !dl.Cut {
		var attrs struct {
			ID      any `json:"id"`
			Type    any `json:"type"`
			Subject any `json:"subject"`
			RunID   any `json:"runid"`
			Step    any `json:"step"`
		}
		if json.Unmarshal(data, &attrs) == nil {
			dl.EventID, dl.Type, dl.Plan = attr(attrs.ID), attr(attrs.Type), attr(attrs.Subject)
			dl.RunID, dl.Step = attr(attrs.RunID), attr(attrs.Step)
		}
	}
	// bs.events.<noun>.<verb>.<plan> names type and plan where the data
	// does not.
	if rest, ok := strings.CutPrefix(dl.Subject, events.SubjectRoot+"."); ok {
		if tok := strings.Split(rest, "."); len(tok) == 3 {
			if dl.Type == "" {
				dl.Type = events.TypePrefix + tok[0] + "." + tok[1]
			}
			if dl.Plan == "" {
				dl.Plan = tok[2]
			}
		}
	}
	return dl
}

// attr is a CloudEvent attribute as text: a string as it is (bounded), any
// other JSON value as nothing.
func attr(v any) string {
	s, _ := v.(string)
	return truncate(s, maxAttr)
}
