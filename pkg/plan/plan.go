package plan

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/retention"

	"github.com/backstream/backstream/pkg/secret"
	"gopkg.in/yaml.v3"
)

// APIVersion and Kind are the only values a plan's header may hold.
const (
	APIVersion = "backstream.io/v1alpha1"
	Kind       = "Plan"
)

// Plan is one backup plan. A decoded plan keeps zero values where the YAML
// was silent; Defaults fills them, Validate checks them (either order works:
// Validate treats a zero value as "use the default").
type Plan struct {
	APIVersion string   `yaml:"apiVersion" json:"apiVersion"`
	Kind       string   `yaml:"kind" json:"kind"`
	Metadata   Metadata `yaml:"metadata" json:"metadata"`
	Spec       Spec     `yaml:"spec" json:"spec"`

	// File is where the plan was read from, for messages; it is not part of
	// the plan and is not stored.
	File string `yaml:"-" json:"-"`
}

// Name returns the plan's name.
func (p *Plan) Name() string { return p.Metadata.Name }

// Metadata names the plan.
type Metadata struct {
	Name   string            `yaml:"name" json:"name"`
	Labels map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
}

// Spec is what the plan does.
type Spec struct {
	Source       Source        `yaml:"source" json:"source"`
	Hooks        []Hook        `yaml:"hooks,omitempty" json:"hooks,omitempty"`
	Workflows    []Workflow    `yaml:"workflows,omitempty" json:"workflows,omitempty"`
	Filters      Filters       `yaml:"filters,omitempty" json:"filters"`
	ChunkSize    Size          `yaml:"chunkSize,omitempty" json:"chunkSize,omitempty"`
	Destinations []Destination `yaml:"destinations" json:"destinations"`
	Schedule     *Schedule     `yaml:"schedule,omitempty" json:"schedule,omitempty"`
	Retention    *Retention    `yaml:"retention,omitempty" json:"retention,omitempty"`
	Verify       Verify        `yaml:"verify,omitempty" json:"verify"`
	Alert        *Alert        `yaml:"alert,omitempty" json:"alert,omitempty"`
	// RunTimeout is how long a run of the plan (backup or restore) may take
	// from its start to its end before it fails; unset means
	// DefaultRunTimeout (see EffectiveRunTimeout).
	RunTimeout Duration `yaml:"runTimeout,omitempty" json:"runTimeout,omitempty"`
	// Require is how many destinations must hold a verified copy for a
	// run to succeed: "all" (the default), "any", or a number. A run that
	// meets it while missing a copy succeeds degraded (RequiredCopies).
	Require string `yaml:"require,omitempty" json:"require,omitempty"`
	// Scrub re-verifies the stored backups on a schedule (docs/scrub.md).
	Scrub *Scrub `yaml:"scrub,omitempty" json:"scrub,omitempty"`
	// Drill rehearses a restore on a schedule (docs/drills.md).
	Drill *Drill `yaml:"drill,omitempty" json:"drill,omitempty"`
}

// Scrub modes: the event contract's (scrub.requested may override them).
const (
	ScrubCiphertext = events.ScrubCiphertext
	ScrubFull       = events.ScrubFull
)

// Scrub configures the scrubbing of a plan's stored backups: every copy in
// every destination read back and checked again, and a damaged or missing
// copy repaired from a verified one.
type Scrub struct {
	// Schedule says when scrubs run; without one a scrub runs only when
	// asked (backstream scrub, the API). Its concurrencyPolicy is not
	// used: scrubs only read, and a repair writes the same bytes twice.
	Schedule *Schedule `yaml:"schedule,omitempty" json:"schedule,omitempty"`
	// Mode is ciphertext (size, stored SHA-256, every frame's CRC; needs
	// no key) or full (also every frame opened and the plaintext SHA-256;
	// needs the key where the verify service runs). Default ciphertext.
	Mode string `yaml:"mode,omitempty" json:"mode,omitempty"`
	// Repair replaces a damaged or missing copy with a verified copy from
	// another destination; default true.
	Repair *bool `yaml:"repair,omitempty" json:"repair,omitempty"`
}

// EffectiveMode is the scrub's mode, ciphertext when unset.
func (s *Scrub) EffectiveMode() string {
	if s == nil || s.Mode == "" {
		return ScrubCiphertext
	}
	return s.Mode
}

// Repairs reports whether the scrub repairs what it finds damaged.
func (s *Scrub) Repairs() bool { return s == nil || s.Repair == nil || *s.Repair }

