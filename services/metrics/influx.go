package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/influxdata/influxdb-client-go/v2/api"
	ihttp "github.com/influxdata/influxdb-client-go/v2/api/http"
	"github.com/influxdata/influxdb-client-go/v2/api/write"
)

// InfluxConfig says where points go. The zero URL disables the writer.
type InfluxConfig struct {
	// URL is InfluxDB's base URL, e.g. http://127.0.0.1:8086.
	URL string
	// Database is the 1.8 database (the v2 API's bucket); default "backstream".
	Database string
	// Token is "user:password" for a 1.8 server with auth on; empty otherwise.
	Token string
	// BatchSize flushes a batch once it holds this many points (default 500).
	BatchSize int
	// FlushInterval is the longest a point waits for its batch (default 100ms).
	FlushInterval time.Duration
	// Timeout bounds one write request (default 10s).
	Timeout time.Duration
}

func (c InfluxConfig) withDefaults() InfluxConfig {
	if c.Database == "" {
		c.Database = "backstream"
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = 100 * time.Millisecond
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	return c
}

// ErrRejected marks a batch InfluxDB refused as malformed (HTTP 400): a retry
// cannot succeed.
var ErrRejected = errors.New("influxdb rejected the points")

var errStopped = errors.New("influxdb writer stopped")

// writer batches the points of concurrent handlers into one write request.
// Write blocks until the batch holding its points was written, or failed:
// the caller acks its event only after a nil return, so a point is never
// acknowledged before InfluxDB holds it. Buffering is bounded by the number
// of concurrent callers (the consumer's in-flight window); everything beyond
// that stays unacked in JetStream.
type writer struct {
	cfg    InfluxConfig
	client influxdb2.Client
	api    api.WriteAPIBlocking
	reqs   chan writeReq
	// stopped is closed when Run returns, so waiting writers give up at
	// once instead of holding their delivery through the shutdown grace.
	stopped chan struct{}
}

type writeReq struct {
	points []*write.Point
	done   chan error
}

func newWriter(cfg InfluxConfig) *writer {
	cfg = cfg.withDefaults()
	opts := influxdb2.DefaultOptions().SetHTTPRequestTimeout(uint(cfg.Timeout / time.Second)).SetPrecision(time.Nanosecond)
	c := influxdb2.NewClientWithOptions(cfg.URL, cfg.Token, opts)
	return &writer{cfg: cfg, client: c, api: c.WriteAPIBlocking("", cfg.Database), reqs: make(chan writeReq), stopped: make(chan struct{})}
}

// Write hands pts to the batcher and waits for their batch's result.
func (w *writer) Write(ctx context.Context, pts []Point) error {
	if len(pts) == 0 {
		return nil
	}
	req := writeReq{done: make(chan error, 1)}
	for _, p := range pts {
		req.points = append(req.points, influxdb2.NewPoint(p.Measurement, p.Tags, p.Fields, p.Time))
	}
	select {
	case w.reqs <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-w.stopped:
		return errStopped
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run batches requests until ctx is cancelled. A batch is written when it
// holds BatchSize points or its first point waited FlushInterval.
func (w *writer) Run(ctx context.Context) error {
	defer close(w.stopped)
	defer w.client.Close()
	var (
		batch   []writeReq
		n       int
		timer   = time.NewTimer(time.Hour)
		pending bool
	)
	timer.Stop()
	flush := func() {
		if len(batch) == 0 {
			return
		}
		var pts []*write.Point
		for _, r := range batch {
			pts = append(pts, r.points...)
		}
		err := w.write(ctx, pts)
		if errors.Is(err, ErrRejected) && len(batch) > 1 {
			// One event's points spoil the batch: write each event's
			// points alone so only that event is rejected.
			for _, r := range batch {
				r.done <- w.write(ctx, r.points)
			}
		} else {
			for _, r := range batch {
				r.done <- err
			}
		}
		batch, n, pending = nil, 0, false
	}
	for {
		select {
		case <-ctx.Done():
			for _, r := range batch {
				r.done <- ctx.Err()
			}
			return nil
		case r := <-w.reqs:
			batch = append(batch, r)
			n += len(r.points)
			if n >= w.cfg.BatchSize {
				timer.Stop()
				flush()
			} else if !pending {
				pending = true
				timer.Reset(w.cfg.FlushInterval)
			}
		case <-timer.C:
			flush()
		}
	}
}

func (w *writer) write(ctx context.Context, pts []*write.Point) error {
	wctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	err := w.api.WritePoint(wctx, pts...)
	if err == nil {
		return nil
	}
	var he *ihttp.Error
	if errors.As(err, &he) && he.StatusCode == http.StatusBadRequest {
		return fmt.Errorf("influxdb write %d points: %w: %w", len(pts), ErrRejected, err)
	}
	return fmt.Errorf("influxdb write %d points: %w", len(pts), err)
}
