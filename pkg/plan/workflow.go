package plan

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Sentinel errors of the workflow functions.
var (
	ErrUnknownWorkflow = errors.New("unknown workflow")
	ErrUnknownStep     = errors.New("unknown step")
)

// StepKind says what a workflow step does.
type StepKind string

// Step kinds.
const (
	StepHook     StepKind = "hook"     // run one op of one hook
	StepSnapshot StepKind = "snapshot" // the data step of a backup
	StepRestore  StepKind = "restore"  // the data step of a restore

	stepGroup StepKind = "group" // a Fusion group step before its workflow resolves it
)

// Step is one entry of a workflow sequence. Hook and Op are set for hook
// steps only.
type Step struct {
	Kind StepKind
	Hook string
	Op   string
}

// HookStep returns the step that runs op of hook.
func HookStep(hook, op string) Step { return Step{Kind: StepHook, Hook: hook, Op: op} }

// String returns "snapshot", "restore" or "hook:<hook>/<op>": the form
// events carry in their step attribute, and the form ParseStep reads.
func (s Step) String() string {
	if s.Kind == StepHook {
		return "hook:" + s.Hook + "/" + s.Op
	}
	return string(s.Kind)
}

// IsData reports whether s is the data step (snapshot or restore).
func (s Step) IsData() bool { return s.Kind == StepSnapshot || s.Kind == StepRestore }

// ParseStep reads the String form of a step.
func ParseStep(s string) (Step, error) {
	switch s {
	case string(StepSnapshot):
		return Step{Kind: StepSnapshot}, nil
	case string(StepRestore):
		return Step{Kind: StepRestore}, nil
	}
	ref, ok := strings.CutPrefix(s, "hook:")
	if !ok {
		return Step{}, fmt.Errorf("parse step %q: want snapshot, restore or hook:<hook>/<op>", s)
	}
	hook, op, ok := strings.Cut(ref, "/")
	if !ok || hook == "" || op == "" || strings.Contains(op, "/") {
		return Step{}, fmt.Errorf("parse step %q: want hook:<hook>/<op>", s)
	}
	return HookStep(hook, op), nil
}

// UnmarshalYAML reads the step forms a sequence may hold:
//
//   - snapshot            - restore
//   - {snapshot: {}}      - {restore: {}}
//   - group: <any name>   (Fusion; the workflow's data step)
//   - hook: <hook>/<op>
func (s *Step) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		st, err := ParseStep(n.Value)
		if err != nil {
			return typeError(n, fmt.Sprintf("step %q: want snapshot, restore, {hook: <hook>/<op>} or {group: <name>}", n.Value))
		}
		*s = st
		return nil
	case yaml.MappingNode:
		if len(n.Content) != 2 {
			return typeError(n, "step: want exactly one of hook, group, snapshot, restore")
		}
		k, v := n.Content[0], n.Content[1]
		switch k.Value {
		case "hook":
			if v.Kind != yaml.ScalarNode {
				return typeError(v, "hook: want <hook>/<op>")
			}
			hook, op, _ := strings.Cut(v.Value, "/")
			// A missing op is left for Validate to report with its path.
			*s = HookStep(hook, op)
			return nil
		case "group":
			if v.Kind != yaml.ScalarNode {
				return typeError(v, "group: want a name")
			}
			*s = Step{Kind: stepGroup}
			return nil
		case string(StepSnapshot), string(StepRestore):
			if v.ShortTag() != "!!null" && (v.Kind != yaml.MappingNode || len(v.Content) != 0) {
				return typeError(v, k.Value+": takes no settings; write {}")
			}
			*s = Step{Kind: StepKind(k.Value)}
			return nil
		}
		return typeError(k, fmt.Sprintf("step: unknown field %q; want hook, group, snapshot or restore", k.Value))
	}
	return typeError(n, "step: want snapshot, restore, {hook: <hook>/<op>} or {group: <name>}")
}

// MarshalJSON writes the String form.
func (s Step) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads the String form.
func (s *Step) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return fmt.Errorf("step: %w", err)
	}
	st, err := ParseStep(str)
	if err != nil {
		return err
	}
	*s = st
	return nil
}

// Sequence returns the steps of a workflow ("backup" or "restore"): the
// plan's own, or the default (backup: snapshot; restore: restore). It
// returns nil for any other name. The slice is the caller's.
func (p *Plan) Sequence(workflow string) []Step {
	for _, w := range p.Spec.Workflows {
		if w.Name == workflow {
			return append([]Step(nil), w.Sequence...)
		}
	}
	switch workflow {
	case WorkflowBackup:
		return []Step{{Kind: StepSnapshot}}
	case WorkflowRestore:
		return []Step{{Kind: StepRestore}}
	}
	return nil
}

// NextStep is the one function every stage uses to find what follows a step.
// after is a step's String form; "" asks for the first step. ok is false
// when after is the last step. An unknown workflow or a step that is not in
// the sequence is an error (ErrUnknownWorkflow, ErrUnknownStep): a stage
// that gets one holds an event for another version of the plan.
func (p *Plan) NextStep(workflow string, after string) (next Step, ok bool, err error) {
	seq := p.Sequence(workflow)
	if seq == nil {
		return Step{}, false, fmt.Errorf("next step of %q: %w", workflow, ErrUnknownWorkflow)
	}
	if after == "" {
		if len(seq) == 0 {
			return Step{}, false, nil
		}
		return seq[0], true, nil
	}
	i := index(seq, after)
	if i < 0 {
		return Step{}, false, fmt.Errorf("next step of %s after %q: %w", workflow, after, ErrUnknownStep)
	}
	if i+1 == len(seq) {
		return Step{}, false, nil
	}
	return seq[i+1], true, nil
}

