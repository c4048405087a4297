package plan

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/retention"
	"github.com/robfig/cron/v3"
)

// Problem is one thing wrong with a plan: at a field path such as
// spec.hooks[0].ops[1].inverseOp ("" when the decoder could not tell the
// field), on a line of the plan file where it is known (0 otherwise).
// DecodeError and ValidationError both list Problems.
type Problem struct {
	Path    string
	Message string
	Line    int
}

// String is "path: message", or the message alone without a path.
func (p Problem) String() string {
	if p.Path == "" {
		return p.Message
	}
	return p.Path + ": " + p.Message
}

// in is the problem as a line of a listing of file's problems:
// "file:line: path: message", leaving out what is not known.
func (p Problem) in(file string) string {
	switch {
	case file != "" && p.Line > 0:
		return file + ":" + strconv.Itoa(p.Line) + ": " + p.String()
	case file != "":
		return file + ": " + p.String()
	}
	return p.String()
}

// listProblems lists problems one per line (Problem.in).
func listProblems(file string, problems []Problem) string {
	lines := make([]string, len(problems))
	for i, p := range problems {
		lines[i] = p.in(file)
	}
	return strings.Join(lines, "\n")
}

// ValidationError lists every problem of one plan.
type ValidationError struct {
	File     string
	Problems []Problem
}

// Error lists the problems one per line, each as "file:line: path: message".
func (e *ValidationError) Error() string { return listProblems(e.File, e.Problems) }

// CronParser parses schedule.cron: five fields or a descriptor (@daily,
// @every 6h). The schedule stage must parse with the same parser.
var CronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

type problems []Problem

