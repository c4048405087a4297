// Package bus is backstream's JetStream wiring: the embedded server, the
// streams, KV buckets and durable consumers every stage shares, publishing with
// exactly-once ids, and the one place where a handler's result becomes an ack,
// a nak with backoff, or a termination copied to the dead-letter subject.
//
// Handlers never ack, nak or terminate themselves, and nothing here ever drops
// an event silently.
package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/secret"
)

// Stream, bucket and header names shared by every service.
const (
	EventsStream     = "BACKSTREAM_EVENTS"
	DeadLetterStream = "BACKSTREAM_DLQ"
	DataStream       = "BACKSTREAM_CHUNKS"

	PlansBucket  = "backstream-plans"
	RunsBucket   = "backstream-runs"
	LeasesBucket = "backstream-leases"
	// KeyringsBucket keeps each plan's keyring (pkg/keyring): the key is
	// the plan name, the value its recipient and passphrase-wrapped
	// identity. Not a secret: every object the keyring seals carries it.
	KeyringsBucket = "backstream-keyrings"

	HeaderMsgID       = "Nats-Msg-Id"
	HeaderContentType = "Content-Type"
	HeaderDeadReason  = "Backstream-Dead-Reason"
	HeaderDeadFrom    = "Backstream-Dead-Consumer"
	HeaderDeadSubject = "Backstream-Dead-Subject"
	HeaderDeadTries   = "Backstream-Dead-Deliveries"

	ContentTypeCloudEvents = "application/cloudevents+json"
)

// PlansHistory is how many revisions of each plan the plans bucket keeps
// (a delete counts as one), the most a KV bucket can keep. A run reads the
// plan revision it started with until it ends, so it loses that revision
// only when its plan is changed or deleted this many times while it runs.
const PlansHistory = jetstream.KeyValueMaxHistory

// RunsTTL is how long the runs bucket keeps a record (and an index entry)
// after its last write.
const RunsTTL = 90 * 24 * time.Hour

// Config sizes the streams and buckets. The zero value is completed by defaults.
type Config struct {
	// Replicas of every stream and bucket: 1 on one server, 3 in a cluster.
	// Zero keeps what an existing stream has (1 when creating it), so a CLI
	// or a replica started without the setting never downgrades a cluster.
	Replicas int
	// DuplicateWindow is the events stream's de-duplication window.
	DuplicateWindow time.Duration
	// EventsMaxAge bounds how long events are kept for replay.
	EventsMaxAge time.Duration
	// DataMaxAge removes the chunks of a run that died.
	DataMaxAge time.Duration
	// InProcess, when set, is the embedded server this process runs: the
	// connection to it is an in-memory pipe instead of loopback TCP, which
	// spares every chunk two trips through the kernel each way. The server
	// still listens for the CLI and other processes.
	InProcess *Server
	// Auth authenticates the connection (not needed for InProcess, which
	// uses the admin role of its server).
	Auth Auth
	// DataMaxBytes bounds the chunk stream as a whole. It lives in the
	// servers' memory: each running backup holds at most its window of
	// chunks per reader (8 MiB at the defaults), so the default fits 64
	// backups at once.
	DataMaxBytes int64
	// LocalData turns the in-process data plane on: a chunk stream whose
	// writer and reader both run on this Bus passes its chunks in memory
	// (bounded by the same window, no copy) instead of through JetStream,
	// which still carries every stream with a party in another process
	// (docs/dataplane.md).
	LocalData bool
}

func (c Config) withDefaults() Config {
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = 10 * time.Minute
	}
	if c.EventsMaxAge == 0 {
		c.EventsMaxAge = 30 * 24 * time.Hour
	}
	if c.DataMaxAge == 0 {
		c.DataMaxAge = 24 * time.Hour
	}
	if c.DataMaxBytes == 0 {
		c.DataMaxBytes = DefaultDataMaxBytes
	}
	return c
}

