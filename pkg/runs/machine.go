package runs

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// The run's state machine. Every change of a run record is one of these
// transitions, applied by one owner (the control service) with a
// compare-and-set on the record; stages ask for them (Owner) and never
// write the runs bucket themselves. Apply is pure: a transition depends
// only on the record, the request and the owner's clock, so a transition
// retried after a conflict or a lost reply decides the same way again.

// Op names a transition.
type Op string

// Transitions a stage may ask for (Permit says which stage may ask which).
const (
	// OpCreate records a requested run (Request.Seed) unless it exists.
	OpCreate Op = "create"
	// OpClaim starts Step for Owner, with a deadline Within after the start
	// when Within is set. Its outcome is Claimed.
	OpClaim Op = "claim"
	// OpFinish records Step's end (Phase, Bytes, Error) and what it produced
	// (Result). The owner settles the run after it when it can.
	OpFinish Op = "finish"
	// OpRecord records Result without ending a step (a restore's backup id
	// once resolved).
	OpRecord Op = "record"
	// OpInterrupt marks Step Failed as interrupted (Error) if it is still
	// Running: its owner died mid-step.
	OpInterrupt Op = "interrupt"
	// OpFail fails the run with Error, caused by the event Cause; the first
	// failure wins. The outcome's Announce says whether this request (or an
	// earlier one with the same Cause) failed it and so announces it.
	OpFail Op = "fail"
	// OpProc records where Step's op runs (Proc), only while Step is
	// Running for Owner (ErrNotOwner otherwise).
	OpProc Op = "proc"
	// OpInverseClaim marks the compensation entry of inverse op Step
	// Running for Owner, adding it as the debt of Undoes when new. With
	// Within (a lease, the owed-inverse loop) it claims only an entry that
	// is due (Failed, RetryAt passed, or Running with its lease expired);
	// without it (compensation's first pass) it claims whatever the entry
	// says. The outcome's Announce says whether it claimed.
	OpInverseClaim Op = "inverse.claim"
	// OpInverseTried records one try of inverse Step: completed (Error
	// empty), failed with tries left, or failed for the Last time (owed:
	// due again after RetryEvery, automatically until Deadline after its
	// first failure).
	OpInverseTried Op = "inverse.tried"
	// OpDebt records that inverse Step, run forward with onError continue,
	// failed: the op Undoes still holds until it is paid.
	OpDebt Op = "debt"
	// OpCompensationEnd records that compensation's first pass ended;
	// Announce says whether compensation.completed is due (nothing owed).
	OpCompensationEnd Op = "compensation.end"
	// OpAnnounce records that the final event Flag was published.
	OpAnnounce Op = "announce"
	// OpCancel ends the run Cancelled, asked by an operator (Owner names
	// who, Error says why). Steps still running stay Running until their
	// stages notice and stop; Announce says whether the cancellation is
	// this request's (or a repeat of it) to announce.
	OpCancel Op = "cancel"
	// OpRetryOwed makes every inverse op the run still owes (Failed
	// compensation entries) due now, with at least an hour of automatic
	// retries left, for an operator who fixed the cause
	// (`backstream run ID --compensate`). ErrNothingOwed when none is.
	OpRetryOwed Op = "retry-owed"
	// OpReplay starts the next attempt of a failed or cancelled run (or,
	// with Step "retention", of a succeeded one's retention), asked by an
	// operator (Owner). Step says where it starts: "start" (the whole
	// workflow again), "verify", a hook step ("hook:db/unlock"), or ""
	// for where the run failed (ReplayStage). Within is the new attempt's
	// time limit (the plan's runTimeout). Everything that succeeded is
	// kept and reused; the outcome says where it starts (Stage) and what
	// it reuses (Reused). ErrNotReplayable says why a run cannot be
	// replayed from there.
	OpReplay Op = "replay"
)

// Replay stages besides a hook step.
const (
	ReplayStart     = "start"
	ReplayVerify    = "verify"
	ReplayRetention = "retention"
)

// Transitions the owner applies on its own (OpSettle also when a stage asks).
const (
	// OpSettle marks the run Succeeded once Requirement is met. Stages
	// that finish a run's last pieces ask for it (the owner fills in the
	// requirement from the run's plan); it changes nothing otherwise.
	OpSettle Op = "settle"
	// OpExpire fails the run whose Step ran past its deadline, or (Step
	// empty) the run past its own deadline.
	OpExpire Op = "expire"
)

// Request asks the owner for one transition of run Run. Which fields count
// depends on Op (see the Op constants).
type Request struct {
	Op    Op     `json:"op"`
	Run   string `json:"run"`
	Step  string `json:"step,omitempty"`
	Owner string `json:"owner,omitempty"`
	// Within is a claimed step's time limit, or an owed inverse's lease.
	Within time.Duration `json:"within,omitempty"`
	Phase  Phase         `json:"phase,omitempty"`
	Bytes  int64         `json:"bytes,omitempty"`
	Error  string        `json:"error,omitempty"`
	Result *Result       `json:"result,omitempty"`
	Seed   *Run          `json:"seed,omitempty"`
	Proc   *Proc         `json:"proc,omitempty"`
	Cause  string        `json:"cause,omitempty"`
	Undoes string        `json:"undoes,omitempty"`
	Last   bool          `json:"last,omitempty"`
	// Deadline is a debt's compensationDeadline; RetryEvery how often the
	// owed-inverse loop retries it.
	Deadline   time.Duration `json:"deadline,omitempty"`
	RetryEvery time.Duration `json:"retryEvery,omitempty"`
	Flag       string        `json:"flag,omitempty"`
	// Attempt is the attempt of the run the asker works for: the attempt
	// of the event it handles (0 when no event drives it: an operator, the
	// owner's own loops). A request of an earlier attempt is refused with
	// ErrStale unless it is about a step that attempt still runs, which
	// the replay left to it (Stale says exactly what it may still do).
	Attempt int `json:"attempt,omitempty"`

	// Stage is who asks (the transport fills it in from the subject the
	// request came on, which the stage's NATS user is confined to).
	Stage string `json:"-"`
	// Require is what a settle needs; the owner fills it in from the
	// run's plan.
	Require *Requirement `json:"-"`
}

