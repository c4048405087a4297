package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/backstream/backstream/events"
)

// prom holds the Prometheus figures, the same ones the InfluxDB points
// carry. They are fed from the same events by the same handler; a bounded
// set of seen event ids keeps a redelivered event from counting twice.
type prom struct {
	reg *prometheus.Registry

	runsTotal      *prometheus.CounterVec
	lastSuccess    *prometheus.GaugeVec
	lastDuration   *prometheus.GaugeVec
	lastBytes      *prometheus.GaugeVec
	lastRatio      *prometheus.GaugeVec
	stageDuration  *prometheus.HistogramVec
	stageFailures  *prometheus.CounterVec
	missed         *prometheus.CounterVec
	restoresTotal  *prometheus.CounterVec
	retentionCount *prometheus.GaugeVec
	// owed is set by the watchdog from the runs that owe inverse ops.
	owed *prometheus.GaugeVec
	// Scrubs and drills.
	scrubsTotal     *prometheus.CounterVec
	scrubUnrepaired *prometheus.GaugeVec
	drillsTotal     *prometheus.CounterVec
	drillLast       *prometheus.GaugeVec
	writeFailures   prometheus.Counter
	pointsWritten   prometheus.Counter
	// refused counts events the stage refused, by reason only: a label
	// with the plan name would let anyone who can publish make series.
	refused *prometheus.CounterVec
	// now bounds the last-success gauge: it never moves into the future.
	now func() time.Time

	mu   sync.Mutex
	seen map[string]struct{}
	last map[string]int64 // newest success per plan, unix seconds
	// drillLastAt is the newest drill success per plan, unix seconds.
	drillLastAt map[string]int64
	// scrubAt is the time of the point that set each scrub gauge (plan,
	// destination): an older scrub's event arriving late does not
	// overwrite what a newer scrub found.
	scrubAt map[[2]string]time.Time
	ring    []string
	next    int
}

const seenSize = 8192

// Reasons of backstream_events_refused_total.
const refusedUnknownPlan = "unknown_plan"

func newProm() *prom {
	p := &prom{
		reg: prometheus.NewRegistry(),
		runsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backstream_backup_runs_total",
			Help: "Finished backup runs by plan and status (succeeded, failed, cancelled)."}, []string{"plan", "status"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "backstream_backup_last_success_timestamp_seconds",
			Help: "Unix time of the plan's newest successful backup."}, []string{"plan"}),
		lastDuration: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "backstream_backup_last_duration_seconds",
			Help: "Duration of the plan's newest successful backup run."}, []string{"plan"}),
		lastBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "backstream_backup_last_bytes",
			Help: "Bytes of the plan's newest successful backup: in (plaintext) and out (stored)."}, []string{"plan", "direction"}),
		lastRatio: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "backstream_backup_last_compression_ratio",
			Help: "Bytes in divided by bytes stored of the plan's newest successful backup."}, []string{"plan"}),
		stageDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "backstream_backup_stage_duration_seconds",
			Help: "Durations of succeeded stages.", Buckets: prometheus.ExponentialBuckets(0.1, 4, 9)}, []string{"plan", "stage"}),
		stageFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backstream_backup_stage_failures_total",
			Help: "Runs failed by the stage that failed them (and failed retention passes)."}, []string{"plan", "stage"}),
		missed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backstream_backup_missed_total",
			Help: "Expected successes that did not arrive (backup.missed)."}, []string{"plan"}),
		restoresTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backstream_restore_runs_total",
			Help: "Finished restore runs by plan and status (succeeded, failed, cancelled)."}, []string{"plan", "status"}),
		retentionCount: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "backstream_retention_backups",
			Help: "Backups kept and removed by the newest retention pass of a destination."}, []string{"plan", "destination", "decision"}),
		owed: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "backstream_compensation_owed",
			Help: "Inverse ops that runs of the plan still owe after compensation's retries: the op each undoes (a lock) may still hold."}, []string{"plan"}),
		scrubsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backstream_scrubs_total",
			Help: "Finished scrubs by plan and status (clean, repaired, incomplete, damaged, failed)."}, []string{"plan", "status"}),
		scrubUnrepaired: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "backstream_scrub_unrepaired_copies",
			Help: "Damaged or missing copies the newest scrub of a destination found and could not repair."}, []string{"plan", "destination"}),
		drillsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backstream_drills_total",
			Help: "Drills by plan and status (succeeded, failed, missed: a drill slot passed its grace without a success)."}, []string{"plan", "status"}),
		drillLast: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "backstream_drill_last_success_timestamp_seconds",
			Help: "Unix time of the plan's newest successful drill."}, []string{"plan"}),
		writeFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "backstream_metrics_influx_write_failures_total",
			Help: "Failed InfluxDB writes (each is retried by redelivery)."}),
		pointsWritten: prometheus.NewCounter(prometheus.CounterOpts{Name: "backstream_metrics_influx_points_total",
			Help: "Points handed to InfluxDB and acknowledged by it (redeliveries included)."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backstream_events_refused_total",
			Help: "Events the metrics stage refused and dead-lettered, by reason (unknown_plan: no plan of that name exists). No figure or point is made for them."}, []string{"reason"}),
		now:         time.Now,
		seen:        map[string]struct{}{},
		last:        map[string]int64{},
		drillLastAt: map[string]int64{},
		scrubAt:     map[[2]string]time.Time{},
		ring:        make([]string, seenSize),
	}
	// Known reasons start at zero, so a rate() over them works from the start.
	p.refused.WithLabelValues(refusedUnknownPlan)
	p.reg.MustRegister(p.runsTotal, p.lastSuccess, p.lastDuration, p.lastBytes, p.lastRatio, p.stageDuration,
		p.stageFailures, p.missed, p.restoresTotal, p.retentionCount, p.owed,
		p.scrubsTotal, p.scrubUnrepaired, p.drillsTotal, p.drillLast, p.writeFailures, p.pointsWritten, p.refused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return p
}