// Bus is a connection to NATS with JetStream and the handles every service uses.
type Bus struct {
	NC     *nats.Conn
	JS     jetstream.JetStream
	Source string // CloudEvent source of events this process emits
	Log    *slog.Logger
	cfg    Config

	Plans  jetstream.KeyValue
	Runs   jetstream.KeyValue
	Leases jetstream.KeyValue
	// Keyrings is the bucket of plan keyrings (KeyringsBucket).
	Keyrings jetstream.KeyValue

	// denied is the newest permissions violation the server reported. The
	// server refuses a request asynchronously, so the request itself only
	// times out; setup looks here to fail at once, saying why.
	denied *atomic.Pointer[error]
	// refusal is signalled (never blocking) on every such report.
	refusal chan struct{}
	// local is the in-process data plane's rendezvous (Config.LocalData).
	local *localHub
}

// Connect dials url and sets up (idempotently) every stream and bucket.
// service names the process in CloudEvent sources: backstream/<service>/<instance>.
func Connect(ctx context.Context, url, service string, cfg Config, log *slog.Logger) (*Bus, error) {
	if log == nil {
		log = slog.Default()
	}
	denied, refusal := &atomic.Pointer[error]{}, make(chan struct{}, 1)
	opts := []nats.Option{
		nats.Name("backstream-" + service),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		// A permission the server refused is a deployment mistake an
		// operator must see, not a request that quietly times out.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				denied.Store(&err)
				select {
				case refusal <- struct{}{}:
				default:
				}
			}
			if sub != nil {
				log.Error("nats", "subject", sub.Subject, "err", err)
				return
			}
			log.Error("nats", "err", err)
		}),
	}
	auth := cfg.Auth
	if cfg.InProcess != nil {
		opts = append(opts, nats.InProcessServer(cfg.InProcess.ns))
		a, err := cfg.InProcess.Auth(RoleAdmin)
		if err != nil {
			return nil, fmt.Errorf("connect nats in process: %w", err)
		}
		auth = a
	}
	authOpts, err := auth.options()
	if err != nil {
		return nil, fmt.Errorf("connect nats %s: %w", url, err)
	}
	opts = append(opts, authOpts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		if errors.Is(err, nats.ErrAuthorization) && auth.IsZero() {
			err = fmt.Errorf("%w (no credentials given: --nats-creds, --nats-nkey or --nats-user, or $%s; a local serve's are found under $%s or ./data)", err, EnvNKey, EnvData)
		}
		return nil, fmt.Errorf("connect nats %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	b := &Bus{NC: nc, JS: js, Source: SourceName(service), Log: log, cfg: cfg.withDefaults(), denied: denied, refusal: refusal}
	if cfg.LocalData {
		b.local = newLocalHub()
	}
	if err := b.setup(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return b, nil
}

// SourceName is the CloudEvent source of a service in this process.
func SourceName(service string) string {
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	return "backstream/" + service + "/" + host + "-" + strconv.Itoa(os.Getpid())
}

// Close drains the connection.
func (b *Bus) Close() error {
	if err := b.NC.Drain(); err != nil {
		b.NC.Close()
		return fmt.Errorf("drain nats: %w", err)
	}
	return nil
}

// setup creates or updates the streams and buckets. Several replicas starting
// at once converge: CreateOrUpdate is idempotent for equal configs, and a
// concurrent create that loses is retried as an update.
func (b *Bus) setup(ctx context.Context) error {
	c := b.cfg
	streams := []jetstream.StreamConfig{
		{
			Name:        EventsStream,
			Description: "backstream events: triggers, stage results, failures",
			Subjects:    []string{events.SubjectWildcard},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      c.EventsMaxAge,
			Duplicates:  c.DuplicateWindow,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			// The server refuses a larger publish: events are small, and a
			// large one would be held by every consumer that pulls it.
			MaxMsgSize: events.MaxEventSize,
		},
		{
			Name:        DeadLetterStream,
			Description: "backstream dead letters: events a consumer terminated, with the reason",
			Subjects:    []string{events.DeadLetterRoot + ".>"},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      c.EventsMaxAge,
			Duplicates:  c.DuplicateWindow,
			Storage:     jetstream.FileStorage,
			Replicas:    c.Replicas,
			// A copy that would be larger is cut (see DeadLetterMsg).
			MaxMsgSize: events.MaxEventSize,
		},
		{
			Name:        DataStream,
			Description: "backstream chunk streams of running backups; removed when consumed",
			Subjects:    []string{DataRoot + ".>"},
			// Work-queue retention keeps a chunk until its one reader acked
			// it, also when the reader's consumer is not yet known to the
			// stream leader (interest retention would drop it then).
			Retention:  jetstream.WorkQueuePolicy,
			MaxAge:     c.DataMaxAge,
			MaxBytes:   c.DataMaxBytes,
			Discard:    jetstream.DiscardNew,
			Duplicates: 2 * time.Minute,
			// Memory, not disk: a chunk lives for the seconds between its
			// writer and its reader, and a run whose writer or reader dies
			// fails anyway (its dump position and data key died with it),
			// so persisting chunks would buy nothing and cost a disk write
			// and read of every byte (measured in docs/bench.md).
			Storage:  jetstream.MemoryStorage,
			Replicas: c.Replicas,
		},
	}
	for _, sc := range streams {
		sc.Replicas = b.replicas(ctx, sc.Name)
		if b.streamCurrent(ctx, sc) {
			// Nothing to change: a role that may not manage streams binds.
			continue
		}
		err := retryConflict(ctx, func(ctx context.Context) error {
			rctx, cancel := b.untilRefused(ctx)
			defer cancel()
			_, err := b.JS.CreateOrUpdateStream(rctx, sc)
			return b.refused(err)
		})
		var apiErr *jetstream.APIError
		if err != nil && sc.Name == DataStream && errors.As(err, &apiErr) {
			// The chunk stream holds nothing worth keeping across a change
			// the server cannot apply in place (its storage type), or past
			// its earlier incarnation, which claims the same subjects.
			old := ""
			switch apiErr.ErrorCode {
			case errCodeStreamInvalidConfig:
				old = sc.Name
			case errCodeSubjectsOverlap:
				old = legacyDataStream
			}
			if old != "" {
				if derr := b.JS.DeleteStream(ctx, old); derr == nil {
					_, err = b.JS.CreateOrUpdateStream(ctx, sc)
				}
			}
		}
		if err != nil {
			return fmt.Errorf("set up stream %s (missing or outdated; setting it up needs the %s role: `backstream setup`): %w", sc.Name, RoleAdmin, err)
		}
	}
	// Plans, runs and keyrings are read from their stream's leader
	// (leaderReads): one process writes a record and another reads it
	// right after (a run created by one stage, claimed by the next; a plan
	// applied, then triggered), and a follower answering a direct get may
	// not have applied that write yet — on a cluster the record would be
	// "not found" for a moment, a permanent answer to the stage that asked.
	// With one replica there is no follower: the direct get is answered
	// from the only copy, which holds every acknowledged write, and costs
	// less than a request through the JetStream API (10–30 ms per run,
	// measured in docs/bench.md), so it stays on.
	// The leases bucket keeps direct gets: its permissions pin each
	// owner to its key prefix, which only a direct get's subject can carry,
	// and every lease change is a compare-and-set that a stale read only
	// makes retry.
	buckets := []struct {
		dst         *jetstream.KeyValue
		cfg         jetstream.KeyValueConfig
		leaderReads bool
	}{
		{&b.Plans, jetstream.KeyValueConfig{Bucket: PlansBucket, Description: "backstream plans", History: PlansHistory, Storage: jetstream.FileStorage, Replicas: c.Replicas}, true},
		{&b.Runs, jetstream.KeyValueConfig{Bucket: RunsBucket, Description: "backstream runs", History: 1, TTL: RunsTTL, Storage: jetstream.FileStorage, Replicas: c.Replicas}, true},
		{&b.Leases, jetstream.KeyValueConfig{Bucket: LeasesBucket, Description: "backstream leases and schedule state", History: 1, Storage: jetstream.FileStorage, Replicas: c.Replicas}, false},
		// The current keyring of each plan only: every object carries the
		// keyring it was sealed with, so an older one is never needed here.
		{&b.Keyrings, jetstream.KeyValueConfig{Bucket: KeyringsBucket, Description: "backstream plan keyrings (passphrase-wrapped)", History: 1, Storage: jetstream.FileStorage, Replicas: c.Replicas}, true},
	}
	for _, bk := range buckets {
		bk.cfg.Replicas = b.replicas(ctx, "KV_"+bk.cfg.Bucket)
		leaderReads := bk.leaderReads && bk.cfg.Replicas > 1
		if kv, ok := b.bucketCurrent(ctx, bk.cfg, leaderReads); ok {
			*bk.dst = kv
			continue
		}
		var kv jetstream.KeyValue
		if err := retryConflict(ctx, func(ctx context.Context) error {
			var err error
			rctx, cancel := b.untilRefused(ctx)
			defer cancel()
			kv, err = b.JS.CreateOrUpdateKeyValue(rctx, bk.cfg)
			if err == nil && leaderReads {
				err = b.readFromLeader(rctx, kv)
			}
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				// The bucket's stream, made a moment ago by this process
				// or another, is not yet known where readFromLeader asked.
				err = fmt.Errorf("%w: %w", errNotYet, err)
			}
			return b.refused(err)
		}); err != nil {
			return fmt.Errorf("set up bucket %s (missing or outdated; setting it up needs the %s role: `backstream setup`): %w", bk.cfg.Bucket, RoleAdmin, err)
		}
		*bk.dst = kv
	}
	return nil
}

// untilRefused is ctx, cancelled as soon as the server reports a
// permissions violation after it began (a refused request is never
// answered, it would wait out ctx).
func (b *Bus) untilRefused(ctx context.Context) (context.Context, context.CancelFunc) {
	select {
	case <-b.refusal: // an earlier refusal is not this request's
	default:
	}
	rctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-rctx.Done():
		case <-b.refusal:
			cancel()
		}
	}()
	return rctx, cancel
}

