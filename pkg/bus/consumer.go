package bus

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/semaphore"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/secret"
)

// Handler handles one event. Its result is what to publish next; its error
// decides the fate of the input:
//   - nil: the outputs are published (with their deterministic ids), then the
//     input is acked;
//   - a Permanent error (or an input that fails the contract): the input is
//     terminated and copied to the dead-letter subject with the reason;
//   - any other error: the input is nak'ed with backoff and redelivered, up to
//     MaxDeliver times, after which it is dead-lettered too.
//
// A handler may be called more than once for the same event (redelivery,
// replay, several replicas after a crash) and must be idempotent on (run, step).
// The context is cancelled when the service shuts down past its grace period.
type Handler func(ctx context.Context, e events.Event) ([]events.Event, error)

type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// Permanent marks err as not worth retrying.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err, or the contract violation it wraps, must
// not be retried.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p) || errors.Is(err, events.ErrInvalid)
}

// ConsumerSpec describes one durable pull consumer on the events stream,
// shared by every replica of a stage.
type ConsumerSpec struct {
	// Name is the durable name, e.g. "snapshot". Replicas share it.
	Name string
	// Types are the event types consumed (every plan).
	Types []string
	// Handler handles each event.
	Handler Handler
	// Concurrency is how many events one replica handles at once (default 4).
	Concurrency int
	// AckWait is how long a delivery may go without an ack or an in-progress
	// heartbeat before it is redelivered (default 30s; heartbeats every third).
	AckWait time.Duration
	// MaxDeliver bounds deliveries; the last failure dead-letters (default 5).
	MaxDeliver int
	// Backoff is the nak delay after the n-th failed delivery; the last entry
	// repeats (default 1s, 5s, 15s, 30s).
	Backoff []time.Duration
	// Grace is how long in-flight handlers may finish after shutdown begins
	// before their context is cancelled (default 10s).
	Grace time.Duration
	// DeliverNew starts a newly created consumer at new events only, not at
	// the beginning of the stream.
	DeliverNew bool
	// MaxBytesInFlight bounds the bytes of the events one replica handles
	// at once (default DefaultMaxBytesInFlight): a consumer with a large
	// Concurrency (metrics) must not hold Concurrency large events. An
	// event larger than the bound is handled alone.
	MaxBytesInFlight int
	// OnDead, when set, is told about an event that was dead-lettered after
	// its handler saw it (a permanent error or exhausted deliveries), once
	// its copy is stored, so the owner of the work can settle it (fail the
	// run). Its events are published; its error is logged. An event refused
	// at the edge never reaches it: its runid does not name a run anyone
	// vouched for, and a forged message must not be able to fail a run.
	OnDead func(ctx context.Context, e events.Event, reason string) ([]events.Event, error)
}

func (s ConsumerSpec) withDefaults() ConsumerSpec {
	if s.Concurrency <= 0 {
		s.Concurrency = 4
	}
	if s.AckWait <= 0 {
		s.AckWait = 30 * time.Second
	}
	if s.MaxDeliver <= 0 {
		s.MaxDeliver = 5
	}
	if len(s.Backoff) == 0 {
		s.Backoff = []time.Duration{time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second}
	}
	if s.Grace <= 0 {
		s.Grace = 10 * time.Second
	}
	if s.MaxBytesInFlight <= 0 {
		s.MaxBytesInFlight = DefaultMaxBytesInFlight
	}
	return s
}

// DefaultMaxBytesInFlight is ConsumerSpec.MaxBytesInFlight's default: a few
// events of the largest size, thousands of the usual one.
const DefaultMaxBytesInFlight = 4 * events.MaxEventSize

// pullSlack is what a pull request's byte limit allows beyond a message's
// payload: its subject, reply subject and the server's own headers.
const pullSlack = 64 << 10

