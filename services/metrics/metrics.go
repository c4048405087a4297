// Package metrics is the metrics stage: it turns events into InfluxDB points
// and Prometheus figures, and runs the watchdog that reports a plan whose
// expected success did not arrive (backup.missed), or whose scheduled
// drill did not succeed in time (drill.missed), and counts the inverse
// ops runs still owe. (Runs past their deadlines are failed by the control
// service, which owns run state.)
//
// It must never slow the pipeline: it consumes the events stream through a
// durable consumer of its own, so a slow or absent InfluxDB only delays its
// own acks. An event is acked only once InfluxDB acknowledged its points;
// while InfluxDB is down the events stay unacked in JetStream (nak with
// backoff, never dead-lettered for that), so a restart loses nothing and
// memory stays bounded by the consumer's in-flight window.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/runs"
	sched "github.com/backstream/backstream/pkg/schedule"
	"github.com/backstream/backstream/services/stage"
)

// Consumer tuning of the metrics consumer. Handlers mostly wait for their
// batch, so many run at once; deliveries are practically unbounded because
// an InfluxDB outage of any length must not dead-letter events.
const (
	Concurrency = 256
	MaxDeliver  = 1 << 20
)

// DefaultBackoff is the nak delay while InfluxDB is down: short at first, then
// a steady 10 s so points arrive within seconds of InfluxDB's return.
var DefaultBackoff = []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second}

// Service is the metrics stage.
type Service struct {
	*stage.Deps
	// Clock drives the watchdog; tests inject a fake one.
	Clock sched.Clock
	// Tick is how often the watchdog looks (default 30s).
	Tick time.Duration
	// Backoff is the nak delay of a failed write (default DefaultBackoff).
	Backoff []time.Duration

	influx InfluxConfig
	w      *writer
	prom   *prom

	// owedLast is the owed count of each plan as last exported.
	owedMu   sync.Mutex
	owedLast map[string]int
}

var _ stage.Service = (*Service)(nil)

// New builds the metrics stage without an InfluxDB writer; SetInflux adds one.
func New(d *stage.Deps) *Service {
	return &Service{Deps: d, Clock: sched.SystemClock{}, Tick: 30 * time.Second, Backoff: DefaultBackoff, prom: newProm(), owedLast: map[string]int{}}
}

// SetInflux configures the InfluxDB writer; a config without URL leaves the
// service writing none (Prometheus figures and the watchdog still run). Call
// it before Consumers and Run.
func (s *Service) SetInflux(c InfluxConfig) {
	s.influx = c
	if c.URL != "" {
		s.w = newWriter(c)
	}
}

// Name is the stage's name.
func (s *Service) Name() string { return "metrics" }

// Consumers is the one durable consumer "metrics".
func (s *Service) Consumers() []bus.ConsumerSpec {
	spec := s.Spec("metrics", s.handle, Types...)
	spec.Concurrency = Concurrency
	spec.MaxDeliver = MaxDeliver
	spec.Backoff = s.Backoff
	// A point that cannot be written is the metrics stage's problem, never
	// the run's: its dead letters do not fail runs.
	spec.OnDead = nil
	return []bus.ConsumerSpec{spec}
}

// Handler serves the Prometheus figures.
func (s *Service) Handler() http.Handler {
	return promhttp.HandlerFor(s.prom.reg, promhttp.HandlerOpts{Registry: s.prom.reg})
}

// Run runs the InfluxDB batcher and the watchdog until ctx is cancelled.
func (s *Service) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	if s.w != nil {
		g.Go(func() error { return s.w.Run(gctx) })
	}
	g.Go(func() error {
		t := time.NewTicker(s.Tick)
		defer t.Stop()
		for {
			if err := s.Watch(gctx); err != nil && gctx.Err() == nil {
				s.Log.Warn("watchdog pass failed", "err", err)
			}
			select {
			case <-gctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
	return g.Wait()
}

// handle writes one event's points and acks it only once they are written.
// An event about a plan that does not exist is refused (dead-lettered, and
// counted without its plan name): figures and points are made only for
// plans in the plan store, so a publisher cannot create series at will.
func (s *Service) handle(ctx context.Context, e events.Event) ([]events.Event, error) {
	if err := s.planExists(ctx, e.Subject()); err != nil {
		return nil, err
	}
	var r *runs.Run
	if needsRecord(e.Type()) {
		var err error
		r, err = s.Runs.Get(ctx, events.RunID(e))
		if errors.Is(err, runs.ErrNotFound) {
			r = nil
		} else if err != nil {
			return nil, err
		}
	}
	pts, err := Points(e, r)
	if err != nil {
		return nil, bus.Permanent(err)
	}
	// The watchdog judges drill slots from this record: it is written
	// before the points, so it never waits for InfluxDB.
	if e.Type() == events.DrillSucceeded {
		if err := s.recordDrill(ctx, e); err != nil {
			return nil, err
		}
	}
	s.prom.observe(e, pts)
	if s.w == nil || len(pts) == 0 {
		return nil, nil
	}
	if err := s.w.Write(ctx, pts); err != nil {
		s.prom.writeFailures.Inc()
		if errors.Is(err, ErrRejected) {
			return nil, bus.Permanent(err)
		}
		return nil, err
	}
	s.prom.pointsWritten.Add(float64(len(pts)))
	return nil, nil
}

// needsRecord reports whether Points uses the run record of an event of
// type typ: only runs that ended without a success (their events carry no
// duration or trigger); other events are handled without a KV read.
func needsRecord(typ string) bool {
	switch typ {
	case events.BackupFailed, events.BackupCancelled, events.RestoreCancelled:
		return true
	}
	return false
}

// planExists is nil when planName is in the plan store (a stored plan that
// fails validation exists too: its failures belong on its dashboard), a
// permanent error when it is not, and a retryable one when the store
// cannot say.
func (s *Service) planExists(ctx context.Context, planName string) error {
	_, err := s.Plans.Get(ctx, planName)
	switch {
	case err == nil, errors.Is(err, planstore.ErrInvalidPlan):
		return nil
	case errors.Is(err, planstore.ErrNotFound):
		s.prom.refused.WithLabelValues(refusedUnknownPlan).Inc()
		return bus.Permanent(fmt.Errorf("plan %q does not exist: no metrics are made for it", planName))
	default:
		return fmt.Errorf("look up plan %q: %w", planName, err)
	}
}