// Guard runs f with a context that ends as soon as the server reports a
// permissions violation, and returns that refusal instead of the wait or
// the cancellation it caused: a refused request is never answered, and a
// person running a command should hear why at once (`backstream keyring
// list` as a role that may not read keyrings).
func (b *Bus) Guard(ctx context.Context, f func(context.Context) error) error {
	rctx, cancel := b.untilRefused(ctx)
	defer cancel()
	return b.refused(f(rctx))
}

// refused turns a request that timed out because the server refused its
// subject into that refusal, which no retry can change.
func (b *Bus) refused(err error) error {
	if err == nil || b.denied == nil || !(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, nats.ErrTimeout)) {
		return err
	}
	if d := b.denied.Load(); d != nil {
		return fmt.Errorf("refused by the server: %w", *d)
	}
	return err
}

// streamCurrent reports whether stream want exists with every setting
// backstream chooses, so that setting it up would change nothing.
func (b *Bus) streamCurrent(ctx context.Context, want jetstream.StreamConfig) bool {
	var s jetstream.Stream
	err := b.retryUnanswered(ctx, func(ctx context.Context) (err error) {
		s, err = b.JS.Stream(ctx, want.Name)
		return err
	})
	if err != nil {
		return false
	}
	have := s.CachedInfo().Config
	return slices.Equal(have.Subjects, want.Subjects) && have.Retention == want.Retention &&
		have.MaxAge == want.MaxAge && have.Duplicates == want.Duplicates && have.Storage == want.Storage &&
		have.Replicas == want.Replicas && have.Discard == want.Discard && have.Description == want.Description &&
		(want.MaxBytes == 0 || have.MaxBytes == want.MaxBytes)
}