// EnsureConsumer creates or updates the durable consumer of spec.
func (b *Bus) EnsureConsumer(ctx context.Context, spec ConsumerSpec) (jetstream.Consumer, error) {
	spec = spec.withDefaults()
	filters := make([]string, 0, len(spec.Types))
	for _, t := range spec.Types {
		filters = append(filters, events.SubjectFilter(t))
	}
	cfg := jetstream.ConsumerConfig{
		Durable:        spec.Name,
		Description:    "backstream " + spec.Name,
		FilterSubjects: filters,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        spec.AckWait,
		// The bus counts deliveries itself and dead-letters the last one, so
		// the server must deliver once more than that to let it.
		MaxDeliver:    spec.MaxDeliver + 1,
		MaxAckPending: 1000,
	}
	if spec.DeliverNew {
		cfg.DeliverPolicy = jetstream.DeliverNewPolicy
	}
	var c jetstream.Consumer
	err := retryConflict(ctx, func(ctx context.Context) error {
		var err error
		c, err = b.JS.CreateOrUpdateConsumer(ctx, EventsStream, cfg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", spec.Name, err)
	}
	return c, nil
}

// Run consumes spec's events until ctx is cancelled, then stops pulling, lets
// in-flight handlers finish for spec.Grace, cancels them, and returns once
// every handler goroutine has returned. Unfinished events stay unacked and
// are redelivered.
func (b *Bus) Run(ctx context.Context, spec ConsumerSpec) error {
	spec = spec.withDefaults()
	c, err := b.EnsureConsumer(ctx, spec)
	if err != nil {
		return err
	}
	// A pull asks for at most Concurrency messages and at most one
	// max_payload of bytes, so what waits in the client is bounded in bytes
	// too. The limit is the server's max_payload, not MaxEventSize: a
	// message stored before the events stream had its limit must not stall
	// the consumer (the server never hands out a message larger than a
	// pull's limit).
	pullBytes := int(b.NC.MaxPayload()) + pullSlack
	iter, err := c.Messages(jetstream.PullMaxMessagesWithBytesLimit(spec.Concurrency, pullBytes))
	if err != nil {
		return fmt.Errorf("consumer %s: messages: %w", spec.Name, err)
	}
	budget := semaphore.NewWeighted(int64(spec.MaxBytesInFlight))

	// Handlers run under work, which outlives ctx by the grace period.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var wg sync.WaitGroup
	sem := make(chan struct{}, spec.Concurrency)

	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-stopped:
		}
		iter.Stop()
	}()

	var loopErr error
	for {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		msg, err := iter.Next()
		if err != nil {
			<-sem
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				break
			}
			if transient(err) {
				// The iterator recovers by itself (a missed heartbeat while a
				// cluster elects leaders, a reconnect): keep pulling.
				b.Log.Debug("consumer: transient pull error", "consumer", spec.Name, "err", err)
				continue
			}
			loopErr = fmt.Errorf("consumer %s: next: %w", spec.Name, err)
			break
		}
		size := int64(min(len(msg.Data()), spec.MaxBytesInFlight))
		if err := budget.Acquire(ctx, size); err != nil {
			// Shutting down: release the event for redelivery now.
			<-sem
			_ = msg.Nak()
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer budget.Release(size)
			b.handle(work, spec, msg)
		}()
	}
	close(stopped)

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(spec.Grace):
		cancelWork()
		<-done
	}
	return loopErr
}

// handle runs one delivery through the handler and settles it.
func (b *Bus) handle(ctx context.Context, spec ConsumerSpec, msg jetstream.Msg) {
	md, err := msg.Metadata()
	deliveries := 1
	if err == nil {
		deliveries = int(md.NumDelivered)
	}
	log := b.Log.With("consumer", spec.Name, "subject", truncate(msg.Subject(), 256), "delivery", deliveries)

	e, err := Accept(msg.Subject(), msg.Data())
	if err != nil {
		// Refused at the edge: no retry can make it valid.
		b.deadLetter(ctx, spec, msg, nil, deliveries, err.Error(), log)
		return
	}
	if deliveries > spec.MaxDeliver {
		// Only reached when the previous delivery died without settling.
		b.deadLetter(ctx, spec, msg, &e, deliveries, "delivered "+strconv.Itoa(deliveries-1)+" times without success", log)
		return
	}
	log = log.With("type", e.Type(), "id", e.ID(), "plan", e.Subject(), "runid", events.RunID(e), "step", events.Step(e))

	// In-progress heartbeats keep a long handler's delivery from timing out.
	hbCtx, stopHB := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(spec.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-hbCtx.Done():
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	out, herr := safeCall(ctx, spec.Handler, e)
	if herr == nil {
		herr = b.Publish(ctx, out...)
	}
	stopHB()

	switch {
	case herr == nil:
		if err := msg.DoubleAck(ctx); err != nil {
			log.Warn("ack failed; the event will be redelivered", "err", err)
		}
	case IsPermanent(herr):
		b.deadLetter(ctx, spec, msg, &e, deliveries, herr.Error(), log)
	case ctx.Err() != nil:
		// Shutting down: hand the event to another replica now.
		_ = msg.Nak()
		log.Info("handler interrupted by shutdown; event released for redelivery", "err", herr)
	case deliveries >= spec.MaxDeliver:
		b.deadLetter(ctx, spec, msg, &e, deliveries, "gave up after "+strconv.Itoa(deliveries)+" deliveries: "+herr.Error(), log)
	default:
		delay := spec.Backoff[min(deliveries-1, len(spec.Backoff)-1)]
		log.Warn("handler failed; retrying with backoff", "err", herr, "backoff", delay)
		_ = msg.NakWithDelay(delay)
	}
}

// transient reports pull errors after which a messages iterator keeps working.
func transient(err error) bool {
	return errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrConsumerLeadershipChanged)
}

