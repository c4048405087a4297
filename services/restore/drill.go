package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/secret"
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/storage"
)

// A fire drill (docs/drills.md) restores a plan's backup into a scratch
// target made for the drill, never into the plan's source, runs the plan's
// check on it and removes it again, whatever happened. A drill is not a
// run of the runs bucket: drill.requested's runid is the drill's id, and
// the one result event (drill.succeeded or drill.failed) carries it too,
// with an id derived from it, so a redelivery publishes the same event.

// ScratchPrefix starts the name of every drill's scratch target.
const ScratchPrefix = "bsdrill_"

// ScratchName is the scratch target name of drill id: ScratchPrefix and
// the last 12 characters of the id, lowercased (a ULID's random part),
// so a redelivery of the same drill finds what an earlier delivery left.
func ScratchName(drillID string) string {
	s := strings.ToLower(drillID)
	if len(s) > 12 {
		s = s[len(s)-12:]
	}
	return ScratchPrefix + s
}

// cleanupTimeout bounds the removal of a scratch target, which runs even
// when the drill's own time is up.
const cleanupTimeout = 2 * time.Minute

// checkOutputTail is how much of a check command's stdout a failure keeps
// (its stderr tail is in the *source.Error).
const checkOutputTail = 1024

func (s *Service) drillSpec() bus.ConsumerSpec {
	spec := s.Spec("drill", s.handleDrill, events.DrillRequested)
	// There is no run to fail: a drill given up on is a failed drill.
	spec.OnDead = s.drillDead
	return spec
}

func (s *Service) handleDrill(ctx context.Context, e events.Event) ([]events.Event, error) {
	var req events.DrillRequestedData
	if err := e.DataAs(&req); err != nil {
		return nil, bus.Permanent(fmt.Errorf("drill.requested: %w", err))
	}
	// The current revision: a drill rehearses the restore an operator
	// would run now. A missing plan is permanent (drillDead reports it).
	p, err := s.Plan(ctx, e)
	if err != nil {
		return nil, err
	}
	id := events.RunID(e)
	log := s.Log.With("plan", p.Name(), "drill", id)
	res := s.drill(ctx, p, id, req, log)
	if ctx.Err() != nil && res.failed != nil {
		// This process is shutting down: the drill did not fail, it was
		// stopped; a redelivery runs it again (and drops what it left).
		return nil, fmt.Errorf("drill %s stopped: %w", id, ctx.Err())
	}
	var pl events.Payload = res.failed
	if res.failed == nil {
		pl = res.succeeded
		log.Info("drill succeeded", "backup", res.succeeded.BackupID, "destination", res.succeeded.Destination,
			"target", res.succeeded.Target, "rows", res.succeeded.Rows, "bytes", res.succeeded.Bytes, "elapsed", time.Duration(res.succeeded.DurationMs)*time.Millisecond)
	} else {
		log.Warn("drill failed", "stage", res.failed.Stage, "backup", res.failed.BackupID, "destination", res.failed.Destination,
			"target", res.failed.Target, "error", res.failed.Error)
	}
	out, err := s.Emit(ctx, p.Name(), id, "", pl)
	if err != nil {
		return nil, err
	}
	return []events.Event{out}, nil
}

// drillDead reports a drill.requested given up on (its plan gone or
// invalid, or every delivery failed) as drill.failed in stage prepare.
func (s *Service) drillDead(ctx context.Context, e events.Event, reason string) ([]events.Event, error) {
	if e.Type() != events.DrillRequested {
		return nil, nil
	}
	out, err := s.Emit(ctx, e.Subject(), events.RunID(e), "", &events.DrillFailedData{
		Stage: events.DrillStagePrepare,
		Error: "the restore stage gave up on the drill: " + reason,
	})
	if err != nil {
		return nil, err
	}
	return []events.Event{out}, nil
}