// readFromLeader turns direct gets off on kv's stream (nats.go creates
// every bucket with them on), so that kv's Get asks the stream's leader. A
// handle decides at every Get from the stream info it last fetched, so it
// returns only once kv's own info says direct gets are off: another
// process setting the bucket up at the same moment turns them on for a
// while (it makes the bucket the nats.go way too), and a handle that saw
// that would ask, on every read from then on, for direct gets nobody
// answers.
func (b *Bus) readFromLeader(ctx context.Context, kv jetstream.KeyValue) error {
	for attempt := 0; ; attempt++ {
		// Status fetches the stream info the handle keeps.
		st, err := kv.Status(ctx)
		if err != nil {
			return err
		}
		cfg := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config
		if !cfg.AllowDirect {
			return nil
		}
		if attempt == 10 {
			return fmt.Errorf("read bucket %s from its leader: direct gets turned on again %d times (other processes setting it up?)", kv.Bucket(), attempt)
		}
		cfg.AllowDirect = false
		if _, err := b.JS.UpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("read bucket %s from its leader: %w", kv.Bucket(), err)
		}
	}
}

// bucketCurrent returns bucket want when it exists as configured, with
// direct gets off when leaderReads.
func (b *Bus) bucketCurrent(ctx context.Context, want jetstream.KeyValueConfig, leaderReads bool) (jetstream.KeyValue, bool) {
	var kv jetstream.KeyValue
	var st jetstream.KeyValueStatus
	err := b.retryUnanswered(ctx, func(ctx context.Context) (err error) {
		if kv, err = b.JS.KeyValue(ctx, want.Bucket); err != nil {
			return err
		}
		// Status also refreshes the stream info kv reads by
		// (readFromLeader): a handle returned ok reads the way it was
		// checked to.
		st, err = kv.Status(ctx)
		return err
	})
	if err != nil {
		return nil, false
	}
	kst, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return nil, false
	}
	have := kst.StreamInfo().Config
	ok = st.History() == int64(want.History) && st.TTL() == want.TTL && have.Replicas == want.Replicas &&
		have.Description == want.Description && have.Storage == want.Storage && have.AllowDirect == !leaderReads
	return kv, ok
}