// Result is what a finished step produced.
type Result struct {
	// Bytes, SHA256 and Chunks are a snapshot's (or restore's) plaintext
	// figures.
	Bytes  int64  `json:"bytes,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Chunks int64  `json:"chunks,omitempty"`
	// Destination is what an upload or verify step found of Dest.
	Dest        string       `json:"dest,omitempty"`
	Destination *Destination `json:"destination,omitempty"`
	// BackupID is the backup a restore reads, and RestoredFrom the
	// destination of the copy it reads (it may fall back to another).
	BackupID     string `json:"backupId,omitempty"`
	RestoredFrom string `json:"restoredFrom,omitempty"`
}

// Requirement is what a run needs to succeed: its workflow's steps done,
// and Need of its destinations holding the backup (uploaded, and verified
// when the plan verifies; Need 0 means all), every other one done failing.
type Requirement struct {
	Steps        []string
	Destinations []string
	Verify       bool
	Need         int
}

// Outcome is what a transition decided, beyond the record itself.
type Outcome struct {
	// Claimed is the outcome of OpClaim.
	Claimed Claimed `json:"claimed,omitzero"`
	// Announce: OpFail failed the run (the caller announces it);
	// OpInverseClaim claimed; OpCompensationEnd: nothing is owed;
	// OpSettle and OpExpire: the run ended now.
	Announce bool `json:"announce,omitempty"`
	// Reason is why OpExpire failed the run.
	Reason string `json:"reason,omitempty"`
	// Stage and Reused say where OpReplay's attempt starts and which
	// steps it reuses.
	Stage  string   `json:"stage,omitempty"`
	Reused []string `json:"reused,omitempty"`
}

// Claimed is the outcome of a claim:
//   - Start: the step was pending and is now the caller's: run it;
//   - Done: the step already finished: re-emit its results;
//   - Interrupted: another delivery started it and never finished (Owner):
//     the process that ran it died mid-step;
//   - Skip: the run already ended, or the step failed (then Failed and
//     Error too: the caller fails the run if it is not failed yet).
type Claimed struct {
	Start       bool   `json:"start,omitempty"`
	Done        bool   `json:"done,omitempty"`
	Interrupted bool   `json:"interrupted,omitempty"`
	Skip        bool   `json:"skip,omitempty"`
	Owner       string `json:"owner,omitempty"`
	Failed      bool   `json:"failed,omitempty"`
	Error       string `json:"error,omitempty"`
}

// Sentinel errors of transitions.
var (
	// ErrRefused: the asking stage may not ask for this transition.
	ErrRefused = errors.New("transition refused")
	// ErrNotOwner: the step is not Running for the asking owner any more.
	ErrNotOwner = errors.New("the step is no longer this process's running step")
	// ErrBadRequest: the request is malformed (names the field).
	ErrBadRequest = errors.New("bad transition request")
	// ErrNotReplayable: the run cannot be replayed from there (the error
	// says why and what can be).
	ErrNotReplayable = errors.New("not replayable")
	// ErrNothingOwed: OpRetryOwed found no inverse op owed.
	ErrNothingOwed = errors.New("owes no inverse op that failed: nothing to retry")
	// ErrNotFailed: compensation's first pass asked about a run that is
	// not failed or cancelled (any more): a failure event of an earlier
	// attempt, delivered again after the run was replayed. The new attempt
	// owns the run's ops; there is nothing to compensate.
	ErrNotFailed = errors.New("the run is not failed or cancelled: its attempt owes no compensation")
	// ErrStale: the request comes from an attempt the run was replayed
	// past, about nothing that attempt still holds (Stale). Its work was
	// superseded: the asker drops it (acks its event) and changes nothing.
	ErrStale = errors.New("superseded by a replay of the run")
)

// StageOf is the stage a step belongs to: "hook" for "hook:db/lock",
// "upload" for "upload:s3", "snapshot" for "snapshot".
func StageOf(step string) string {
	s, _, _ := strings.Cut(step, ":")
	return s
}

// Permit reports whether stage may ask for req. A stage claims, finishes
// and records only steps of its own (StageOf); hook alone keeps the
// compensation entries; the stages that start runs (they consume the
// requests) create records; every consuming stage may fail a run, since
// an event it gave up on fails its run wherever it came from. Settling
// and expiring are the owner's own; a stage cannot declare a run
// succeeded.
func Permit(stage string, req Request) error {
	refuse := func(why string) error {
		return fmt.Errorf("%w: %s may not %s run %s: %s", ErrRefused, stage, req.Op, req.Run, why)
	}
	own := func() error {
		if StageOf(req.Step) != stage {
			return refuse(fmt.Sprintf("step %q is not a %s step", req.Step, stage))
		}
		return nil
	}
	switch req.Op {
	case OpCreate:
		switch stage {
		case "hook", "snapshot", "restore", "schedule":
			return nil
		}
		return refuse("only the stages that start runs create them")
	case OpClaim, OpFinish, OpInterrupt:
		if err := own(); err != nil {
			return err
		}
		if req.Result != nil && req.Result.Dest != "" && req.Step != stage+":"+req.Result.Dest {
			return refuse(fmt.Sprintf("step %q does not write destination %q", req.Step, req.Result.Dest))
		}
		return nil
	case OpRecord:
		if stage != "restore" || req.Result == nil || req.Result.Destination != nil || req.Result.Dest != "" {
			return refuse("only restore records a resolved backup id")
		}
		return nil
	case OpFail:
		switch stage {
		case "hook", "snapshot", "filter", "upload", "verify", "retention", "restore", "metrics", "schedule":
			return nil
		}
		return refuse("only stages fail runs")
	case OpProc:
		if stage != "hook" {
			return refuse("only hook ops record processes")
		}
		return own()
	case OpInverseClaim, OpInverseTried, OpDebt, OpCompensationEnd, OpAnnounce:
		if stage != "hook" {
			return refuse("only hook keeps compensation")
		}
		return nil
	case OpCancel, OpRetryOwed, OpReplay:
		switch stage {
		case "admin", "api":
			return nil
		}
		return refuse("only operators (the CLI as admin, the API) may")
	case OpSettle:
		// Asking is harmless: the owner checks the run against its plan.
		switch stage {
		case "hook", "upload", "verify", "restore":
			return nil
		}
		return refuse("only the stages that finish a run's last pieces ask to settle it")
	case OpExpire:
		return refuse("only the owner of run state expires runs")
	}
	return fmt.Errorf("%w: unknown op %q", ErrBadRequest, req.Op)
}

// Check reports a request malformed for its op, naming the field.
func (req Request) Check() error {
	bad := func(field, why string) error {
		return fmt.Errorf("%w: %s %s: %s", ErrBadRequest, req.Op, field, why)
	}
	if req.Run == "" {
		return bad("run", "missing")
	}
	switch req.Op {
	case OpCreate:
		switch {
		case req.Seed == nil:
			return bad("seed", "missing")
		case req.Seed.ID != req.Run:
			return bad("seed.id", fmt.Sprintf("%q is not the run %q", req.Seed.ID, req.Run))
		case req.Seed.Kind != KindBackup && req.Seed.Kind != KindRestore:
			return bad("seed.kind", fmt.Sprintf("%q is neither %s nor %s", req.Seed.Kind, KindBackup, KindRestore))
		case req.Seed.Phase != "" && req.Seed.Phase != Pending && req.Seed.Phase != Initializing:
			return bad("seed.phase", fmt.Sprintf("a new run cannot start %s", req.Seed.Phase))
		case len(req.Seed.Steps) > 0 || len(req.Seed.Compensation) > 0 || len(req.Seed.Destinations) > 0:
			return bad("seed", "a new run has no steps, destinations or compensation yet")
		}
	case OpClaim, OpInterrupt, OpProc, OpInverseClaim, OpInverseTried, OpDebt:
		if req.Step == "" {
			return bad("step", "missing")
		}
	case OpFinish:
		if req.Step == "" {
			return bad("step", "missing")
		}
		switch req.Phase {
		case Succeeded, Failed, Skipped, Cancelled:
		default:
			return bad("phase", fmt.Sprintf("%q is not a final phase", req.Phase))
		}
	case OpRecord:
		if req.Result == nil {
			return bad("result", "missing")
		}
	case OpFail:
		if req.Error == "" {
			return bad("error", "a failure needs its reason")
		}
	case OpAnnounce:
		if req.Flag == "" {
			return bad("flag", "missing")
		}
	case OpCancel, OpReplay:
		if req.Owner == "" {
			return bad("owner", "who asks is missing")
		}
	}
	if req.Proc == nil && req.Op == OpProc {
		return bad("proc", "missing")
	}
	return nil
}

// Apply applies req to r at now (the owner's clock). ErrNoChange means the
// record stays as it is while the outcome holds (a repeat, or nothing to
// do); any other error refuses the request. OpCreate is not applied here
// (Store.Ensure creates records).
func Apply(r *Run, req Request, now time.Time) (Outcome, error) {
	var o Outcome
	if err := Stale(r, req); err != nil {
		return o, err
	}
	switch req.Op {
	case OpClaim:
		o.Claimed = claim(r, req, now)
		if !o.Claimed.Start {
			return o, ErrNoChange
		}
		return o, nil
	case OpFinish:
		st := r.Step(req.Step)
		if st.Phase.Done() && st.Phase == req.Phase && req.Phase != Failed {
			// A repeat (redelivery): the first end stands. A Failed end is
			// rewritten, so the newest reason is kept.
			return o, ErrNoChange
		}
		st.Phase = req.Phase
		st.Finished = r.Stamp(now)
		if req.Bytes > 0 {
			st.Bytes = req.Bytes
		}
		st.Error = req.Error
		if req.Phase == Succeeded {
			record(r, req.Result)
			if repairing(r, req.Step) {
				// The missing copy is whole again once it is verified (or
				// stored, where the run has no verify steps).
				_, dest, _ := strings.Cut(req.Step, ":")
				verified := StageOf(req.Step) == "verify"
				if !verified {
					verified = !hasVerify(r)
				}
				if verified {
					r.Degraded = slices.DeleteFunc(r.Degraded, func(d string) bool { return d == dest })
				}
			}
		}
		return o, nil
	case OpRecord:
		record(r, req.Result)
		return o, nil
	case OpInterrupt:
		st := r.FindStep(req.Step)
		if st == nil || st.Phase != Running {
			return o, ErrNoChange
		}
		st.Phase, st.Error, st.Finished = Failed, req.Error, r.Stamp(now)
		return o, nil
	case OpFail:
		if r.Fail(req.Stage, req.Error, now) {
			r.Announced = setFlag(r.Announced, "failed:"+req.Cause)
			o.Announce = true
			return o, nil
		}
		o.Announce = r.Announced["failed:"+req.Cause]
		return o, ErrNoChange
	case OpProc:
		st := r.FindStep(req.Step)
		if st == nil || st.Phase != Running || st.Owner != req.Owner {
			return o, ErrNotOwner
		}
		p := *req.Proc
		st.Proc = &p
		return o, nil
	case OpInverseClaim:
		return inverseClaim(r, req, now)
	case OpInverseTried:
		return o, inverseTried(r, req, now)
	case OpDebt:
		if r.FindCompensation(req.Step) != nil {
			return o, ErrNoChange
		}
		at := r.Stamp(now)
		errText := ""
		if st := r.FindStep(req.Step); st != nil {
			errText = st.Error
		}
		r.Compensation = append(r.Compensation, Compensation{Step: req.Step, Undoes: req.Undoes, Phase: Failed,
			Error: errText, Attempts: 1, RetryAt: at, Until: at.Add(req.Deadline)})
		return o, nil
	case OpCompensationEnd:
		if !r.Phase.Unsuccessful() {
			return o, fmt.Errorf("%w: run %s is %s", ErrNotFailed, r.ID, r.Phase)
		}
		if r.CompensationDone {
			o.Announce = len(r.Owed()) == 0 && r.Announced[AnnouncedCompensation]
			return o, ErrNoChange
		}
		r.CompensationDone = true
		if len(r.Owed()) == 0 {
			r.Announced = setFlag(r.Announced, AnnouncedCompensation)
			o.Announce = true
		}
		return o, nil
	case OpAnnounce:
		if r.Announced[req.Flag] {
			return o, ErrNoChange
		}
		r.Announced = setFlag(r.Announced, req.Flag)
		return o, nil
	case OpCancel:
		if r.Phase.Done() {
			o.Announce = r.Phase == Cancelled
			return o, ErrNoChange
		}
		r.Phase = Cancelled
		r.FailedStage = "cancel"
		r.Error = "cancelled by " + req.Owner
		if req.Error != "" {
			r.Error += ": " + req.Error
		}
		r.Finished = now
		for i := range r.Steps {
			if r.Steps[i].Phase == Pending {
				r.Steps[i].Phase = Skipped
			}
		}
		o.Announce = true
		return o, nil
	case OpReplay:
		return replay(r, req, now)
	case OpRetryOwed:
		n := 0
		for i := range r.Compensation {
			c := &r.Compensation[i]
			if c.Phase != Failed {
				continue
			}
			c.RetryAt, c.GaveUp = now, false
			if c.Until.Before(now.Add(time.Hour)) {
				c.Until = now.Add(time.Hour)
			}
			n++
		}
		if n == 0 {
			return o, fmt.Errorf("run %s %w", r.ID, ErrNothingOwed)
		}
		return o, nil
	case OpSettle:
		return settle(r, req.Require, now)
	case OpExpire:
		return expire(r, req.Step, now)
	}
	return o, fmt.Errorf("%w: unknown op %q", ErrBadRequest, req.Op)
}

// Stale refuses, with ErrStale, a request of an attempt the run has moved
// past. A replay is a new attempt: it resets the steps it does again and
// re-emits the events that drive them, so the work of an earlier attempt
// must not end, fail or claim anything of the new one: a verify still
// reading when the run was replayed from the start would otherwise record
// its result in the new attempt's fresh step, which the new attempt's
// verify then finds done without reading its own copy.
//
// The one thing an earlier attempt still owns is a step it claimed that
// the replay left running (an upload of another destination still
// writing when the run was replayed from a missing copy): the new attempt
// takes it over as it is, so its end, its process and its failure are
// accepted from that claim. A step the replay reset, or one the new
// attempt reuses, is the new attempt's: nothing of an earlier one changes
// it. Settling is never stale (the owner checks the run against its
// plan), and requests that no event drives (Attempt 0) are not checked.
// An attempt the run has not reached is a bad request.
func Stale(r *Run, req Request) error {
	if req.Attempt <= 0 || req.Op == OpSettle || req.Op == OpCreate {
		return nil
	}
	cur := r.CurrentAttempt()
	if req.Attempt > cur {
		return fmt.Errorf("%w: attempt %d: run %s is at attempt %d", ErrBadRequest, req.Attempt, r.ID, cur)
	}
	held, phase := 0, Pending // the attempt whose claim holds req.Step, and its phase
	endedSince := false       // it ended after the current attempt started
	if st := r.FindStep(req.Step); st != nil {
		held, phase = st.Attempt, st.Phase
		if held == 0 && !st.Started.IsZero() && st.Phase != Pending {
			// Claimed before records kept the attempt: take it as the
			// claim's.
			held = req.Attempt
		}
		if n := len(r.Attempts); n > 0 && phase.Done() {
			endedSince = st.Finished.After(r.Attempts[n-1].Started)
		}
	}
	// What an earlier attempt may still do with a step it holds: end it
	// while it runs, claim it (a claim starts only a pending step: a
	// redelivery learns it is done, failed or interrupted), and, once the
	// step it took over ended, fail the run or keep compensation for it.
	// A step it holds that ended before the replay (reused, or failed and
	// not done again) stays as the new attempt found it.
	earlier := req.Attempt < cur && held == req.Attempt
	switch req.Op {
	case OpFinish, OpInterrupt, OpProc:
		if req.Attempt == cur && (held == cur || held == 0) {
			return nil
		}
		if earlier && phase == Running {
			return nil
		}
	case OpClaim:
		if req.Attempt == cur || earlier {
			return nil
		}
	default:
		if req.Attempt == cur || (earlier && (phase == Running || endedSince)) {
			return nil
		}
	}
	return fmt.Errorf("%w: run %s is at attempt %d; %s %s of attempt %d changes nothing", ErrStale, r.ID, cur, req.Op, req.Step, req.Attempt)
}

func claim(r *Run, req Request, now time.Time) Claimed {
	if r.Phase.Done() && !repairing(r, req.Step) {
		return Claimed{Skip: true}
	}
	st := r.Step(req.Step)
	switch st.Phase {
	case Succeeded, Skipped:
		return Claimed{Done: true}
	case Failed, Cancelled:
		// Recorded failed (or stopped for a cancel) while the run is not:
		// the process died between the two writes, or a replay kept a
		// step that never completed; the run must still fail, not run the
		// step a second time under the same claim.
		return Claimed{Skip: true, Failed: true, Error: st.Error}
	case Running:
		return Claimed{Interrupted: true, Owner: st.Owner}
	}
	// Stamped: compensation compares the times of one record.
	at := r.Stamp(now)
	st.Phase, st.Owner, st.Started, st.Finished, st.Error = Running, req.Owner, at, time.Time{}, ""
	st.Deadline, st.Attempt = time.Time{}, r.CurrentAttempt()
	if req.Within > 0 {
		st.Deadline = at.Add(req.Within)
	}
	if r.Phase == Pending || r.Phase == Initializing {
		r.Phase = Running
	}
	return Claimed{Start: true}
}

// record copies what a step produced into the run.
func record(r *Run, res *Result) {
	if res == nil {
		return
	}
	if res.Bytes > 0 {
		r.Bytes = res.Bytes
	}
	if res.SHA256 != "" {
		r.SHA256 = res.SHA256
	}
	if res.Chunks > 0 {
		r.Chunks = res.Chunks
	}
	if res.BackupID != "" {
		r.BackupID = res.BackupID
	}
	if res.RestoredFrom != "" {
		r.RestoredFrom = res.RestoredFrom
	}
	if res.Dest != "" && res.Destination != nil {
		d := r.Dest(res.Dest)
		in := res.Destination
		if in.Phase != "" {
			d.Phase = in.Phase
		}
		if in.Key != "" {
			d.Key, d.ManifestKey, d.Size, d.SHA256 = in.Key, in.ManifestKey, in.Size, in.SHA256
			r.StoredBytes = in.Size
		}
		if in.Verified {
			d.Verified, d.VerifyMode = true, in.VerifyMode
		}
	}
}

func inverseClaim(r *Run, req Request, now time.Time) (Outcome, error) {
	var o Outcome
	at := r.Stamp(now)
	c := r.FindCompensation(req.Step)
	if req.Within > 0 {
		// The owed-inverse loop: only a due entry, and with a lease.
		if c == nil || !Due(*c, now) {
			return o, ErrNoChange
		}
		c.Phase, c.Owner, c.Started, c.Finished, c.Lease = Running, req.Owner, at, time.Time{}, at.Add(req.Within)
		o.Announce = true
		return o, nil
	}
	// Compensation's first pass, over a failed or cancelled run.
	if !r.Phase.Unsuccessful() {
		return o, fmt.Errorf("%w: run %s is %s", ErrNotFailed, r.ID, r.Phase)
	}
	if c == nil {
		// A forward run of the inverse that failed was the debt's first
		// attempt.
		tried := 0
		if st := r.FindStep(req.Step); st != nil && !st.Started.IsZero() && st.Phase != Succeeded {
			tried = 1
		}
		r.Compensation = append(r.Compensation, Compensation{Step: req.Step, Attempts: tried})
		c = &r.Compensation[len(r.Compensation)-1]
	}
	c.Undoes = req.Undoes
	c.Phase, c.Owner, c.Started, c.Finished, c.Lease = Running, req.Owner, at, time.Time{}, time.Time{}
	o.Announce = true
	return o, nil
}

// Due reports whether the owed-inverse loop may take entry c at now: owed
// and due for its retry, or claimed by a process whose lease ran out.
func Due(c Compensation, now time.Time) bool {
	switch c.Phase {
	case Failed:
		return !c.RetryAt.IsZero() && !now.Before(c.RetryAt)
	case Running:
		return !c.Lease.IsZero() && now.After(c.Lease)
	}
	return false
}

func inverseTried(r *Run, req Request, now time.Time) error {
	c := r.FindCompensation(req.Step)
	if c == nil {
		return fmt.Errorf("%w: run %s has no compensation entry %s", ErrBadRequest, r.ID, req.Step)
	}
	at := r.Stamp(now)
	c.Attempts++
	c.Finished = at
	switch {
	case req.Error == "":
		c.Phase, c.Error, c.RetryAt, c.Lease = Succeeded, "", time.Time{}, time.Time{}
	case req.Last:
		c.Phase, c.Error, c.Lease = Failed, req.Error, time.Time{}
		if c.Until.IsZero() {
			c.Until = at.Add(req.Deadline)
		}
		c.RetryAt = at.Add(req.RetryEvery)
		if c.RetryAt.After(c.Until) {
			c.RetryAt, c.GaveUp = time.Time{}, true
		}
	default:
		c.Error = req.Error
	}
	return nil
}

func settle(r *Run, need *Requirement, now time.Time) (Outcome, error) {
	var o Outcome
	if need == nil || r.Phase.Done() {
		return o, ErrNoChange
	}
	for _, name := range need.Steps {
		st := r.FindStep(name)
		if st == nil || (st.Phase != Succeeded && st.Phase != Skipped) {
			return o, ErrNoChange
		}
	}
	if r.Kind == KindBackup {
		held, missing := 0, []string(nil)
		for _, name := range need.Destinations {
			switch {
			case holds(r, name, need.Verify):
				held++
			case DestinationFailed(r, name):
				missing = append(missing, name)
			default:
				return o, ErrNoChange // still being written or verified
			}
		}
		want := need.Need
		if want <= 0 {
			want = len(need.Destinations)
		}
		if held < want {
			return o, ErrNoChange // a failure the owner fails the run for
		}
		r.BackupID = r.ID
		r.Degraded = missing
	}
	r.Phase = Succeeded
	r.Finished = now
	o.Announce = true
	return o, nil
}

// holds reports whether destination name holds r's backup: uploaded, and
// verified when the plan verifies.
func holds(r *Run, name string, verify bool) bool {
	d := r.Destinations[name]
	return d != nil && d.Phase == Succeeded && (!verify || d.Verified)
}

// DestinationFailed reports whether destination name's copy of r failed:
// its upload or its verify step is recorded failed.
func DestinationFailed(r *Run, name string) bool {
	for _, step := range []string{"upload:" + name, "verify:" + name} {
		if st := r.FindStep(step); st != nil && st.Phase == Failed {
			return true
		}
	}
	return false
}

// Reachable reports whether r can still hold the copies need asks for:
// enough destinations whose copy has not failed.
func Reachable(r *Run, need Requirement) bool {
	want := need.Need
	if want <= 0 {
		want = len(need.Destinations)
	}
	left := 0
	for _, name := range need.Destinations {
		if !DestinationFailed(r, name) {
			left++
		}
	}
	return left >= want
}

// hasVerify reports whether r verifies its copies (has verify steps).
func hasVerify(r *Run) bool {
	for _, st := range r.Steps {
		if StageOf(st.Name) == "verify" {
			return true
		}
	}
	return false
}

// repairing reports whether step belongs to a copy a succeeded, degraded
// run is having written again (a replay of a missing destination).
func repairing(r *Run, step string) bool {
	if r.Phase != Succeeded {
		return false
	}
	_, dest, ok := strings.Cut(step, ":")
	return ok && (StageOf(step) == "upload" || StageOf(step) == "verify") && slices.Contains(r.Degraded, dest)
}

// AnnouncedSucceeded is the Announced flag of a run's backup.succeeded or
// restore.succeeded, set once it is published.
const AnnouncedSucceeded = "succeeded"

// abandoned begins the error of a step or run that ran past its deadline.
const abandoned = "abandoned"

// Overdue names the first step of r Running past its deadline at now, or
// "" (and run=true) when the run itself is past its deadline, or "" and
// false when nothing is overdue.
func Overdue(r *Run, now time.Time) (step string, run bool) {
	if r.Phase.Done() {
		return "", false
	}
	for _, st := range r.Steps {
		if st.Phase == Running && !st.Deadline.IsZero() && now.After(st.Deadline) {
			return st.Name, false
		}
	}
	return "", !r.Deadline.IsZero() && now.After(r.Deadline)
}

func expire(r *Run, step string, now time.Time) (Outcome, error) {
	var o Outcome
	if r.Phase.Done() {
		return o, ErrNoChange
	}
	if step == "" {
		if r.Deadline.IsZero() || !now.After(r.Deadline) {
			return o, ErrNoChange // it moved on meanwhile
		}
		o.Reason = fmt.Sprintf("run timed out: still %s at its deadline %s (spec.runTimeout)", r.Phase, r.Deadline.Format(time.RFC3339))
		for i := range r.Steps {
			if st := &r.Steps[i]; st.Phase == Running {
				st.Phase, st.Error, st.Finished = Failed, "run timed out while running", r.Stamp(now)
			}
		}
		r.Fail("control", o.Reason, now)
		o.Announce = true
		return o, nil
	}
	st := r.FindStep(step)
	if st == nil || st.Phase != Running || !now.After(st.Deadline) {
		return o, ErrNoChange
	}
	o.Reason = fmt.Sprintf("%s: %s ran past its deadline %s (owner %s)", abandoned, step, st.Deadline.Format(time.RFC3339), st.Owner)
	st.Phase, st.Error, st.Finished = Failed, o.Reason, r.Stamp(now)
	r.Fail(StageOf(step), o.Reason, now)
	o.Announce = true
	return o, nil
}

func setFlag(m map[string]bool, k string) map[string]bool {
	if m == nil {
		m = map[string]bool{}
	}
	m[k] = true
	return m
}

// ReplayStage is where a replay of r starts when the operator names no
// stage: the step that failed it, as a replay stage. ok is false when
// nothing names a step (the run failed past a deadline, or was cancelled
// between steps): then only ReplayStart is possible.
func ReplayStage(r *Run) (stage string, ok bool) {
	// The step of the stage that failed the run comes first: steps it
	// stopped (a dump killed when an upload failed) are Failed too, as a
	// consequence, and may come earlier in the workflow.
	rank := func(st Step) int {
		if StageOf(st.Name) == r.FailedStage {
			return 0
		}
		return 1
	}
	steps := slices.Clone(r.Steps)
	slices.SortStableFunc(steps, func(a, b Step) int { return rank(a) - rank(b) })
	for _, st := range steps {
		if st.Phase != Failed {
			continue
		}
		switch StageOf(st.Name) {
		case "verify":
			return ReplayVerify, true
		case "hook":
			return st.Name, true
		default:
			return st.Name, true // a data step: refused by replay, with why
		}
	}
	// No step recorded failed: the stage that failed the run (an event it
	// gave up on) says where.
	switch r.FailedStage {
	case "verify":
		return ReplayVerify, true
	case "hook":
		for _, st := range r.Steps {
			if StageOf(st.Name) == "hook" && (st.Phase == Running || st.Phase == Failed) {
				return st.Name, true
			}
		}
	}
	return "", false
}

func replay(r *Run, req Request, now time.Time) (Outcome, error) {
	var o Outcome
	stage := req.Step
	notReplayable := func(why string) (Outcome, error) {
		return o, fmt.Errorf("%w: run %s: %s", ErrNotReplayable, r.ID, why)
	}
	if stage == ReplayRetention {
		if r.Phase != Succeeded || r.Kind != KindBackup {
			return notReplayable(fmt.Sprintf("it is a %s run %s; retention runs only after a succeeded backup", r.Kind, r.Phase))
		}
		for _, st := range r.Steps {
			o.Reused = append(o.Reused, st.Name)
		}
		o.Stage = stage
		nextAttempt(r, stage, o.Reused, req.Owner, now)
		// The run stays Succeeded: retention is reported on its own.
		r.Attempts[len(r.Attempts)-1].Phase = Succeeded
		return o, nil
	}
	if r.Phase == Succeeded && len(r.Degraded) > 0 && (stage == "" || StageOf(stage) == "upload") {
		return repairCopy(r, stage, req, now)
	}
	if !r.Phase.Unsuccessful() {
		return notReplayable(fmt.Sprintf("it is %s; only a failed or cancelled run is replayed (a succeeded one's retention with --stage retention, a degraded one's missing copy with --destination)", r.Phase))
	}
	for _, c := range r.Compensation {
		if c.Phase != Succeeded {
			return notReplayable(fmt.Sprintf("it still owes inverse op %s (undoing %s); pay it first: backstream run %s --compensate", c.Step, c.Undoes, r.ID))
		}
	}
	if r.AwaitsCompensation() {
		// What the attempt's ops owe is known only once compensation has
		// gone over them: a replay now would run ops under a lock still
		// held, lose the debt (from the start), or have the pass undo the
		// new attempt's ops.
		return notReplayable(fmt.Sprintf("compensation has not yet gone over the hook ops it ran (the hook stage does so on %s); replay once `backstream run %s` shows compensation ended (`backstream replay` waits for it)", failureEventOf(r), r.ID))
	}
	if stage == "" {
		var ok bool
		if stage, ok = ReplayStage(r); !ok {
			return notReplayable(fmt.Sprintf("it ended %s with no step failed (%s); replay it from the start (--from-start)", r.Phase, r.Error))
		}
	}
	stored := len(r.Destinations) > 0
	for _, d := range r.Destinations {
		stored = stored && d.Phase == Succeeded
	}
	dataRan := false
	for _, st := range r.Steps {
		if k := StageOf(st.Name); (k == "snapshot" || k == "filter" || k == "upload" || k == "restore") && !st.Started.IsZero() {
			dataRan = true
		}
	}
	switch {
	case stage == ReplayStart:
		r.Steps, r.Destinations, r.Compensation = nil, nil, nil
		r.Bytes, r.StoredBytes, r.SHA256, r.Chunks = 0, 0, "", 0
		if r.Kind == KindBackup {
			r.BackupID = ""
		}
	case stage == ReplayVerify:
		if r.Kind != KindBackup || !stored {
			return notReplayable("not every destination holds the uploaded backup, so there is nothing to verify again; replay it from the start (--from-start)")
		}
		// Every copy, also one attempt 1 verified: the failure marked
		// every manifest failed, and only a verify writes it good again.
		reverify(r)
	case StageOf(stage) == "hook":
		st := r.FindStep(stage)
		if st == nil || (st.Phase != Failed && st.Phase != Running && !(st.Phase == Skipped && st.Started.IsZero())) {
			return notReplayable(fmt.Sprintf("step %s did not fail", stage))
		}
		if dataRan && !stored && r.Kind == KindBackup {
			return notReplayable(fmt.Sprintf("its data step ran but not every destination holds the backup (the bytes are gone); replay it from the start (--from-start)"))
		}
		if dataRan && r.Kind == KindRestore {
			if rs := r.FindStep("restore"); rs == nil || rs.Phase != Succeeded {
				return notReplayable("its restore step did not complete; replay it from the start (--from-start)")
			}
		}
		resetStep(st)
		reverify(r)
	case StageOf(stage) == "upload" && r.Kind == KindBackup:
		dest := strings.TrimPrefix(stage, "upload:")
		if d := r.Destinations[dest]; d != nil && d.Phase == Succeeded {
			return notReplayable(fmt.Sprintf("destination %s holds the backup already", dest))
		}
		if _, ok := GoodCopy(r, dest); !ok {
			return notReplayable(fmt.Sprintf("no other destination holds the whole backup to copy into %s (the bytes are gone); replay it from the start (--from-start)", dest))
		}
		if st := r.FindStep(stage); st != nil {
			resetStep(st)
		}
		if st := r.FindStep("verify:" + dest); st != nil {
			resetStep(st)
		}
		delete(r.Destinations, dest)
		reverify(r)
	default:
		return notReplayable(fmt.Sprintf("step %s failed mid-stream and a dump cannot resume (the bytes are gone); replay it from the start (--from-start)", stage))
	}
	// Steps the failure skipped before they ran are due again.
	for i := range r.Steps {
		if st := &r.Steps[i]; st.Phase == Skipped && st.Started.IsZero() {
			st.Phase = Pending
		}
		if st := r.Steps[i]; st.Phase == Succeeded || (st.Phase == Skipped && !st.Started.IsZero()) {
			o.Reused = append(o.Reused, st.Name)
		}
	}
	o.Stage = stage
	nextAttempt(r, stage, o.Reused, req.Owner, now)
	r.Phase = Running
	if r.Kind == KindRestore && len(o.Reused) == 0 {
		r.Phase = Initializing
	}
	r.FailedStage, r.Error, r.Finished = "", "", time.Time{}
	r.CompensationDone = false
	for k := range r.Announced {
		if strings.HasPrefix(k, "failed:") || k == AnnouncedSucceeded || k == AnnouncedCompensation {
			delete(r.Announced, k)
		}
	}
	if req.Within > 0 {
		r.Deadline = now.Add(req.Within)
	}
	return o, nil
}

// reverify makes every copy of r due for verifying again: a failed run's
// manifests were marked failed with it (verify's backup.failed
// consumer), a copy verified before the failure too, and only a verify of
// the new attempt writes one good again.
func reverify(r *Run) {
	for i := range r.Steps {
		if st := &r.Steps[i]; StageOf(st.Name) == "verify" {
			resetStep(st)
		}
	}
	for _, d := range r.Destinations {
		d.Verified, d.VerifyMode = false, ""
	}
}

// AwaitsCompensation reports whether r ended failed or cancelled after a
// hook op of its last attempt started, and compensation's first pass has
// not gone over it yet: until it has, what the attempt owes is not known,
// and a replay waits.
func (r *Run) AwaitsCompensation() bool {
	if !r.Phase.Unsuccessful() || r.CompensationDone {
		return false
	}
	for _, st := range r.Steps {
		if StageOf(st.Name) == "hook" && !st.Started.IsZero() {
			return true
		}
	}
	return false
}

// failureEventOf names the event that announced r's end, which
// compensation runs on.
func failureEventOf(r *Run) string {
	verb := "failed"
	if r.Phase == Cancelled {
		verb = "cancelled"
	}
	return r.Kind + "." + verb
}

// GoodCopy names a destination other than dest that holds r's whole
// backup (uploaded), preferring a verified one, to copy into dest.
func GoodCopy(r *Run, dest string) (string, bool) {
	best, ok := "", false
	names := make([]string, 0, len(r.Destinations))
	for name := range r.Destinations {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		d := r.Destinations[name]
		if name == dest || d.Phase != Succeeded || d.Key == "" {
			continue
		}
		if d.Verified {
			return name, true
		}
		if !ok {
			best, ok = name, true
		}
	}
	return best, ok
}

// repairCopy starts an attempt of a succeeded, degraded run that writes a
// missing copy again from a good one: the run stays Succeeded (it held the
// copies it needed) and is no longer degraded once the copy is verified.
func repairCopy(r *Run, stage string, req Request, now time.Time) (Outcome, error) {
	var o Outcome
	dest := strings.TrimPrefix(stage, "upload:")
	if stage == "" {
		dest = r.Degraded[0]
	}
	if !slices.Contains(r.Degraded, dest) {
		return o, fmt.Errorf("%w: run %s: destination %s is not missing a copy (missing: %s)", ErrNotReplayable, r.ID, dest, strings.Join(r.Degraded, ", "))
	}
	if _, ok := GoodCopy(r, dest); !ok {
		return o, fmt.Errorf("%w: run %s: no destination holds a copy to write into %s", ErrNotReplayable, r.ID, dest)
	}
	for _, name := range []string{"upload:" + dest, "verify:" + dest} {
		if st := r.FindStep(name); st != nil {
			resetStep(st)
		}
	}
	delete(r.Destinations, dest)
	for _, st := range r.Steps {
		if st.Phase == Succeeded {
			o.Reused = append(o.Reused, st.Name)
		}
	}
	o.Stage = "upload:" + dest
	nextAttempt(r, o.Stage, o.Reused, req.Owner, now)
	r.Attempts[len(r.Attempts)-1].Phase = Succeeded
	return o, nil
}

// resetStep makes st due again.
func resetStep(st *Step) {
	*st = Step{Name: st.Name, Phase: Pending}
}

// nextAttempt closes the run's current attempt with its outcome and
// starts the next at stage.
func nextAttempt(r *Run, stage string, reused []string, by string, now time.Time) {
	if len(r.Attempts) == 0 {
		r.Attempts = []Attempt{{Number: 1, Stage: ReplayStart, By: r.RequestedBy, Started: r.Created}}
	}
	last := &r.Attempts[len(r.Attempts)-1]
	last.Phase, last.Finished, last.Error = r.Phase, r.Finished, r.Error
	r.Attempt = r.CurrentAttempt() + 1
	// Stamped: a step that ends after the attempt started is stamped after
	// it (Stale tells a step the new attempt took over by it).
	r.Attempts = append(r.Attempts, Attempt{Number: r.Attempt, Stage: stage, Reused: reused, By: by, Started: r.Stamp(now)})
}