// drillResult is one of its fields.
type drillResult struct {
	succeeded *events.DrillSucceededData
	failed    *events.DrillFailedData
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// drill runs drill id of plan p; it never returns without having tried
// to remove the scratch target it made.
func (s *Service) drill(ctx context.Context, p *plan.Plan, id string, req events.DrillRequestedData, log *slog.Logger) drillResult {
	begin := s.now()
	var backupID, dest, target string
	fail := func(stage string, err error) drillResult {
		return drillResult{failed: &events.DrillFailedData{Stage: stage, Error: err.Error(), BackupID: backupID,
			Destination: dest, Target: target, DurationMs: s.now().Sub(begin).Milliseconds()}}
	}
	spec := p.Spec.Drill
	if spec == nil {
		return fail(events.DrillStagePrepare, fmt.Errorf("plan %s has no spec.drill: add a drill block with a check (docs/drills.md)", p.Name()))
	}
	if err := s.CheckExec(p); err != nil {
		return fail(events.DrillStagePrepare, err)
	}
	timeout := spec.EffectiveTimeout()
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, fmt.Errorf("%w: spec.drill.timeout %s reached", context.DeadlineExceeded, timeout))
	defer cancel()
	// Whatever fails after the deadline failed because of it.
	why := func(err error) error {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) && errors.Is(cause, context.DeadlineExceeded) {
			return fmt.Errorf("%w (%v)", err, cause)
		}
		return err
	}

	src, _, err := s.Plugins.Source(p)
	if err != nil {
		return fail(events.DrillStagePrepare, err)
	}
	typ := p.Spec.Source.Type
	dr, ok := src.(source.Drillable)
	if !ok {
		return fail(events.DrillStagePrepare, fmt.Errorf("the %s source cannot be drilled: it has no scratch target a drill could make and remove (postgres, mariadb, files and redis can): %w", typ, source.ErrUnsupported))
	}
	kind, err := dr.ScratchKind()
	if err != nil {
		return fail(events.DrillStagePrepare, err)
	}
	scratch, _ := src.(source.Scratcher)
	switch kind {
	case source.ScratchDatabase:
		if scratch == nil {
			return fail(events.DrillStagePrepare, fmt.Errorf("the %s source says it restores into a database but cannot drop one: %w", typ, source.ErrUnsupported))
		}
		target = ScratchName(id)
	case source.ScratchDirectory:
		base := s.DrillDir
		if base == "" {
			base = os.TempDir()
		}
		target = filepath.Join(base, ScratchName(id))
	}
	if dr.Owns(target) {
		t := target
		target = "" // not the drill's to remove
		return fail(events.DrillStagePrepare, fmt.Errorf("the scratch target %s would be what the %s source backs up; a drill never restores there (move the drill directory with TMPDIR, or the source elsewhere)", t, typ))
	}
	// The backup, chosen as a restore chooses it.
	var dests []string
	for _, d := range p.Spec.Destinations {
		dests = append(dests, d.Name)
	}
	open := func(ctx context.Context, d string) (storage.Storage, error) { return s.Plugins.Storage(ctx, p, d) }
	held := Gather(ctx, open, dests, p.Name())
	copies, err := Candidates(held, Choice{ID: req.BackupID})
	if err != nil {
		return fail(events.DrillStagePrepare, why(fmt.Errorf("choose backup: %w%s", err, Unlisted(held))))
	}
	backupID, dest = copies[0].Manifest.BackupID, copies[0].Destination

	// From here on the target is the drill's: whatever happens, remove it.
	remove := func() error {
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer ccancel()
		if kind == source.ScratchDatabase {
			return scratch.DropScratch(cctx, target)
		}
		return os.RemoveAll(target)
	}
	// A delivery that stopped mid-drill (a crash) left its target: start clean.
	if err := remove(); err != nil {
		return fail(events.DrillStagePrepare, fmt.Errorf("remove what an earlier delivery left in %s: %w", target, err))
	}
	res := s.drillInto(ctx, p, typ, src, scratch, kind, target, copies, log, why, begin, &backupID, &dest)
	if err := remove(); err != nil {
		err = fmt.Errorf("remove scratch target %s: %w; remove it by hand", target, err)
		if res.failed != nil {
			res.failed.Error += "; " + err.Error()
			return res
		}
		log.Error("drill cleanup failed", "target", target, "error", err)
		return fail(events.DrillStageCleanup, err)
	}
	if res.failed == nil {
		res.succeeded.DurationMs = s.now().Sub(begin).Milliseconds()
	}
	return res
}