// errCodeStreamInvalidConfig is the server's JSStreamInvalidConfigF: a
// configuration the stream cannot be updated to in place.
const errCodeStreamInvalidConfig jetstream.ErrorCode = 10052

// legacyDataStream is the chunk stream's earlier name.
const legacyDataStream = "BACKSTREAM_DATA"

// errCodeSubjectsOverlap is the server's JSStreamSubjectOverlapErr.
const errCodeSubjectsOverlap jetstream.ErrorCode = 10065

// The server's JSInsufficientResourcesErr and JSMemoryResourcesExceededErr,
// and JSClusterNoPeersErr.
const (
	errCodeNoPeers               jetstream.ErrorCode = 10005
	errCodeInsufficientResources jetstream.ErrorCode = 10023
	errCodeMemoryExceeded        jetstream.ErrorCode = 10028
)

// replicas is the replica count for stream: the configured one, else the
// existing stream's, else 1. A stream info nobody answered (a stream
// another process is creating) is asked again while ctx lasts: taking 1
// for it would make setup scale an existing stream down.
func (b *Bus) replicas(ctx context.Context, stream string) int {
	if b.cfg.Replicas > 0 {
		return b.cfg.Replicas
	}
	var s jetstream.Stream
	err := b.retryUnanswered(ctx, func(ctx context.Context) (err error) {
		s, err = b.JS.Stream(ctx, stream)
		return err
	})
	if err != nil {
		return 1
	}
	return max(s.CachedInfo().Config.Replicas, 1)
}

// Every JetStream API request of setting up gets a deadline of its own,
// shorter than the caller's, and is asked again when it passes: nats-server
// (v2.15.2 and v2.15.3) may answer none of the equal creates of a
// replicated stream that reach it before the first is applied, though the
// stream is made, nor an info request about that stream for a while.
// Waiting out the caller's deadline, two replicas started together on a
// fresh three-node cluster both failed after 30 s. The next attempt finds
// the stream and succeeds as an update; a request that was merely slow is
// asked again, which an equal config makes harmless. Deadlines start at
// firstAttempt and double, up to lastAttempt, so a lost answer costs a
// second and a slow server still gets its time.
const (
	firstAttempt = time.Second
	lastAttempt  = 8 * time.Second
)