// safeCall turns a handler panic into a retryable error rather than a crash
// of every service in the process.
func safeCall(ctx context.Context, h Handler, e events.Event) (out []events.Event, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panic: %v", r)
		}
	}()
	return h(ctx, e)
}

// Headers a dead letter carries besides those in bus.go: where the original
// is, and how to recognise it when the copy had to be cut.
const (
	HeaderDeadSequence = "Backstream-Dead-Sequence"
	HeaderDeadSize     = "Backstream-Dead-Size"
	HeaderDeadSHA256   = "Backstream-Dead-Sha256"
	HeaderDeadCut      = "Backstream-Dead-Cut"
)

// Accept is the edge every consumed message passes before a handler sees
// it: a message no larger than events.MaxEventSize, a structured-mode
// CloudEvent that meets the contract (events.Decode: specversion 1.0, a
// known type, a plan name, a ULID runid, a time not in the future, a valid
// payload) and that arrived on the subject of its type and plan. Every
// refusal wraps events.ErrInvalid and names what is wrong.
func Accept(subject string, data []byte) (events.Event, error) {
	if len(data) > events.MaxEventSize {
		// Checked before decoding: a stream created with a larger limit
		// must not make every consumer parse megabytes of JSON.
		return events.Event{}, fmt.Errorf("%w: message of %d bytes: larger than an event may be (%d)", events.ErrInvalid, len(data), events.MaxEventSize)
	}
	e, err := Decode(data)
	if err != nil {
		return events.Event{}, err
	}
	// The envelope and the subject first: a message on the wrong subject is
	// refused for that, whatever its payload.
	if err := events.CheckEnvelope(e); err != nil {
		return events.Event{}, err
	}
	if err := events.CheckSubject(subject, e); err != nil {
		return events.Event{}, err
	}
	if _, err := events.Decode(e); err != nil {
		return events.Event{}, err
	}
	return e, nil
}

// Limits of a dead letter's reason: in full in the copy's header, shorter
// in the termination and the log line.
const (
	maxReasonHeader = 2048
	maxReasonLog    = 512
)

// deadLetter copies msg to bs.dlq.<consumer> with the reason and terminates
// it. e is the decoded event when the handler saw it (OnDead settles it),
// nil when the message was refused at the edge. If the copy cannot be
// stored the message is nak'ed instead, so it is never lost, and the log
// says so.
func (b *Bus) deadLetter(ctx context.Context, spec ConsumerSpec, msg jetstream.Msg, e *events.Event, deliveries int, reason string, log *slog.Logger) {
	reason = secret.Redact(reason) // a handler's error may quote a secret; dead letters are kept
	var seq uint64
	if md, err := msg.Metadata(); err == nil {
		seq = md.Sequence.Stream
	}
	dl := DeadLetterMsg(spec.Name, msg.Subject(), msg.Headers(), msg.Data(), seq, deliveries, reason, b.deadLetterLimit())
	logReason := truncate(reason, maxReasonLog)
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := b.JS.PublishMsg(pctx, dl); err != nil {
		// The server delivers a message at most spec.MaxDeliver+1 times
		// (see EnsureConsumer); past that it stays in the events stream
		// but this consumer never sees it again.
		if deliveries > spec.MaxDeliver {
			log.Error("dead-letter copy failed on the last delivery; the event stays in the events stream, not redelivered to this consumer",
				"err", err, "reason", logReason, "stream", EventsStream, "sequence", seq, "deliveries", deliveries)
		} else {
			log.Error("dead-letter copy failed; event nak'ed for redelivery in 5s",
				"err", err, "reason", logReason, "sequence", seq, "deliveries", deliveries, "maxDeliveries", spec.MaxDeliver+1)
		}
		if nerr := msg.NakWithDelay(5 * time.Second); nerr != nil {
			log.Error("nak failed; the event is redelivered after the ack wait", "err", nerr, "ackWait", spec.AckWait)
		}
		return
	}
	log.Error("event dead-lettered", "reason", logReason, "sequence", seq, "cut", dl.Header.Get(HeaderDeadCut) != "")
	if e != nil && spec.OnDead != nil {
		out, err := spec.OnDead(pctx, *e, reason)
		if err == nil {
			err = b.Publish(pctx, out...)
		}
		if err != nil {
			log.Error("settling a dead-lettered event failed", "err", err)
		}
	}
	if err := msg.TermWithReason(headerValue(reason, 256)); err != nil {
		// Its copy is stored, so a redelivery only makes a second copy
		// with the same Nats-Msg-Id, which the dead-letter stream drops.
		log.Warn("terminate failed; the event will be redelivered and dead-lettered again", "err", err)
	}
}