func index(seq []Step, step string) int {
	for i, s := range seq {
		if s.String() == step {
			return i
		}
	}
	return -1
}

// HooksAfter returns the hook steps that directly follow step in workflow, up
// to the next non-hook step: after "snapshot" in lock, snapshot, unlock it is
// [unlock], which fires on snapshot.completed while the data still drains.
// It returns nil for an unknown workflow or step.
func (p *Plan) HooksAfter(workflow, step string) []Step {
	seq := p.Sequence(workflow)
	i := index(seq, step)
	if i < 0 {
		return nil
	}
	var out []Step
	for _, s := range seq[i+1:] {
		if s.Kind != StepHook {
			break
		}
		out = append(out, s)
	}
	return out
}

// Op finds an op of a hook.
func (p *Plan) Op(hook, op string) (*Hook, *Op, bool) {
	for i := range p.Spec.Hooks {
		h := &p.Spec.Hooks[i]
		if h.Name != hook {
			continue
		}
		for j := range h.Ops {
			if h.Ops[j].Name == op {
				return h, &h.Ops[j], true
			}
		}
		return h, nil, false
	}
	return nil, nil, false
}

// InverseOf returns the step that undoes op of hook, if it names one.
func (p *Plan) InverseOf(hook, op string) (Step, bool) {
	_, o, ok := p.Op(hook, op)
	if !ok || o.InverseOp == "" {
		return Step{}, false
	}
	return HookStep(hook, o.InverseOp), true
}

// OpRun is one run of a hook op within a backup or restore run: a workflow
// step, or an inverse op run by compensation. Compensation decides from a
// run's OpRuns, never from the sequence alone.
type OpRun struct {
	Step Step
	// Inverse marks a run made by compensation: it pays debts, and owes
	// none of its own (an inverse is not undone).
	Inverse bool
	// Started is when the op was claimed to run. Times of one run record
	// are ordered: a claim made after another op's end is later than it.
	Started time.Time
	// Finished is when its end was recorded; zero while it runs or when the
	// process that ran it died before recording it.
	Finished time.Time
	// OK is set only when the op completed successfully. An op that
	// failed, timed out, failed with onError continue or was interrupted
	// is not OK.
	OK bool
}

// Debt is an inverse op still owed: Inverse undoes Op.
type Debt struct {
	Op      Step
	Inverse Step
}

// Compensation applies the one rule of compensation to a run's op runs
// (in any order): every forward hook op that started owes its inverseOp
// until a successful run of that inverse (forward or in compensation)
// started after the op ended — or after it started, when its end was never
// recorded. A forward inverse that failed, timed out or was interrupted
// does not pay. The debts come newest first (by the owing op's start), each
// inverse once, named after the newest op that owes it.
func (p *Plan) Compensation(ran []OpRun) []Debt {
	fwd := make([]OpRun, 0, len(ran))
	for _, r := range ran {
		if r.Step.Kind == StepHook && !r.Inverse && !r.Started.IsZero() {
			fwd = append(fwd, r)
		}
	}
	sort.SliceStable(fwd, func(i, j int) bool { return fwd[i].Started.After(fwd[j].Started) })
	var out []Debt
	listed := map[Step]bool{}
	for _, o := range fwd {
		inv, ok := p.InverseOf(o.Step.Hook, o.Step.Op)
		if !ok || listed[inv] || paid(ran, o, inv) {
			continue
		}
		listed[inv] = true
		out = append(out, Debt{Op: o.Step, Inverse: inv})
	}
	return out
}

// paid reports whether a successful run of inv started after op o ended.
func paid(ran []OpRun, o OpRun, inv Step) bool {
	after := o.Finished
	if after.IsZero() {
		after = o.Started
	}
	for _, r := range ran {
		if r.Step == inv && r.OK && !r.Started.Before(after) {
			return true
		}
	}
	return false
}

// EffectiveRetries is how many times op is tried again when it fails as an
// inverse op in compensation: its own retries, else DefaultRetries.
func (h *Hook) EffectiveRetries(op *Op) int {
	if op != nil && op.Retries != nil {
		return *op.Retries
	}
	return DefaultRetries
}

// EffectiveCompensationDeadline is how long an owed inverse op of h is
// retried automatically: its compensationDeadline, else the default.
func (h *Hook) EffectiveCompensationDeadline() time.Duration {
	if h.CompensationDeadline > 0 {
		return h.CompensationDeadline.Std()
	}
	return DefaultCompensationDeadline.Std()
}

// EffectiveTimeout is the timeout of op: its own, else the hook's, else
// DefaultHookTimeout.
func (h *Hook) EffectiveTimeout(op *Op) time.Duration {
	switch {
	case op != nil && op.Timeout > 0:
		return op.Timeout.Std()
	case h.Timeout > 0:
		return h.Timeout.Std()
	}
	return DefaultHookTimeout.Std()
}

// EffectiveOnError is the onError of op: its own, else the hook's, else fail.
func (h *Hook) EffectiveOnError(op *Op) OnError {
	switch {
	case op != nil && op.OnError != "":
		return op.OnError
	case h.OnError != "":
		return h.OnError
	}
	return OnErrorFail
}
