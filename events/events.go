// Package events is backstream's public event contract: the CloudEvent types,
// the NATS subjects they travel on, and one payload struct per type with a
// Validate method. Outside programs import this module, and nothing else, to
// publish triggers.
//
// The package never carries secrets or backup bytes: events hold names, sizes,
// digests and references only.
package events

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/oklog/ulid/v2"
)

// Event is the unit every stage consumes and emits: a CloudEvent 1.0.
type Event = cloudevents.Event

// TypePrefix starts every backstream event type.
const TypePrefix = "io.backstream."

// Extension attribute names carried by every backstream event.
const (
	ExtRunID       = "runid"
	ExtStep        = "step"
	ExtTraceParent = "traceparent"
	// ExtAttempt is the attempt of the run an event belongs to, an Integer
	// carried from attempt 2 on (a replay); absent means the first.
	ExtAttempt = "attempt"
)

// Subject roots. Every event travels on
// SubjectRoot.<noun>.<verb>.<plan>, so a consumer can filter by type and plan.
const (
	SubjectRoot     = "bs.events"
	DeadLetterRoot  = "bs.dlq"
	SubjectWildcard = SubjectRoot + ".>"
)

// ErrInvalid marks every contract violation: a malformed envelope, an unknown
// type, or a payload whose Validate failed. The bus terminates such events and
// copies them to the dead-letter subject.
var ErrInvalid = errors.New("invalid event")

// Payload is the data of one event type.
type Payload interface {
	// EventType is the CloudEvent type this payload belongs to.
	EventType() string
	// Validate reports every missing or malformed field, naming it.
	Validate() error
}

var namePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName reports whether s can name a plan, a destination or a hook: a
// lowercase DNS label, which is also a safe NATS subject token and object key
// segment.
func ValidName(s string) bool { return namePattern.MatchString(s) }

// NewID returns a fresh ULID string, the id of events and runs. Ids made
// by one process sort in the order they were made, also within one
// millisecond (monotonic entropy: the random part of a later id in the same
// millisecond is the earlier one's plus a random increment), so a listing
// newest first by run id shows a burst of triggers in the order they came.
func NewID() string {
	idMu.Lock()
	defer idMu.Unlock()
	ms := ulid.Timestamp(time.Now())
	id, err := ulid.New(ms, idEntropy)
	if err != nil {
		// The random part ran out within the millisecond (about one in
		// 2^48 chances per id): a fresh one, unordered for once.
		id = ulid.MustNew(ms, rand.Reader)
	}
	return id.String()
}

var (
	idMu      sync.Mutex
	idEntropy = ulid.Monotonic(rand.Reader, 0)
)

// Subject is the NATS subject an event of type typ about plan travels on.
func Subject(typ, plan string) string {
	return SubjectRoot + "." + strings.TrimPrefix(typ, TypePrefix) + "." + plan
}

// SubjectFilter is the subject filter matching events of type typ for every plan.
func SubjectFilter(typ string) string { return Subject(typ, "*") }

// Meta is the envelope information of an event besides its payload.
type Meta struct {
	// ID is the CloudEvent id and the Nats-Msg-Id. Empty means a fresh ULID;
	// set it where a duplicate can arise (a scheduled slot, a retried step).
	ID string
	// Source is "backstream/<service>/<instance>" or an outside publisher's URI.
	Source string
	// Plan is the plan name; it becomes the CloudEvent subject.
	Plan string
	// RunID and Step become the runid and step extension attributes.
	RunID string
	Step  string
	// TraceParent is a W3C traceparent, when a trace exists.
	TraceParent string
	// Attempt becomes the attempt extension attribute when above 1.
	Attempt int
	// Time defaults to now.
	Time time.Time
}

// New builds a validated CloudEvent from m and p.
func New(m Meta, p Payload) (Event, error) {
	if err := p.Validate(); err != nil {
		return Event{}, fmt.Errorf("%w: %s: %w", ErrInvalid, p.EventType(), err)
	}
	e := cloudevents.New(cloudevents.CloudEventsVersionV1)
	if m.ID == "" {
		m.ID = NewID()
	}
	if m.Time.IsZero() {
		m.Time = time.Now()
	}
	e.SetID(m.ID)
	e.SetType(p.EventType())
	e.SetSource(m.Source)
	e.SetSubject(m.Plan)
	e.SetTime(m.Time.UTC())
	e.SetExtension(ExtRunID, m.RunID)
	if m.Step != "" {
		e.SetExtension(ExtStep, m.Step)
	}
	if m.TraceParent != "" {
		e.SetExtension(ExtTraceParent, m.TraceParent)
	}
	if m.Attempt > 1 {
		e.SetExtension(ExtAttempt, m.Attempt)
	}
	if err := e.SetData(cloudevents.ApplicationJSON, p); err != nil {
		return Event{}, fmt.Errorf("%w: %s: encode data: %w", ErrInvalid, p.EventType(), err)
	}
	if err := CheckEnvelope(e); err != nil {
		return Event{}, err
	}
	return e, nil
}