// drillInto restores copies into target (falling back as a restore does)
// and runs the check; the caller removes target.
func (s *Service) drillInto(ctx context.Context, p *plan.Plan, typ string, src source.Source, scratch source.Scratcher, kind source.ScratchKind,
	target string, copies []Copy, log *slog.Logger, why func(error) error, begin time.Time, backupID, dest *string) drillResult {
	fail := func(stage string, err error) drillResult {
		return drillResult{failed: &events.DrillFailedData{Stage: stage, Error: why(err).Error(), BackupID: *backupID,
			Destination: *dest, Target: target, DurationMs: s.now().Sub(begin).Milliseconds()}}
	}
	if kind == source.ScratchDirectory {
		// Private: a backup's files may be readable by no one else.
		if err := os.Mkdir(target, 0o700); err != nil {
			return fail(events.DrillStagePrepare, fmt.Errorf("make scratch directory: %w", err))
		}
	}
	restoreBegin := s.now()
	into := IntoSource(typ, src, source.RestoreOptions{Target: target, Create: true, Clean: true}, nil)
	used, stats, failed, err := Fallback(ctx, func(ctx context.Context, d string) (storage.Storage, error) { return s.Plugins.Storage(ctx, p, d) },
		copies, s.Keys, func(ctx context.Context, attempt int, c Copy, r io.Reader) error {
			// A failure names the copy being read.
			*backupID, *dest = c.Manifest.BackupID, c.Destination
			return into(ctx, attempt, c, r)
		})
	for _, a := range failed {
		log.Warn("drill: a copy failed", "backup", a.Copy.Manifest.BackupID, "destination", a.Copy.Destination, "error", a.Err)
	}
	if errors.Is(err, source.ErrUnsupported) {
		return fail(events.DrillStagePrepare, fmt.Errorf("%w; a drill restores into one scratch database, so the plan's source must back up exactly one (spec.source.%s.databases with one name)", err, typ))
	}
	if err != nil {
		return fail(events.DrillStageRestore, err)
	}
	restoreMs := s.now().Sub(restoreBegin).Milliseconds()
	*backupID, *dest = used.Manifest.BackupID, used.Destination

	check := p.Spec.Drill.Check
	timeout := check.Timeout.Std()
	if timeout <= 0 {
		timeout = plan.DefaultHookTimeout.Std()
	}
	cctx, ccancel := context.WithTimeout(ctx, timeout)
	defer ccancel()
	checkBegin := s.now()
	var rows int64
	if check.SQL != "" {
		if scratch == nil {
			return fail(events.DrillStageCheck, fmt.Errorf("spec.drill.check.sql: the %s source has no database to query", typ))
		}
		rows, err = scratch.QueryRows(cctx, target, check.SQL)
		if err == nil && rows == 0 {
			err = errors.New("spec.drill.check.sql returned no rows")
		}
	} else {
		err = runCheck(cctx, check.Command, target)
	}
	if err != nil && cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		err = fmt.Errorf("%w: the check timed out after %s (spec.drill.check.timeout)", err, timeout)
	}
	if err != nil {
		return fail(events.DrillStageCheck, err)
	}
	return drillResult{succeeded: &events.DrillSucceededData{
		BackupID: used.Manifest.BackupID, Destination: used.Destination, Target: target,
		Bytes: stats.Bytes, Rows: rows, RestoreMs: restoreMs, CheckMs: s.now().Sub(checkBegin).Milliseconds(),
	}}
}

// runCheck runs a check command, no shell, in its own process group (a
// timeout kills its children too), with BACKSTREAM_DRILL_TARGET naming the
// scratch target. Its output is redacted before it is kept.
func runCheck(ctx context.Context, argv []string, target string) error {
	// Redacted before the tail cuts it, so no part of a secret the
	// command prints is kept.
	out := &tailWriter{max: checkOutputTail}
	rw := secret.NewWriter(out)
	err := source.Run(ctx, source.Cmd{Op: "check " + argv[0], Argv: argv, Env: []string{"BACKSTREAM_DRILL_TARGET=" + target}, Stdout: rw})
	_ = rw.Close() // a tailWriter's Write never fails
	if err != nil {
		if t := strings.TrimSpace(out.String()); t != "" {
			return fmt.Errorf("%w: stdout: %s", err, t)
		}
	}
	return err
}

// tailWriter keeps the last max bytes written to it.
type tailWriter struct {
	max int
	buf []byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = t.buf[over:]
	}
	return len(p), nil
}

func (t *tailWriter) String() string { return string(t.buf) }
