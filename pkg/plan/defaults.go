package plan

import "time"

// Default values Defaults fills in.
const (
	DefaultTimezone         = "UTC"
	DefaultStartingDeadline = Duration(time.Hour)
	DefaultGrace            = Duration(time.Hour)
)

// Defaults fills every documented default the plan leaves unset. It is
// idempotent. Op timeouts and onError stay unset: they inherit from their
// hook at run time (Hook.EffectiveTimeout, Hook.EffectiveOnError); so do op
// retries (Hook.EffectiveRetries). spec.runTimeout stays unset too
// (Spec.EffectiveRunTimeout): filling it would change every stored plan.
func (p *Plan) Defaults() {
	s := &p.Spec
	for i := range s.Hooks {
		h := &s.Hooks[i]
		if h.Timeout == 0 {
			h.Timeout = DefaultHookTimeout
		}
		if h.OnError == "" {
			h.OnError = OnErrorFail
		}
		if h.CompensationDeadline == 0 {
			h.CompensationDeadline = DefaultCompensationDeadline
		}
	}
	for _, name := range []string{WorkflowBackup, WorkflowRestore} {
		if !p.hasWorkflow(name) {
			s.Workflows = append(s.Workflows, Workflow{Name: name, Sequence: p.Sequence(name)})
		}
	}
	if s.Filters.Compression == "" {
		s.Filters.Compression = CompressionZstd
	}
	if s.Filters.Compression == CompressionZstd && s.Filters.Level == "" {
		s.Filters.Level = LevelFastest
	}
	if e := s.Filters.Encryption; e != nil && e.Type == "" {
		e.Type = EncryptionAES256GCM
	}
	if s.ChunkSize == 0 {
		s.ChunkSize = DefaultChunkSize
	}
	if s.Verify.Enabled == nil {
		on := true
		s.Verify.Enabled = &on
	}
	if sc := s.Schedule; sc != nil {
		sc.defaults()
		if sc.ConcurrencyPolicy == "" {
			sc.ConcurrencyPolicy = ConcurrencyForbid
		}
	}
	if sc := s.Scrub; sc != nil {
		if sc.Schedule != nil {
			sc.Schedule.defaults()
		}
		if sc.Mode == "" {
			sc.Mode = ScrubCiphertext
		}
	}
	if d := s.Drill; d != nil {
		if d.Schedule != nil {
			d.Schedule.defaults()
		}
		if d.Grace == 0 {
			d.Grace = DefaultGrace
		}
	}
	if a := s.Alert; a != nil && a.Grace == 0 {
		a.Grace = DefaultGrace
	}
}

// defaults fills a schedule's time zone, starting deadline and missed-run
// policy; the concurrency policy is the backup schedule's alone.
func (sc *Schedule) defaults() {
	if sc.Timezone == "" {
		sc.Timezone = DefaultTimezone
	}
	if sc.StartingDeadline == 0 {
		sc.StartingDeadline = DefaultStartingDeadline
	}
	if sc.MissedRunPolicy == "" {
		sc.MissedRunPolicy = MissedRunOnce
	}
}

func (p *Plan) hasWorkflow(name string) bool {
	for _, w := range p.Spec.Workflows {
		if w.Name == name {
			return true
		}
	}
	return false
}