// MustNew is New for payloads known to be valid (tests, constants).
func MustNew(m Meta, p Payload) Event {
	e, err := New(m, p)
	if err != nil {
		panic(err)
	}
	return e
}

// RunID returns the runid extension of e, or "".
func RunID(e Event) string { return ext(e, ExtRunID) }

// Step returns the step extension of e, or "".
func Step(e Event) string { return ext(e, ExtStep) }

// TraceParent returns the traceparent extension of e, or "".
func TraceParent(e Event) string { return ext(e, ExtTraceParent) }

// Attempt returns the attempt of its run that e belongs to: its attempt
// extension, 1 when it has none (every event of a run never replayed, and
// every trigger).
func Attempt(e Event) int {
	v, ok := e.Extensions()[ExtAttempt]
	if !ok {
		return 1
	}
	n, err := types.ToInteger(v)
	if err != nil || n < 1 {
		return 1
	}
	return int(n)
}

func ext(e Event, name string) string {
	v, ok := e.Extensions()[name]
	if !ok {
		return ""
	}
	s, _ := v.(string)
	return s
}

// MaxEventSize is the largest message (the CloudEvent's JSON and its NATS
// headers) the events stream stores; the server refuses a larger publish.
// Events carry names, sizes, digests and references, a few KiB at most (the
// largest, retention.completed, about 100 bytes per backup of a
// destination). Every byte an event may have is paid several times over
// while it is in flight (the server's block cache, a copy per consumer that
// reads it), so the bound is what keeps a flood of large messages from
// filling memory.
const MaxEventSize = 256 << 10

// SpecVersion is the one CloudEvents version backstream speaks.
const SpecVersion = "1.0"

// MaxClockSkew is how far in the future an event's time may lie: the clocks
// of publishers and consumers drift apart by seconds, not minutes. An event
// from further ahead is refused, so a forged (or badly clocked) event cannot
// push a timestamp that alerts depend on into the future.
const MaxClockSkew = 5 * time.Minute

var runIDPattern = regexp.MustCompile(`^[0-7][0-9A-HJKMNP-TV-Z]{25}$`)

// ValidRunID reports whether s can be a run id: a ULID in its canonical form,
// 26 characters of upper-case Crockford base32, as NewID makes. A run id is a
// KV key, a NATS subject token and an object key segment, so nothing else is
// accepted: no dots, wildcards, slashes, spaces, or a second spelling of the
// same ULID in lower case.
func ValidRunID(s string) bool { return runIDPattern.MatchString(s) }