// Drill configures fire drills: a backup restored into a scratch target
// made for the drill (never the live source), a check run on it, the
// target removed.
type Drill struct {
	// Schedule says when drills run; without one a drill runs only when
	// asked. Its concurrencyPolicy is not used: every drill has a scratch
	// target of its own.
	Schedule *Schedule `yaml:"schedule,omitempty" json:"schedule,omitempty"`
	// Check is what must hold of the restored data.
	Check DrillCheck `yaml:"check" json:"check"`
	// Timeout bounds the whole drill (restore, check, cleanup); default
	// DefaultDrillTimeout.
	Timeout Duration `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	// Grace is how long after a drill slot a success may still arrive
	// before the watchdog reports the drill missed; default DefaultGrace.
	Grace Duration `yaml:"grace,omitempty" json:"grace,omitempty"`
}

// DefaultDrillTimeout bounds a drill when the plan sets no timeout.
const DefaultDrillTimeout = Duration(time.Hour)

// EffectiveTimeout is the drill's timeout, DefaultDrillTimeout when unset.
func (d *Drill) EffectiveTimeout() time.Duration {
	if d.Timeout > 0 {
		return d.Timeout.Std()
	}
	return DefaultDrillTimeout.Std()
}

// DrillCheck is a drill's check: SQL run on the scratch database that must
// return at least one row, or a command (run with BACKSTREAM_DRILL_TARGET
// naming the scratch target) that must exit 0. Exactly one is set.
type DrillCheck struct {
	SQL     string  `yaml:"sql,omitempty" json:"sql,omitempty"`
	Command Command `yaml:"command,omitempty" json:"command,omitempty"`
	// Timeout bounds the check alone; default one minute (DefaultHookTimeout).
	Timeout Timeout `yaml:"timeout,omitempty" json:"timeout,omitempty"`
}

// Values of spec.require besides a number.
const (
	RequireAll = "all"
	RequireAny = "any"
)

// RequiredCopies is how many destinations must hold a verified copy for a
// run to succeed (spec.require): every destination unless the plan says
// any (1) or a number.
func (s *Spec) RequiredCopies() int {
	switch s.Require {
	case "", RequireAll:
		return len(s.Destinations)
	case RequireAny:
		return 1
	}
	n, err := strconv.Atoi(s.Require)
	if err != nil || n < 1 || n > len(s.Destinations) {
		return len(s.Destinations) // Validate refuses it
	}
	return n
}

// DefaultRunTimeout is a run's deadline when the plan sets no runTimeout.
// Six hours moves about 2.5 TB at the pipeline's measured ~120 MB/s and
// leaves room for slow sources and hooks, so a healthy run of an ordinary
// database does not meet it; a run still going after that is almost surely
// stuck (a dump that hangs, an event lost), and under the schedule's
// default concurrencyPolicy forbid it would block every later slot until
// it fails. Larger or slower sources set runTimeout.
const DefaultRunTimeout = Duration(6 * time.Hour)

// MaxRunTimeout bounds runTimeout: a week is longer than any one dump
// should take, and a larger value is more likely a typo (6000h for 600h)
// that would keep a stuck run, and its forbid-blocked schedule, alive.
const MaxRunTimeout = Duration(7 * Day)

// EffectiveRunTimeout is the run deadline's distance from the run's start:
// runTimeout, else DefaultRunTimeout. Defaults leaves runTimeout unset, so
// the stored plan does not change (a new revision of every plan, and a
// field older readers refuse) unless the plan sets it.
func (s *Spec) EffectiveRunTimeout() time.Duration {
	if s.RunTimeout > 0 {
		return s.RunTimeout.Std()
	}
	return DefaultRunTimeout.Std()
}

// RetentionFor is the retention policy of destination dest: the
// destination's own retention block when it has one, else the plan's
// spec.retention; nil when neither is set (nothing is removed there). A
// destination's block replaces the plan's as a whole: a field it leaves
// unset is off for it, not inherited, so what a destination keeps can be
// read from one block.
func (s *Spec) RetentionFor(dest string) *Retention {
	for i := range s.Destinations {
		if d := &s.Destinations[i]; d.Name == dest && d.Retention != nil {
			return d.Retention
		}
	}
	return s.Retention
}

// HookType says how a hook's ops run.
type HookType string

// Hook types.
const (
	HookExec       HookType = "exec"       // a local process of the hook stage
	HookSQL        HookType = "sql"        // a statement on the source's database
	HookHTTP       HookType = "http"       // an HTTP request
	HookKubernetes HookType = "kubernetes" // a command exec'd in selected pods
)

// OnError says what a failing op does to the run.
type OnError string

// OnError values.
const (
	OnErrorFail     OnError = "fail"     // the run fails and compensation starts
	OnErrorContinue OnError = "continue" // the failure is reported and the run goes on
)

// DefaultHookTimeout is the timeout of a hook's ops when none is set.
const DefaultHookTimeout = Timeout(time.Minute)

// DefaultRetries is how many times an inverse op is tried again in
// compensation when its op sets no retries.
const DefaultRetries = 3

// MaxRetries bounds an op's retries: with backoff between tries, more
// would keep one compensation busy for hours; the owed-inverse loop goes
// on retrying after them anyway.
const MaxRetries = 20

// DefaultCompensationDeadline is how long an owed inverse op is retried
// automatically when its hook sets no compensationDeadline.
const DefaultCompensationDeadline = Duration(time.Hour)

// Hook is a named group of ops of one type, in the shape of an IBM Fusion
// Recipe hook.
type Hook struct {
	Name       string          `yaml:"name" json:"name"`
	Type       HookType        `yaml:"type" json:"type"`
	Timeout    Timeout         `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	OnError    OnError         `yaml:"onError,omitempty" json:"onError,omitempty"`
	Exec       *ExecHook       `yaml:"exec,omitempty" json:"exec,omitempty"`
	Kubernetes *KubernetesHook `yaml:"kubernetes,omitempty" json:"kubernetes,omitempty"`
	HTTP       *HTTPHook       `yaml:"http,omitempty" json:"http,omitempty"`
	// CompensationDeadline is how long after its first failure in
	// compensation an inverse op of this hook that is still owed is retried
	// automatically (default DefaultCompensationDeadline). Past it the
	// inverse stays owed, and reported, until an operator acts.
	CompensationDeadline Duration `yaml:"compensationDeadline,omitempty" json:"compensationDeadline,omitempty"`
	Ops                  []Op     `yaml:"ops" json:"ops"`
}