func (ps *problems) add(path, format string, args ...any) {
	*ps = append(*ps, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

// Validate checks the whole plan and reports every problem at once as a
// *ValidationError (nil when the plan is good). It may run before or after
// Defaults: an unset field means its default. Plugin blocks are checked by c;
// a nil c skips them. Validate reads no files and resolves no secrets.
func (p *Plan) Validate(c Checker) error {
	var ps problems
	p.validateHeader(&ps)
	p.validatePlugins(&ps, c)
	p.validateHooks(&ps)
	p.validateWorkflows(&ps)
	p.validateFilters(&ps)
	p.validateSchedule(&ps)
	p.validateRetention(&ps)
	p.validateAlert(&ps)
	p.validateRunTimeout(&ps)
	p.validateRequire(&ps)
	p.validateScrub(&ps)
	p.validateDrill(&ps)
	if len(ps) == 0 {
		return nil
	}
	file := p.File
	if file == "" && p.Name() != "" {
		file = "plan " + p.Name()
	}
	return &ValidationError{File: file, Problems: ps}
}

const dnsLabel = "must be a lowercase DNS label (a-z, 0-9 and -, at most 63 characters)"

func checkName(ps *problems, path, name string) {
	switch {
	case name == "":
		ps.add(path, "required")
	case !events.ValidName(name):
		ps.add(path, "%q %s", name, dnsLabel)
	}
}

func (p *Plan) validateHeader(ps *problems) {
	switch p.APIVersion {
	case APIVersion:
	case "":
		ps.add("apiVersion", "required: %s", APIVersion)
	default:
		ps.add("apiVersion", "%q is not supported; want %s", p.APIVersion, APIVersion)
	}
	switch p.Kind {
	case Kind:
	case "":
		ps.add("kind", "required: %s", Kind)
	default:
		ps.add("kind", "%q is not supported; want %s", p.Kind, Kind)
	}
	checkName(ps, "metadata.name", p.Metadata.Name)
}

func (p *Plan) validatePlugins(ps *problems, c Checker) {
	src := p.Spec.Source
	switch {
	case src.Type == "" && src.Config == nil:
		ps.add("spec.source", "required")
	case src.Type == "":
		ps.add("spec.source.type", "required")
	case c != nil:
		ps.addPlugin("spec.source."+src.Type, c.CheckSource(src.Plugin))
	}
	if len(p.Spec.Destinations) == 0 {
		ps.add("spec.destinations", "at least one destination is required")
	}
	seen := map[string]int{}
	for i, d := range p.Spec.Destinations {
		path := fmt.Sprintf("spec.destinations[%d]", i)
		checkName(ps, path+".name", d.Name)
		if j, dup := seen[d.Name]; dup && d.Name != "" {
			ps.add(path+".name", "%q is already the name of spec.destinations[%d]", d.Name, j)
		} else {
			seen[d.Name] = i
		}
		if d.Type == "" {
			ps.add(path+".type", "required")
			continue
		}
		if c != nil {
			ps.addPlugin(path+"."+d.Type, c.CheckDestination(d.Plugin))
		}
	}
}

// addPlugin records what a Checker found in the plugin block at path: a
// field it names (*FieldError) under its own path and line, the rest under
// the block's.
func (ps *problems) addPlugin(path string, err error) {
	for _, err := range splitJoined(err) {
		var fe *FieldError
		if !errors.As(err, &fe) {
			ps.add(path, "%v", err)
			continue
		}
		p := fe.Problem
		p.Path = joinPath(path, fe.Path)
		*ps = append(*ps, p)
	}
}

// splitJoined returns the errors an errors.Join holds (recursively), or err
// alone. Errors wrapping several errors with a message of their own (from
// fmt.Errorf with many %w) stay whole.
func splitJoined(err error) []error {
	if err == nil {
		return nil
	}
	multi, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	children := multi.Unwrap()
	msgs := make([]string, len(children))
	for i, e := range children {
		msgs[i] = e.Error()
	}
	if strings.Join(msgs, "\n") != err.Error() {
		return []error{err}
	}
	var out []error
	for _, e := range children {
		out = append(out, splitJoined(e)...)
	}
	return out
}

var hookTypes = []HookType{HookExec, HookSQL, HookHTTP, HookKubernetes}

func checkOnError(ps *problems, path string, v OnError) {
	if v != "" && v != OnErrorFail && v != OnErrorContinue {
		ps.add(path, "%q is not one of fail, continue", v)
	}
}

func (p *Plan) validateHooks(ps *problems) {
	seen := map[string]int{}
	for i := range p.Spec.Hooks {
		h := &p.Spec.Hooks[i]
		path := fmt.Sprintf("spec.hooks[%d]", i)
		checkName(ps, path+".name", h.Name)
		if j, dup := seen[h.Name]; dup && h.Name != "" {
			ps.add(path+".name", "%q is already the name of spec.hooks[%d]", h.Name, j)
		} else {
			seen[h.Name] = i
		}
		known := false
		for _, t := range hookTypes {
			known = known || h.Type == t
		}
		switch {
		case h.Type == "":
			ps.add(path+".type", "required: one of exec, sql, http, kubernetes")
		case !known:
			ps.add(path+".type", "%q is not one of exec, sql, http, kubernetes", h.Type)
		}
		if h.Timeout < 0 {
			ps.add(path+".timeout", "must be > 0")
		}
		if h.CompensationDeadline < 0 {
			ps.add(path+".compensationDeadline", "must be > 0")
		}
		checkOnError(ps, path+".onError", h.OnError)
		p.validateHookBlocks(ps, path, h)
		if len(h.Ops) == 0 {
			ps.add(path+".ops", "at least one op is required")
		}
		ops := map[string]int{}
		for j, op := range h.Ops {
			if _, dup := ops[op.Name]; !dup {
				ops[op.Name] = j
			}
		}
		for j := range h.Ops {
			validateOp(ps, fmt.Sprintf("%s.ops[%d]", path, j), h, j, ops, known)
		}
	}
}

func (p *Plan) validateHookBlocks(ps *problems, path string, h *Hook) {
	if h.Exec != nil {
		if h.Type != HookExec {
			ps.add(path+".exec", "only exec hooks take it")
		}
		for k, ref := range h.Exec.Env {
			if err := ref.Validate(); err != nil {
				ps.add(path+".exec.env."+k, "%v", err)
			}
		}
	}
	if h.Kubernetes != nil && h.Type != HookKubernetes {
		ps.add(path+".kubernetes", "only kubernetes hooks select pods (kubernetes block, or Fusion namespace/labelSelector/nameSelector/selectResource/singlePodOnly)")
	}
	if h.Type == HookKubernetes {
		k := h.Kubernetes
		if k == nil || (k.LabelSelector == "" && k.NameSelector == "") {
			ps.add(path+".kubernetes", "select pods with labelSelector or nameSelector")
		}
		if k != nil {
			if k.SelectResource != "" && k.SelectResource != "pod" {
				ps.add(path+".kubernetes.selectResource", "%q is not supported; hooks run in pods (pod)", k.SelectResource)
			}
			if _, err := regexp.Compile(k.NameSelector); err != nil {
				ps.add(path+".kubernetes.nameSelector", "not a regular expression: %v", err)
			}
		}
	}
	if h.HTTP != nil {
		if h.Type != HookHTTP {
			ps.add(path+".http", "only http hooks take it")
		}
		if h.HTTP.BaseURL != "" {
			if u, err := url.Parse(h.HTTP.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				ps.add(path+".http.baseURL", "%q is not an absolute http(s) URL", h.HTTP.BaseURL)
			}
		}
		for k, ref := range h.HTTP.SecretHeaders {
			if err := ref.Validate(); err != nil {
				ps.add(path+".http.secretHeaders."+k, "%v", err)
			}
		}
	}
}

var httpMethod = regexp.MustCompile(`^[A-Z]+$`)

func validateOp(ps *problems, path string, h *Hook, j int, ops map[string]int, knownType bool) {
	op := &h.Ops[j]
	checkName(ps, path+".name", op.Name)
	if first := ops[op.Name]; first != j && op.Name != "" {
		ps.add(path+".name", "%q is already the name of ops[%d] of hook %q", op.Name, first, h.Name)
	}
	if op.Timeout < 0 {
		ps.add(path+".timeout", "must be > 0")
	}
	if op.Retries != nil && (*op.Retries < 0 || *op.Retries > MaxRetries) {
		ps.add(path+".retries", "must be between 0 and %d", MaxRetries)
	}
	checkOnError(ps, path+".onError", op.OnError)
	switch {
	case op.InverseOp == "":
	case op.InverseOp == op.Name:
		ps.add(path+".inverseOp", "an op cannot be its own inverse")
	default:
		if _, ok := ops[op.InverseOp]; !ok {
			ps.add(path+".inverseOp", "%q is not an op of hook %q", op.InverseOp, h.Name)
		}
	}
	if op.Container != "" && h.Type != HookKubernetes {
		ps.add(path+".container", "only kubernetes hooks run in containers")
	}
	if !knownType {
		return
	}
	wantCommand := h.Type == HookExec || h.Type == HookKubernetes
	switch {
	case wantCommand && len(op.Command) == 0:
		ps.add(path+".command", "required for a %s hook", h.Type)
	case wantCommand && op.Command[0] == "":
		ps.add(path+".command[0]", "the program must not be empty")
	case !wantCommand && op.Command != nil:
		ps.add(path+".command", "only exec and kubernetes hooks take it")
	}
	switch {
	case h.Type == HookSQL && strings.TrimSpace(op.SQL) == "":
		ps.add(path+".sql", "required for a sql hook")
	case h.Type != HookSQL && op.SQL != "":
		ps.add(path+".sql", "only sql hooks take it")
	}
	switch {
	case h.Type == HookHTTP && op.HTTP == nil:
		ps.add(path+".http", "required for an http hook")
	case h.Type != HookHTTP && op.HTTP != nil:
		ps.add(path+".http", "only http hooks take it")
	case op.HTTP != nil:
		validateHTTPOp(ps, path+".http", h, op.HTTP)
	}
}

func validateHTTPOp(ps *problems, path string, h *Hook, r *HTTPRequest) {
	if r.Method != "" && !httpMethod.MatchString(r.Method) {
		ps.add(path+".method", "%q is not an HTTP method (GET, POST, ...)", r.Method)
	}
	if r.ExpectStatus != 0 && (r.ExpectStatus < 100 || r.ExpectStatus > 599) {
		ps.add(path+".expectStatus", "%d is not an HTTP status", r.ExpectStatus)
	}
	if r.URL == "" {
		ps.add(path+".url", "required")
		return
	}
	u, err := url.Parse(r.URL)
	switch {
	case err != nil:
		ps.add(path+".url", "%q is not a URL", r.URL)
	case u.IsAbs() && (u.Scheme != "http" && u.Scheme != "https" || u.Host == ""):
		ps.add(path+".url", "%q is not an http(s) URL", r.URL)
	case !u.IsAbs() && (h.HTTP == nil || h.HTTP.BaseURL == ""):
		ps.add(path+".url", "relative URL %q needs the hook's http.baseURL", r.URL)
	}
}

func (p *Plan) validateWorkflows(ps *problems) {
	seen := map[string]int{}
	for i, w := range p.Spec.Workflows {
		path := fmt.Sprintf("spec.workflows[%d]", i)
		switch w.Name {
		case WorkflowBackup, WorkflowRestore:
			if j, dup := seen[w.Name]; dup {
				ps.add(path+".name", "%q is already the name of spec.workflows[%d]", w.Name, j)
			}
			seen[w.Name] = i
		case "":
			ps.add(path+".name", "required: backup or restore")
			continue
		default:
			ps.add(path+".name", "%q is not a workflow; want backup or restore", w.Name)
			continue
		}
		want, other := StepSnapshot, StepRestore
		if w.Name == WorkflowRestore {
			want, other = StepRestore, StepSnapshot
		}
		data := 0
		steps := map[Step]int{}
		for j, s := range w.Sequence {
			spath := fmt.Sprintf("%s.sequence[%d]", path, j)
			// A repeated data step is the count rule's to report.
			if k, dup := steps[s]; dup && s.Kind == StepHook {
				ps.add(spath, "%s repeats sequence[%d]", s, k)
			} else if !dup {
				steps[s] = j
			}
			switch s.Kind {
			case want:
				data++
			case other:
				ps.add(spath, "%s belongs in the %s workflow", other, map[StepKind]string{StepSnapshot: WorkflowBackup, StepRestore: WorkflowRestore}[other])
			case StepHook:
				p.validateHookStep(ps, spath+".hook", s)
			}
		}
		if data != 1 {
			ps.add(path+".sequence", "must hold exactly one %s step (or a Fusion group step), has %d", want, data)
		}
	}
}

func (p *Plan) validateHookStep(ps *problems, path string, s Step) {
	if s.Op == "" {
		ps.add(path, "%q names no op; write hook: %s/<op>", s.Hook, s.Hook)
		return
	}
	h, _, ok := p.Op(s.Hook, s.Op)
	switch {
	case ok:
	case h == nil:
		ps.add(path, "%q is not a hook of this plan", s.Hook)
	default:
		ps.add(path, "%q is not an op of hook %q", s.Op, s.Hook)
	}
}

func (p *Plan) validateFilters(ps *problems) {
	f := p.Spec.Filters
	switch f.Compression {
	case "", CompressionNone, CompressionSnappy, CompressionZstd:
	default:
		ps.add("spec.filters.compression", "%q is not one of none, snappy, zstd", f.Compression)
	}
	switch f.Level {
	case "":
	case LevelFastest, LevelDefault, LevelBetter:
		if f.Compression != "" && f.Compression != CompressionZstd {
			ps.add("spec.filters.level", "only zstd takes a level")
		}
	default:
		ps.add("spec.filters.level", "%q is not one of fastest, default, better", f.Level)
	}
	if e := f.Encryption; e != nil {
		validateEncryption(ps, "spec.filters.encryption", e)
	}
	if cs := p.Spec.ChunkSize; cs != 0 && (cs < MinChunkSize || cs > MaxChunkSize) {
		ps.add("spec.chunkSize", "%s is outside %s..%s", cs, MinChunkSize, MaxChunkSize)
	}
	if fs := f.FrameSize; fs != 0 {
		chunk := p.Spec.ChunkSize
		if chunk == 0 {
			chunk = DefaultChunkSize
		}
		switch {
		case fs < chunk || fs > MaxFrameSize:
			ps.add("spec.filters.frameSize", "%s is outside the chunk size (%s)..%s", fs, chunk, MaxFrameSize)
		case fs%chunk != 0:
			ps.add("spec.filters.frameSize", "%s is not a multiple of the chunk size (%s)", fs, chunk)
		}
	}
}

func validateEncryption(ps *problems, path string, e *Encryption) {
	hasRecipients := len(e.Recipients) > 0 || e.RecipientsFile != ""
	hasPass := e.Passphrase != nil
	switch e.Type {
	case "", EncryptionAES256GCM:
	case EncryptionNone:
		if hasRecipients || hasPass {
			ps.add(path, "type none takes no recipients or passphrase")
		}
		return
	default:
		ps.add(path+".type", "%q is not one of none, aes-256-gcm", e.Type)
	}
	switch {
	case hasRecipients && hasPass:
		ps.add(path, "set recipients (and/or recipientsFile) or passphrase, not both")
	case !hasRecipients && !hasPass:
		ps.add(path, "needs recipients, recipientsFile or passphrase")
	}
	for i, r := range e.Recipients {
		if _, err := age.ParseX25519Recipient(r); err != nil {
			ps.add(fmt.Sprintf("%s.recipients[%d]", path, i), "not an age X25519 recipient (age1...): %v", err)
		}
	}
	if hasPass {
		if err := e.Passphrase.Validate(); err != nil {
			ps.add(path+".passphrase", "%v", err)
		}
	}
}

func (p *Plan) validateSchedule(ps *problems) {
	if s := p.Spec.Schedule; s != nil {
		validateSchedule(ps, "spec.schedule", s)
	}
}

func validateSchedule(ps *problems, path string, s *Schedule) {
	if s.Cron == "" {
		ps.add(path+".cron", "required")
	} else if _, err := CronParser.Parse(s.Cron); err != nil {
		ps.add(path+".cron", "%v", err)
	}
	if s.Timezone != "" {
		if _, err := time.LoadLocation(s.Timezone); err != nil {
			ps.add(path+".timezone", "%q is not an IANA time zone", s.Timezone)
		}
	}
	if s.Jitter < 0 {
		ps.add(path+".jitter", "must be >= 0")
	}
	if s.StartingDeadline < 0 {
		ps.add(path+".startingDeadline", "must be > 0")
	}
	switch s.MissedRunPolicy {
	case "", MissedSkip, MissedRunOnce:
	default:
		ps.add(path+".missedRunPolicy", "%q is not one of skip, run-once", s.MissedRunPolicy)
	}
	switch s.ConcurrencyPolicy {
	case "", ConcurrencyForbid, ConcurrencyAllow, ConcurrencyReplace:
	default:
		ps.add(path+".concurrencyPolicy", "%q is not one of forbid, allow, replace", s.ConcurrencyPolicy)
	}
}

func (p *Plan) validateRetention(ps *problems) {
	if r := p.Spec.Retention; r != nil {
		validatePolicy(ps, "spec.retention", r)
	}
	for i, d := range p.Spec.Destinations {
		if d.Retention != nil {
			validatePolicy(ps, fmt.Sprintf("spec.destinations[%d].retention", i), d.Retention)
		}
	}
}

func validatePolicy(ps *problems, path string, r *Retention) {
	for _, c := range []struct {
		name string
		v    int
	}{
		{"keepLast", r.KeepLast}, {"keepHourly", r.KeepHourly}, {"keepDaily", r.KeepDaily},
		{"keepWeekly", r.KeepWeekly}, {"keepMonthly", r.KeepMonthly},
		{"keepQuarterly", r.KeepQuarterly}, {"keepYearly", r.KeepYearly},
	} {
		if c.v < retention.Unlimited {
			ps.add(path+"."+c.name, "must be >= 0 (or -1: keep every bucket)")
		}
	}
	for i, t := range r.KeepTags {
		for _, part := range strings.Split(t, ",") {
			if strings.TrimSpace(part) == "" {
				ps.add(fmt.Sprintf("%s.keepTags[%d]", path, i), "%q has an empty tag", t)
				break
			}
		}
	}
	// The retention package owns what "keeps nothing" means.
	if errors.Is(r.Policy.Validate(), retention.ErrEmptyPolicy) {
		ps.add(path, "keeps nothing, so it would delete every backup; set a keep rule or drop the block")
	}
}

func (p *Plan) validateAlert(ps *problems) {
	a := p.Spec.Alert
	if a == nil {
		return
	}
	switch {
	case a.ExpectEvery < 0:
		ps.add("spec.alert.expectEvery", "must be > 0")
	case a.ExpectEvery == 0 && p.Spec.Schedule == nil:
		ps.add("spec.alert.expectEvery", "required when the plan has no schedule")
	}
	if a.Grace < 0 {
		ps.add("spec.alert.grace", "must be > 0")
	}
}

func (p *Plan) validateRunTimeout(ps *problems) {
	switch t := p.Spec.RunTimeout; {
	case t < 0:
		ps.add("spec.runTimeout", "must be > 0")
	case t > MaxRunTimeout:
		ps.add("spec.runTimeout", "%s is longer than the maximum %s", t, MaxRunTimeout)
	}
}

func (p *Plan) validateRequire(ps *problems) {
	switch r := p.Spec.Require; r {
	case "", RequireAll, RequireAny:
	default:
		n, err := strconv.Atoi(r)
		switch {
		case err != nil:
			ps.add("spec.require", "%q is not all, any or a number of destinations", r)
		case n < 1 || n > len(p.Spec.Destinations):
			ps.add("spec.require", "%d is not between 1 and the %d destinations", n, len(p.Spec.Destinations))
		}
	}
}

// validateSideSchedule checks the schedule of a scrub or drill, which
// has no run lease to keep: a concurrencyPolicy there would be ignored.
func validateSideSchedule(ps *problems, path string, s *Schedule) {
	if s == nil {
		return
	}
	validateSchedule(ps, path, s)
	if s.ConcurrencyPolicy != "" {
		ps.add(path+".concurrencyPolicy", "not used here: every scrub and drill runs on its own")
	}
}

func (p *Plan) validateScrub(ps *problems) {
	s := p.Spec.Scrub
	if s == nil {
		return
	}
	validateSideSchedule(ps, "spec.scrub.schedule", s.Schedule)
	switch s.Mode {
	case "", ScrubCiphertext, ScrubFull:
	default:
		ps.add("spec.scrub.mode", "%q is not one of ciphertext, full", s.Mode)
	}
}

func (p *Plan) validateDrill(ps *problems) {
	d := p.Spec.Drill
	if d == nil {
		return
	}
	validateSideSchedule(ps, "spec.drill.schedule", d.Schedule)
	switch c := d.Check; {
	case c.SQL == "" && len(c.Command) == 0:
		ps.add("spec.drill.check", "required: sql (must return rows) or command (must exit 0)")
	case c.SQL != "" && len(c.Command) > 0:
		ps.add("spec.drill.check", "set sql or command, not both")
	case c.SQL != "":
		switch p.Spec.Source.Type {
		case "mariadb", "postgres":
		default:
			ps.add("spec.drill.check.sql", "the %s source has no SQL to run; use command", p.Spec.Source.Type)
		}
	case c.Command[0] == "":
		ps.add("spec.drill.check.command[0]", "required: the program to run")
	}
	if d.Check.Timeout < 0 {
		ps.add("spec.drill.check.timeout", "must be > 0")
	}
	if d.Timeout < 0 {
		ps.add("spec.drill.timeout", "must be > 0")
	}
	if d.Grace < 0 {
		ps.add("spec.drill.grace", "must be > 0")
	}
}

var (
	_ error = (*ValidationError)(nil)
	_ error = (*DecodeError)(nil)
)