// CheckEnvelope validates the CloudEvent attributes backstream relies on.
func CheckEnvelope(e Event) error {
	var problems []string
	if v := e.SpecVersion(); v != SpecVersion {
		problems = append(problems, fmt.Sprintf("specversion %q: must be %q", v, SpecVersion))
	}
	if err := e.Validate(); err != nil {
		problems = append(problems, err.Error())
	}
	switch t := e.Time(); {
	case t.IsZero():
		problems = append(problems, "time: required")
	case t.After(time.Now().Add(MaxClockSkew)):
		problems = append(problems, fmt.Sprintf("time %s: more than %s in the future", t.UTC().Format(time.RFC3339), MaxClockSkew))
	}
	if !strings.HasPrefix(e.Type(), TypePrefix) {
		problems = append(problems, fmt.Sprintf("type %q: must start with %q", truncate(e.Type(), 128), TypePrefix))
	} else if _, ok := registry[e.Type()]; !ok {
		problems = append(problems, fmt.Sprintf("type %q: unknown event type", truncate(e.Type(), 128)))
	}
	if !ValidName(e.Subject()) {
		problems = append(problems, fmt.Sprintf("subject %q: must be a plan name (lowercase DNS label)", truncate(e.Subject(), 64)))
	}
	switch id := RunID(e); {
	case id == "":
		problems = append(problems, "runid: missing extension attribute")
	case !ValidRunID(id):
		problems = append(problems, fmt.Sprintf("runid %q: must be a ULID (26 characters of upper-case Crockford base32)", truncate(id, 64)))
	}
	if v, ok := e.Extensions()[ExtAttempt]; ok {
		if n, err := types.ToInteger(v); err != nil || n < 1 {
			problems = append(problems, fmt.Sprintf("attempt %s: must be an integer of at least 1", truncate(fmt.Sprint(v), 32)))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: event %q: %s", ErrInvalid, truncate(e.ID(), 128), strings.Join(problems, "; "))
	}
	return nil
}

// CheckSubject checks that an event arrived on the NATS subject of its type
// and plan: a message on bs.events.backup.requested.orders must be a
// backup.requested about plan orders, so that a consumer's subject filter
// (and a NATS permission on subjects) means what it says. Call it after
// CheckEnvelope.
func CheckSubject(subject string, e Event) error {
	if want := Subject(e.Type(), e.Subject()); subject != want {
		return fmt.Errorf("%w: event %q: arrived on subject %q, but a %s about plan %q travels on %q",
			ErrInvalid, truncate(e.ID(), 128), truncate(subject, 256), truncate(e.Type(), 128), truncate(e.Subject(), 64), truncate(want, 256))
	}
	return nil
}

// truncate keeps an attribute quoted in an error short: a reason is logged
// and stored in a dead letter's header, and input is not to choose its size.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Decode checks e's envelope, decodes its data into the payload type its
// CloudEvent type names, and validates the payload.
func Decode(e Event) (Payload, error) {
	if err := CheckEnvelope(e); err != nil {
		return nil, err
	}
	p := registry[e.Type()]()
	if err := json.Unmarshal(e.Data(), p); err != nil {
		return nil, fmt.Errorf("%w: event %q (%s): data: %w", ErrInvalid, truncate(e.ID(), 128), e.Type(), err)
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("%w: event %q (%s): %w", ErrInvalid, truncate(e.ID(), 128), e.Type(), err)
	}
	return p, nil
}

// DecodeAs is Decode for callers that know which payload they expect. P may
// be the payload struct or a pointer to it (DecodeAs[*UploadCompletedData]
// or DecodeAs[UploadCompletedData]).
func DecodeAs[P Payload](e Event) (P, error) {
	var zero P
	p, err := Decode(e)
	if err != nil {
		return zero, err
	}
	typed, ok := p.(P)
	if !ok {
		// Decode returns pointers; accept a value type parameter too.
		if v := reflect.ValueOf(p); v.Kind() == reflect.Pointer {
			typed, ok = v.Elem().Interface().(P)
		}
	}
	if !ok {
		return zero, fmt.Errorf("%w: event %q: type %s is not the expected payload %T", ErrInvalid, e.ID(), e.Type(), zero)
	}
	return typed, nil
}

// Types lists every registered event type, sorted.
func Types() []string {
	out := make([]string, 0, len(registry))
	for t := range registry {
		out = append(out, t)
	}
	sortStrings(out)
	return out
}

// NewPayload returns an empty payload for typ, or false for an unknown type.
func NewPayload(typ string) (Payload, bool) {
	f, ok := registry[typ]
	if !ok {
		return nil, false
	}
	return f(), true
}

// problems collects field errors of a payload.
type problems []string

func (p *problems) addf(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return errors.New(strings.Join(p, "; "))
}

func (p *problems) required(field, value string) {
	if value == "" {
		p.addf("%s: required", field)
	}
}

func (p *problems) name(field, value string) {
	if value == "" {
		p.addf("%s: required", field)
	} else if !ValidName(value) {
		p.addf("%s: %q is not a lowercase DNS label", field, value)
	}
}

func (p *problems) nonNegative(field string, v int64) {
	if v < 0 {
		p.addf("%s: must be >= 0, got %d", field, v)
	}
}

var sha256Pattern = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (p *problems) sha256(field, value string) {
	if !sha256Pattern.MatchString(value) {
		p.addf("%s: must be 64 lowercase hex digits (SHA-256)", field)
	}
}

// RunEventID is the deterministic id of the event of type typ that a stage
// emits for a run's step. A redelivered or replayed input makes the same id,
// so JetStream's duplicate window drops the second publish (DESIGN.md, rule 3).
func RunEventID(runID, typ, step string) string {
	id := runID + "." + strings.TrimPrefix(typ, TypePrefix)
	if step != "" {
		id += "." + step
	}
	return id
}

// AttemptEventID is RunEventID for attempt n of a run (a replay is attempt
// 2 and up): "<RunEventID>.a<n>", the first attempt's id unchanged. So the
// duplicate window never swallows a replay's events, while a redelivered
// input of one attempt still makes the same id.
func AttemptEventID(runID, typ, step string, attempt int) string {
	id := RunEventID(runID, typ, step)
	if attempt > 1 {
		id += ".a" + strconv.Itoa(attempt)
	}
	return id
}