// first reports whether id is seen for the first time (within the last
// seenSize events).
func (p *prom) first(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.seen[id]; ok {
		return false
	}
	if old := p.ring[p.next]; old != "" {
		delete(p.seen, old)
	}
	p.ring[p.next] = id
	p.next = (p.next + 1) % seenSize
	p.seen[id] = struct{}{}
	return true
}

// observe updates the figures from an event's points.
func (p *prom) observe(e events.Event, pts []Point) {
	if !p.first(e.ID()) {
		return
	}
	for _, pt := range pts {
		plan := pt.Tags["plan"]
		switch pt.Measurement {
		case MeasureRun:
			p.runsTotal.WithLabelValues(plan, pt.Tags["status"]).Inc()
			// Only a success moves the last-success figures: a cancelled
			// run is no more a backup than a failed one.
			if pt.Tags["status"] != StatusSucceeded {
				continue
			}
			p.setLastSuccess(plan, pt.Time.Unix())
			p.lastDuration.WithLabelValues(plan).Set(num(pt.Fields["duration_s"]))
			p.lastBytes.WithLabelValues(plan, "in").Set(num(pt.Fields["bytes_in"]))
			p.lastBytes.WithLabelValues(plan, "out").Set(num(pt.Fields["bytes_out"]))
			p.lastRatio.WithLabelValues(plan).Set(num(pt.Fields["ratio"]))
		case MeasureStage:
			if pt.Tags["status"] == StatusFailed {
				p.stageFailures.WithLabelValues(plan, pt.Tags["stage"]).Inc()
			} else {
				p.stageDuration.WithLabelValues(plan, pt.Tags["stage"]).Observe(num(pt.Fields["duration_s"]))
			}
		case MeasureMissed:
			p.missed.WithLabelValues(plan).Inc()
		case MeasureRestore:
			p.restoresTotal.WithLabelValues(plan, pt.Tags["status"]).Inc()
		case MeasureRetention:
			p.retentionCount.WithLabelValues(plan, pt.Tags["destination"], "kept").Set(num(pt.Fields["kept"]))
			p.retentionCount.WithLabelValues(plan, pt.Tags["destination"], "removed").Set(num(pt.Fields["removed"]))
		case MeasureDrill:
			p.drillsTotal.WithLabelValues(plan, pt.Tags["status"]).Inc()
			if pt.Tags["status"] == StatusSucceeded {
				p.setDrillLast(plan, pt.Time.Unix())
			}
		}
	}
	// A scrub counts once, however many destinations its points cover.
	if len(pts) > 0 && pts[0].Measurement == MeasureScrub {
		p.scrubsTotal.WithLabelValues(pts[0].Tags["plan"], pts[0].Tags["status"]).Inc()
		for _, pt := range pts {
			if dest := pt.Tags["destination"]; dest != "" {
				p.setScrubUnrepaired(pt.Tags["plan"], dest, num(pt.Fields["unrepaired"]), pt.Time)
			}
		}
	}
}

// setScrubUnrepaired sets a destination's unrepaired copies from a scrub
// finished at at, unless a newer scrub of it already set them.
func (p *prom) setScrubUnrepaired(plan, dest string, n float64, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := [2]string{plan, dest}
	if prev, ok := p.scrubAt[k]; ok && prev.After(at) {
		return
	}
	p.scrubAt[k] = at
	p.scrubUnrepaired.WithLabelValues(plan, dest).Set(n)
}

// setDrillLast moves the plan's last-drill-success gauge forward, never
// back and never past now, like setLastSuccess.
func (p *prom) setDrillLast(plan string, unix int64) {
	unix = min(unix, p.now().Unix())
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drillLastAt[plan] >= unix {
		return
	}
	p.drillLastAt[plan] = unix
	p.drillLast.WithLabelValues(plan).Set(float64(unix))
}

// setLastSuccess moves the plan's last-success gauge forward, never back,
// and never past now: events arrive out of order and the watchdog reports
// from run records too, and a success "in the future" would silence the
// missing-success alert until it came true.
func (p *prom) setLastSuccess(plan string, unix int64) {
	unix = min(unix, p.now().Unix())
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.last[plan] >= unix {
		return
	}
	p.last[plan] = unix
	p.lastSuccess.WithLabelValues(plan).Set(float64(unix))
}

func num(v any) float64 {
	switch x := v.(type) {
	case float64:
		return x
	case int64:
		return float64(x)
	case int:
		return float64(x)
	}
	return 0
}