// ExecHook configures exec hooks.
type ExecHook struct {
	// Env sets environment variables of the process from secret references.
	Env     map[string]secret.Ref `yaml:"env,omitempty" json:"env,omitempty"`
	Workdir string                `yaml:"workdir,omitempty" json:"workdir,omitempty"`
}

// KubernetesHook selects the pods a kubernetes hook execs into. The fields
// after Container are IBM Fusion's pod selection, accepted as Fusion writes
// them.
type KubernetesHook struct {
	Namespace     string `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	LabelSelector string `yaml:"labelSelector,omitempty" json:"labelSelector,omitempty"`
	Container     string `yaml:"container,omitempty" json:"container,omitempty"`
	// NameSelector is a regular expression pods' names must match.
	NameSelector string `yaml:"nameSelector,omitempty" json:"nameSelector,omitempty"`
	// SelectResource is what the selectors select; only "pod" is supported.
	SelectResource string `yaml:"selectResource,omitempty" json:"selectResource,omitempty"`
	// SinglePodOnly runs each op in one selected pod instead of all of them.
	SinglePodOnly bool `yaml:"singlePodOnly,omitempty" json:"singlePodOnly,omitempty"`
}

// HTTPHook configures http hooks.
type HTTPHook struct {
	BaseURL string            `yaml:"baseURL,omitempty" json:"baseURL,omitempty"`
	Headers map[string]string `yaml:"headers,omitempty" json:"headers,omitempty"`
	// SecretHeaders are headers whose values are secrets (Authorization),
	// named by reference and resolved by the hook service for each request.
	SecretHeaders map[string]secret.Ref `yaml:"secretHeaders,omitempty" json:"secretHeaders,omitempty"`
}

// Op is one operation of a hook. Exactly one of Command (exec, kubernetes),
// SQL (sql) or HTTP (http) is set, as the hook's type needs.
type Op struct {
	Name    string       `yaml:"name" json:"name"`
	Command Command      `yaml:"command,omitempty" json:"command,omitempty"`
	SQL     string       `yaml:"sql,omitempty" json:"sql,omitempty"`
	HTTP    *HTTPRequest `yaml:"http,omitempty" json:"http,omitempty"`
	// Container overrides the kubernetes hook's container (Fusion op field).
	Container string  `yaml:"container,omitempty" json:"container,omitempty"`
	Timeout   Timeout `yaml:"timeout,omitempty" json:"timeout,omitempty"`
	OnError   OnError `yaml:"onError,omitempty" json:"onError,omitempty"`
	// InverseOp names the op of the same hook that undoes this one; it runs
	// in compensation when the run fails after this op started, unless it
	// already completed successfully after it.
	InverseOp string `yaml:"inverseOp,omitempty" json:"inverseOp,omitempty"`
	// Retries is how many more times this op is tried, with backoff, when
	// it fails as an inverse op in compensation (nil: DefaultRetries). A
	// forward run of the op is never retried: its failure decides the run.
	Retries *int `yaml:"retries,omitempty" json:"retries,omitempty"`
}

// HTTPRequest is an http op. URL is relative to the hook's baseURL when set.
type HTTPRequest struct {
	Method  string            `yaml:"method,omitempty" json:"method,omitempty"`
	URL     string            `yaml:"url" json:"url"`
	Headers map[string]string `yaml:"headers,omitempty" json:"headers,omitempty"`
	Body    string            `yaml:"body,omitempty" json:"body,omitempty"`
	// ExpectStatus is the status that means success; 0 means any 2xx.
	ExpectStatus int `yaml:"expectStatus,omitempty" json:"expectStatus,omitempty"`
}

// hookFields has Hook's fields without its methods, so decoding it does not
// recurse into Hook.UnmarshalYAML.
type hookFields Hook

// hookYAML is a hook as written, with IBM Fusion's pod selection fields at
// hook level.
type hookYAML struct {
	H              hookFields `yaml:",inline"`
	Namespace      string     `yaml:"namespace"`
	LabelSelector  string     `yaml:"labelSelector"`
	NameSelector   string     `yaml:"nameSelector"`
	SelectResource string     `yaml:"selectResource"`
	SinglePodOnly  bool       `yaml:"singlePodOnly"`
}

// UnmarshalYAML decodes a hook strictly (it uses the decoder's own unmarshal
// so unknown fields stay errors) and maps IBM Fusion's pod selection fields
// into the kubernetes block. A Fusion "exec" hook runs in pods, which is a
// backstream kubernetes hook: an exec hook that selects pods (or whose ops
// name a container) becomes type kubernetes.
func (h *Hook) UnmarshalYAML(unmarshal func(any) error) error {
	var y hookYAML
	if err := unmarshal(&y); err != nil {
		return err
	}
	*h = Hook(y.H)
	fusion := y.Namespace != "" || y.LabelSelector != "" || y.NameSelector != "" ||
		y.SelectResource != "" || y.SinglePodOnly
	opContainer := false
	for _, op := range h.Ops {
		opContainer = opContainer || op.Container != ""
	}
	if (fusion || opContainer) && h.Type == HookExec {
		h.Type = HookKubernetes
	}
	if !fusion {
		return nil
	}
	if h.Kubernetes == nil {
		h.Kubernetes = &KubernetesHook{}
	}
	k := h.Kubernetes
	var errs []string
	merge := func(field string, dst *string, v string) {
		switch {
		case v == "":
		case *dst != "" && *dst != v:
			errs = append(errs, fmt.Sprintf("hook %q: %s set both at hook level and in kubernetes", h.Name, field))
		default:
			*dst = v
		}
	}
	merge("namespace", &k.Namespace, y.Namespace)
	merge("labelSelector", &k.LabelSelector, y.LabelSelector)
	merge("nameSelector", &k.NameSelector, y.NameSelector)
	merge("selectResource", &k.SelectResource, y.SelectResource)
	k.SinglePodOnly = k.SinglePodOnly || y.SinglePodOnly
	if len(errs) > 0 {
		return &yaml.TypeError{Errors: errs}
	}
	return nil
}

// Workflow is a named sequence of steps: "backup" or "restore".
type Workflow struct {
	Name     string `yaml:"name" json:"name"`
	Sequence []Step `yaml:"sequence" json:"sequence"`
}

// Workflow names.
const (
	WorkflowBackup  = "backup"
	WorkflowRestore = "restore"
)

type workflowFields Workflow

// UnmarshalYAML decodes a workflow and turns Fusion `group:` steps into the
// workflow's data step: snapshot in backup, restore in restore.
func (w *Workflow) UnmarshalYAML(unmarshal func(any) error) error {
	var f workflowFields
	if err := unmarshal(&f); err != nil {
		return err
	}
	*w = Workflow(f)
	for i := range w.Sequence {
		if w.Sequence[i].Kind != stepGroup {
			continue
		}
		w.Sequence[i].Kind = StepSnapshot
		if w.Name == WorkflowRestore {
			w.Sequence[i].Kind = StepRestore
		}
	}
	return nil
}

// Filters is the chain every chunk passes: compression, then encryption.
type Filters struct {
	Compression string `yaml:"compression,omitempty" json:"compression,omitempty"`
	Level       string `yaml:"level,omitempty" json:"level,omitempty"`
	// FrameSize is the plaintext one frame holds: the filter compresses and
	// seals consecutive chunks together up to it, so compression sees more
	// than one transport chunk at a time (docs/bench.md, "Frame size"). A
	// multiple of the chunk size, at most MaxFrameSize; unset means
	// Spec.EffectiveFrameSize.
	FrameSize  Size        `yaml:"frameSize,omitempty" json:"frameSize,omitempty"`
	Encryption *Encryption `yaml:"encryption,omitempty" json:"encryption,omitempty"`
}

// Compression and level values.
const (
	CompressionNone   = "none"
	CompressionSnappy = "snappy"
	CompressionZstd   = "zstd"

	LevelFastest = "fastest"
	LevelDefault = "default"
	LevelBetter  = "better"
)

// Encryption types.
const (
	EncryptionNone      = "none"
	EncryptionAES256GCM = "aes-256-gcm"
)

// Encryption says how the per-backup data key is wrapped: for age X25519
// recipients (Recipients and/or RecipientsFile) or by a passphrase, not both.
type Encryption struct {
	Type           string      `yaml:"type,omitempty" json:"type,omitempty"`
	Recipients     []string    `yaml:"recipients,omitempty" json:"recipients,omitempty"`
	RecipientsFile string      `yaml:"recipientsFile,omitempty" json:"recipientsFile,omitempty"`
	Passphrase     *secret.Ref `yaml:"passphrase,omitempty" json:"passphrase,omitempty"`
}

// Encrypted reports whether the filters encrypt.
func (f Filters) Encrypted() bool {
	return f.Encryption != nil && f.Encryption.Type != EncryptionNone
}

// Chunk size bounds and default.
const (
	DefaultChunkSize = 256 * KiB
	MinChunkSize     = 64 * KiB
	MaxChunkSize     = 4 * MiB
)

// Frame size bounds and default. The default is what the measurements in
// docs/bench.md ("Frame size") chose; the largest is what the filter may
// hold per run (a frame's plaintext and its sealed form) and what a
// reader allocates per frame.
const (
	DefaultFrameSize = 8 * MiB
	MaxFrameSize     = 16 * MiB
)

// EffectiveFrameSize is the frame size the filter seals with: the plan's
// filters.frameSize, or else the largest multiple of the chunk size up to
// DefaultFrameSize (the chunk size itself when it is larger). Unset stays
// unset in the stored plan, so a change of the default reaches every plan.
func (s Spec) EffectiveFrameSize() Size {
	chunk := s.ChunkSize
	if chunk <= 0 {
		chunk = DefaultChunkSize
	}
	if s.Filters.FrameSize > 0 {
		return s.Filters.FrameSize
	}
	return max(chunk, DefaultFrameSize/chunk*chunk)
}

// Schedule says when backups are triggered.
type Schedule struct {
	// Cron is a 5-field expression or a descriptor (@daily, @every 6h, ...).
	Cron     string `yaml:"cron" json:"cron"`
	Timezone string `yaml:"timezone,omitempty" json:"timezone,omitempty"`
	// Jitter is the bound of a deterministic per-plan delay of every slot.
	Jitter Duration `yaml:"jitter,omitempty" json:"jitter,omitempty"`
	// StartingDeadline is how late a slot may still start.
	StartingDeadline  Duration `yaml:"startingDeadline,omitempty" json:"startingDeadline,omitempty"`
	MissedRunPolicy   string   `yaml:"missedRunPolicy,omitempty" json:"missedRunPolicy,omitempty"`
	ConcurrencyPolicy string   `yaml:"concurrencyPolicy,omitempty" json:"concurrencyPolicy,omitempty"`
	Paused            bool     `yaml:"paused,omitempty" json:"paused,omitempty"`
}

// Schedule policy values.
const (
	MissedSkip    = "skip"
	MissedRunOnce = "run-once"

	ConcurrencyForbid  = "forbid"
	ConcurrencyAllow   = "allow"
	ConcurrencyReplace = "replace"
)

// Retention is the plan's retention block: a retention.Policy (restic
// forget semantics, owned by pkg/retention), decoded strictly and with the
// line of a malformed keepWithin* duration.
type Retention struct {
	retention.Policy
}

// UnmarshalYAML checks the keepWithin* durations with their lines, then
// decodes the policy strictly.
func (r *Retention) UnmarshalYAML(unmarshal func(any) error) error {
	var c nodeCapture
	if err := unmarshal(&c); err != nil {
		return err
	}
	n := c.node
	var errs []string
	if n != nil && n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if !strings.HasPrefix(k.Value, "keepWithin") {
				continue
			}
			if v.Kind != yaml.ScalarNode {
				errs = append(errs, fmt.Sprintf("line %d: %s: want a duration such as 7d or 1y6m", v.Line, k.Value))
			} else if _, err := retention.ParseDuration(v.Value); err != nil {
				errs = append(errs, fmt.Sprintf("line %d: %s: %v", v.Line, k.Value, err))
			}
		}
	}
	if len(errs) > 0 {
		return &yaml.TypeError{Errors: errs}
	}
	return unmarshal(&r.Policy)
}

// nodeCapture hands the node being decoded to an obsolete-style
// UnmarshalYAML, whose unmarshal callback (the one that keeps the decoder's
// KnownFields) cannot fill a yaml.Node directly.
type nodeCapture struct{ node *yaml.Node }

func (c *nodeCapture) UnmarshalYAML(n *yaml.Node) error {
	c.node = n
	return nil
}

// Verify configures the verify stage.
type Verify struct {
	// Enabled defaults to true; nil means the default.
	Enabled *bool `yaml:"enabled,omitempty" json:"enabled,omitempty"`
}

// IsEnabled reports whether backups are verified.
func (v Verify) IsEnabled() bool { return v.Enabled == nil || *v.Enabled }

// Alert configures the missing-success watchdog.
type Alert struct {
	// ExpectEvery is the longest time between successes before backup.missed.
	ExpectEvery Duration `yaml:"expectEvery,omitempty" json:"expectEvery,omitempty"`
	// Grace is added to ExpectEvery (or to the schedule's next slot).
	Grace Duration `yaml:"grace,omitempty" json:"grace,omitempty"`
}

// typeNames turns yaml.v3's Go type names into the plan's words.
var typeNames = strings.NewReplacer(
	"plan.Plan", "the plan",
	"plan.Metadata", "metadata",
	"plan.Spec", "spec",
	"plan.hookYAML", "a hook",
	"plan.Op", "a hook op",
	"plan.ExecHook", "an exec block",
	"plan.KubernetesHook", "a kubernetes block",
	"plan.HTTPHook", "a hook's http block",
	"plan.HTTPRequest", "an op's http block",
	"plan.workflowFields", "a workflow",
	"plan.Filters", "filters",
	"plan.Encryption", "encryption",
	"plan.Schedule", "schedule",
	"retention.Policy", "retention",
	"plan.Verify", "verify",
	"plan.Alert", "alert",
	"plan.Scrub", "scrub",
	"plan.Drill", "drill",
	"plan.DrillCheck", "a drill's check",
	"secret.Ref", "a secret reference",
)

// LoadRecipients returns Recipients followed by the recipients in
// RecipientsFile (age's recipients file format: one per line; blank lines
// and # comments skipped), each checked to be an age X25519 recipient.
// Errors name the field, or the file and line. It reads a file, so the
// filter stage calls it where it runs, on every backup (a changed file
// takes effect at the next one), and Validate does not.
func (e *Encryption) LoadRecipients() ([]string, error) {
	out := make([]string, 0, len(e.Recipients))
	for i, r := range e.Recipients {
		x, err := age.ParseX25519Recipient(r)
		if err != nil {
			return nil, fmt.Errorf("spec.filters.encryption.recipients[%d]: %w", i, err)
		}
		out = append(out, x.String())
	}
	if e.RecipientsFile == "" {
		return out, nil
	}
	f, err := os.Open(e.RecipientsFile)
	if err != nil {
		return nil, fmt.Errorf("spec.filters.encryption.recipientsFile: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	found := false
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		x, err := age.ParseX25519Recipient(line)
		if err != nil {
			return nil, fmt.Errorf("spec.filters.encryption.recipientsFile: %s line %d: not an age X25519 recipient (age1...): %w", e.RecipientsFile, n, err)
		}
		out, found = append(out, x.String()), true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("spec.filters.encryption.recipientsFile: %s: %w", e.RecipientsFile, err)
	}
	if !found {
		return nil, fmt.Errorf("spec.filters.encryption.recipientsFile: %s holds no recipient", e.RecipientsFile)
	}
	return out, nil
}
