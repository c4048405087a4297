package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
	// OnDead, when set, is told about an event that was dead-lettered after
	// it was decoded (a permanent error or exhausted deliveries), once its
	// copy is stored, so the owner of the work can settle it (fail the run).
	// Its events are published; its error is logged.
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
	return s
}

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
	err := retryConflict(ctx, func() error {
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
	iter, err := c.Messages(jetstream.PullMaxMessages(spec.Concurrency))
	if err != nil {
		return fmt.Errorf("consumer %s: messages: %w", spec.Name, err)
	}

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
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
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
	log := b.Log.With("consumer", spec.Name, "subject", msg.Subject(), "delivery", deliveries)

	if deliveries > spec.MaxDeliver {
		// Only reached when the previous delivery died without settling.
		b.deadLetter(ctx, spec, msg, deliveries, "delivered "+strconv.Itoa(deliveries-1)+" times without success", log)
		return
	}

	e, err := Decode(msg.Data())
	if err == nil {
		_, err = events.Decode(e)
	}
	if err != nil {
		b.deadLetter(ctx, spec, msg, deliveries, err.Error(), log)
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
		b.deadLetter(ctx, spec, msg, deliveries, herr.Error(), log)
	case ctx.Err() != nil:
		// Shutting down: hand the event to another replica now.
		_ = msg.Nak()
		log.Info("handler interrupted by shutdown; event released for redelivery", "err", herr)
	case deliveries >= spec.MaxDeliver:
		b.deadLetter(ctx, spec, msg, deliveries, "gave up after "+strconv.Itoa(deliveries)+" deliveries: "+herr.Error(), log)
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

// deadLetter copies msg to bs.dlq.<consumer> with the reason and terminates it.
// If the copy cannot be stored the message is nak'ed instead, so it is never
// lost.
func (b *Bus) deadLetter(ctx context.Context, spec ConsumerSpec, msg jetstream.Msg, deliveries int, reason string, log *slog.Logger) {
	reason = secret.Redact(reason) // a handler's error may quote a secret; dead letters are kept
	dl := &nats.Msg{
		Subject: events.DeadLetterRoot + "." + spec.Name,
		Data:    msg.Data(),
		Header:  nats.Header{},
	}
	for k, v := range msg.Headers() {
		dl.Header[k] = v
	}
	id := msg.Subject()
	if md, err := msg.Metadata(); err == nil {
		id = spec.Name + "." + strconv.FormatUint(md.Sequence.Stream, 10)
	}
	dl.Header.Set(HeaderMsgID, "dlq."+id)
	dl.Header.Set(HeaderDeadReason, truncate(reason, 2048))
	dl.Header.Set(HeaderDeadFrom, spec.Name)
	dl.Header.Set(HeaderDeadSubject, msg.Subject())
	dl.Header.Set(HeaderDeadTries, strconv.Itoa(deliveries))
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := b.JS.PublishMsg(pctx, dl); err != nil {
		log.Error("dead-letter copy failed; event kept for redelivery", "err", err, "reason", reason)
		_ = msg.NakWithDelay(5 * time.Second)
		return
	}
	log.Error("event dead-lettered", "reason", reason)
	if spec.OnDead != nil {
		if e, err := Decode(msg.Data()); err == nil && events.CheckEnvelope(e) == nil {
			out, err := spec.OnDead(pctx, e, reason)
			if err == nil {
				err = b.Publish(pctx, out...)
			}
			if err != nil {
				log.Error("settling a dead-lettered event failed", "err", err)
			}
		}
	}
	_ = msg.TermWithReason(truncate(reason, 256))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