// deadLetterLimit is the largest dead letter that can be stored: the
// connection's max_payload, and the dead-letter stream's own limit.
func (b *Bus) deadLetterLimit() int {
	limit := int(b.NC.MaxPayload())
	if limit <= 0 || limit > events.MaxEventSize {
		limit = events.MaxEventSize
	}
	return limit
}

// DeadLetterMaxData is the most of a message's data its dead letter keeps.
// Every event backstream makes is far smaller, so those are kept whole; a
// larger message is kept as a prefix, its original staying in the events
// stream at Backstream-Dead-Sequence. A flood of large messages is then not
// copied again by every consumer that refuses it: that copying, on top of
// the events stream's own write, is what the embedded server's block cache
// and the garbage collector paid for.
const DeadLetterMaxData = 64 << 10

// headerRoom is what a dead letter leaves for encoding differences between
// the header size computed here and the server's count.
const headerRoom = 256

// DeadLetterMsg builds the dead-letter copy of a message consumer refused:
// on bs.dlq.<consumer>, with the reason, the consumer, the original
// subject, stream sequence, size and SHA-256, and the number of
// deliveries. When the data is larger than DeadLetterMaxData, or the
// original with its headers and these would exceed limit bytes, the copy
// keeps only a prefix of the data (and none of the original headers) and
// says so in Backstream-Dead-Cut; the original stays in the events stream
// at its sequence. A dead letter always fits.
func DeadLetterMsg(consumer, subject string, orig nats.Header, data []byte, seq uint64, deliveries int, reason string, limit int) *nats.Msg {
	sum := sha256.Sum256(data)
	id := consumer + "." + strconv.FormatUint(seq, 10)
	if seq == 0 {
		// No metadata: the subject and digest still make the copy once.
		id = consumer + "." + hex.EncodeToString(sum[:8])
	}
	ours := nats.Header{}
	ours.Set(HeaderMsgID, "dlq."+id)
	ours.Set(HeaderDeadReason, headerValue(reason, maxReasonHeader))
	ours.Set(HeaderDeadFrom, consumer)
	ours.Set(HeaderDeadSubject, truncate(subject, 1024))
	ours.Set(HeaderDeadTries, strconv.Itoa(deliveries))
	ours.Set(HeaderDeadSequence, strconv.FormatUint(seq, 10))
	ours.Set(HeaderDeadSize, strconv.Itoa(len(data)))
	ours.Set(HeaderDeadSHA256, hex.EncodeToString(sum[:]))

	dl := &nats.Msg{Subject: events.DeadLetterRoot + "." + consumer, Data: data, Header: nats.Header{}}
	for k, v := range orig {
		if _, set := ours[k]; !set {
			dl.Header[k] = v
		}
	}
	for k, v := range ours {
		dl.Header[k] = v
	}
	if len(data) <= DeadLetterMaxData && headerSize(dl.Header)+len(data)+headerRoom <= limit {
		return dl
	}
	ours.Set(HeaderDeadCut, "true")
	if ct := orig.Get(HeaderContentType); ct != "" && len(ct) < 128 {
		ours.Set(HeaderContentType, ct)
	}
	keep := max(0, min(len(data), DeadLetterMaxData, limit-headerSize(ours)-headerRoom))
	return &nats.Msg{Subject: dl.Subject, Data: data[:keep], Header: ours}
}

// headerSize is the length of h as NATS encodes it: "NATS/1.0\r\n", one
// "Key: value\r\n" per value, and a closing "\r\n".
func headerSize(h nats.Header) int {
	n := len("NATS/1.0\r\n") + 2
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return n
}

// truncate cuts s to at most n bytes (and an ellipsis) at a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// headerValue makes s safe as one NATS header value: at most n bytes, and
// no CR or LF, which would end the header early (an error message may
// quote a child's output).
func headerValue(s string, n int) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, truncate(s, n))
}