// attempt runs attempt number n (from 0) of f with its own deadline.
func attempt(ctx context.Context, n int, f func(context.Context) error) error {
	actx, cancel := context.WithTimeout(ctx, min(firstAttempt<<min(n, 8), lastAttempt))
	defer cancel()
	return f(actx)
}

// unanswered reports whether err is attempt's own deadline passing while
// ctx lasts: the request was not answered and may be asked again.
func unanswered(ctx context.Context, err error) bool {
	return ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout))
}

// unansweredAttempts is how often retryUnanswered asks (1+2+4+8 s).
const unansweredAttempts = 4

// retryUnanswered runs f until it returns an answer (nil or another
// error), ctx ends or unansweredAttempts went unanswered, asking again
// while nobody answers. A request the server refused ends at once.
func (b *Bus) retryUnanswered(ctx context.Context, f func(context.Context) error) error {
	var err error
	for n := range unansweredAttempts {
		err = attempt(ctx, n, func(actx context.Context) error {
			rctx, cancel := b.untilRefused(actx)
			defer cancel()
			return f(rctx)
		})
		if !unanswered(ctx, err) {
			return err
		}
	}
	return err
}

// errNotYet marks an error of a stream that is being made: asking again
// a moment later finds it.
var errNotYet = errors.New("not set up yet")

// retryConflict retries f a few times, each attempt with its own deadline
// (attempt): when replicas create the same stream at once, the losers see
// "already in use", or no answer, and succeed as an update.
func retryConflict(ctx context.Context, f func(context.Context) error) error {
	var err error
	for i := 0; i < 10; i++ {
		if err = attempt(ctx, i, f); err == nil {
			return nil
		}
		var apiErr *jetstream.APIError
		// Replicas that create the in-memory chunk stream at once each
		// reserve its memory; the losers see "insufficient resources" until
		// the winner's stream exists and theirs becomes an update.
		// A cluster whose nodes are still finding each other has too few
		// peers for a replicated stream for a moment, too.
		insufficient := errors.As(err, &apiErr) && (apiErr.ErrorCode == errCodeInsufficientResources || apiErr.ErrorCode == errCodeMemoryExceeded || apiErr.ErrorCode == errCodeNoPeers)
		if !insufficient && !errors.Is(err, errNotYet) && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrJetStreamNotEnabled) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(i+1) * 200 * time.Millisecond):
		}
	}
	return err
}

// Encode serialises an event in CloudEvents' structured JSON mode.
func Encode(e events.Event) ([]byte, error) { return json.Marshal(e) }

// Decode parses a structured-mode CloudEvent. It checks JSON only; the
// contract is checked by events.Decode.
func Decode(data []byte) (events.Event, error) {
	var e events.Event
	if err := json.Unmarshal(data, &e); err != nil {
		return events.Event{}, fmt.Errorf("%w: not a CloudEvent: %w", events.ErrInvalid, err)
	}
	return e, nil
}

// Publish publishes events in order on their subjects with Nats-Msg-Id set to
// the event id, waiting for each to be stored. An event that fails the
// contract is refused before anything is sent.
func (b *Bus) Publish(ctx context.Context, evs ...events.Event) error {
	for _, e := range evs {
		if err := events.CheckEnvelope(e); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		data, err := Encode(e)
		if err != nil {
			return fmt.Errorf("publish %s: encode: %w", e.Type(), err)
		}
		data = secret.RedactJSON(data) // events are kept for weeks: no secret value in them
		msg := &nats.Msg{
			Subject: events.Subject(e.Type(), e.Subject()),
			Data:    data,
			Header:  nats.Header{},
		}
		msg.Header.Set(HeaderMsgID, e.ID())
		msg.Header.Set(HeaderContentType, ContentTypeCloudEvents)
		if _, err := b.JS.PublishMsg(ctx, msg); err != nil {
			return fmt.Errorf("publish %s %s: %w", e.Type(), e.ID(), err)
		}
	}
	return nil
}

// Meta returns event metadata for an event this process emits about a run.
func (b *Bus) Meta(plan, runID, step string) events.Meta {
	return events.Meta{Source: b.Source, Plan: plan, RunID: runID, Step: step}
}
