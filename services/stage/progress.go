package stage

import (
	"context"
	"strconv"
	"time"

	"github.com/backstream/backstream/events"
)

// DefaultProgressEvery throttles progress events: at most one a second per
// data step, so they never load the bus.
const DefaultProgressEvery = time.Second

// Progress publishes a throttled progress event of type typ (snapshot,
// upload or restore progressed) every `every` until the returned stop is
// called. read reports the bytes and chunks so far; it is called from the
// progress goroutine and must be safe for that.
func (d *Deps) Progress(ctx context.Context, planName, runID, step, typ, destination string, every time.Duration, read func() (bytes, chunks int64)) (stop func()) {
	if every <= 0 {
		every = DefaultProgressEvery
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	begin := time.Now()
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for i := 1; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			b, c := read()
			m := d.AttemptMeta(EmitAttempt(ctx, runID), planName, runID, step, typ, step+"."+strconv.Itoa(i))
			ev, err := events.New(m, events.ProgressData{Destination: destination, Bytes: b, Chunks: c, ElapsedMs: time.Since(begin).Milliseconds()}.ForType(typ))
			if err == nil {
				_ = d.Bus.Publish(ctx, ev)
			}
		}
	}()
	return func() { cancel(); <-done }
}
