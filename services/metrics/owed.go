package metrics

import (
	"context"
	"fmt"
	"time"

	"github.com/backstream/backstream/pkg/plan"
)

// watchOwed counts, per plan, the inverse ops its runs still owe (the
// runs store's owing index) and exports the count: the gauge
// backstream_compensation_owed{plan} and the InfluxDB point
// compensation_owed,plan=… owed=N. Only plans that exist get a series. A
// point is written on every pass while a plan owes something, and once
// when it drops to 0 (and for every plan on this process's first pass),
// so the last point of a plan is its state: the alert rule reads it, also
// while this watchdog is down.
func (s *Service) watchOwed(ctx context.Context, plans []*plan.Plan, now time.Time) error {
	owing, err := s.Runs.Owing(ctx)
	if err != nil {
		return fmt.Errorf("watchdog: owed inverse ops: %w", err)
	}
	counts := map[string]int{}
	for _, r := range owing {
		counts[r.Plan] += len(r.Owed())
	}
	s.owedMu.Lock()
	defer s.owedMu.Unlock()
	exists := map[string]bool{}
	var pts []Point
	for _, p := range plans {
		name := p.Name()
		exists[name] = true
		n := counts[name]
		s.prom.owed.WithLabelValues(name).Set(float64(n))
		last, seen := s.owedLast[name]
		if n > 0 || !seen || last != n {
			pts = append(pts, Point{MeasureOwed, map[string]string{"plan": name}, map[string]any{"owed": int64(n)}, now})
		}
		if n > 0 {
			s.Log.Warn("inverse ops still owed: an op of the plan may still hold", "plan", name, "owed", n)
		}
	}
	for name := range s.owedLast {
		if !exists[name] {
			s.prom.owed.DeleteLabelValues(name)
			delete(s.owedLast, name)
		}
	}
	if s.w != nil && len(pts) > 0 {
		if err := s.w.Write(ctx, pts); err != nil {
			// Written again on the next pass: only the state matters.
			return fmt.Errorf("watchdog: owed inverse ops point: %w", err)
		}
		s.prom.pointsWritten.Add(float64(len(pts)))
	}
	for _, p := range plans {
		s.owedLast[p.Name()] = counts[p.Name()]
	}
	return nil
}
