package retention

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// SimulatedBackup is one entry of Simulate's input.
type SimulatedBackup struct {
	ID   string   `json:"id"`
	Time string   `json:"time"`
	Tags []string `json:"tags,omitempty"`
	// Verified defaults to true when absent.
	Verified *bool `json:"verified,omitempty"`
}

// SimulatedDecision is one entry of Simulate's output.
type SimulatedDecision struct {
	ID      string   `json:"id"`
	Time    string   `json:"time"`
	Action  string   `json:"action"` // "keep" or "remove"
	Reasons []string `json:"reasons"`
}

// ParsePolicy reads a plan's retention block as YAML or JSON. Unknown fields
// are refused; the policy is validated.
func ParsePolicy(data []byte) (Policy, error) {
	var p Policy
	if len(bytes.TrimSpace(data)) == 0 {
		return Policy{}, fmt.Errorf("parse policy: %w", ErrEmptyPolicy)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		if errors.Is(err, io.EOF) {
			return Policy{}, fmt.Errorf("parse policy: %w", ErrEmptyPolicy)
		}
		return Policy{}, fmt.Errorf("parse policy: %w", err)
	}
	if err := p.Validate(); err != nil {
		return Policy{}, fmt.Errorf("parse policy: %w", err)
	}
	return p, nil
}

// ParseBackups reads backups as JSON:
// [{"id": "...", "time": "RFC 3339", "tags": ["..."], "verified": true}].
// Errors name the entry by index and field.
func ParseBackups(data []byte) ([]Backup, error) {
	var raw []json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("parse backups: %w", err)
	}
	out := make([]Backup, 0, len(raw))
	seen := make(map[string]int, len(raw))
	for i, r := range raw {
		var sb SimulatedBackup
		dec := json.NewDecoder(bytes.NewReader(r))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&sb); err != nil {
			return nil, fmt.Errorf("parse backups: backups[%d]: %w", i, err)
		}
		if strings.TrimSpace(sb.ID) == "" {
			return nil, fmt.Errorf("parse backups: backups[%d].id: required", i)
		}
		if j, dup := seen[sb.ID]; dup {
			return nil, fmt.Errorf("parse backups: backups[%d].id: %q duplicates backups[%d]", i, sb.ID, j)
		}
		seen[sb.ID] = i
		if sb.Time == "" {
			return nil, fmt.Errorf("parse backups: backups[%d].time: required", i)
		}
		t, err := time.Parse(time.RFC3339Nano, sb.Time)
		if err != nil {
			return nil, fmt.Errorf("parse backups: backups[%d].time: %q is not RFC 3339: %w", i, sb.Time, err)
		}
		verified := sb.Verified == nil || *sb.Verified
		out = append(out, Backup{ID: sb.ID, Time: t, Tags: sb.Tags, Verified: verified})
	}
	return out, nil
}

// Simulate applies a policy (YAML or JSON, the plan's retention block) to
// backups (JSON, see ParseBackups) and returns the decisions as JSON, newest
// first: [{"id", "time" (RFC 3339 in loc), "action": "keep"|"remove",
// "reasons"}]. It is what `backstream retention simulate` prints.
func Simulate(policy []byte, backups []byte, now time.Time, loc *time.Location) ([]byte, error) {
	p, err := ParsePolicy(policy)
	if err != nil {
		return nil, fmt.Errorf("simulate: %w", err)
	}
	bs, err := ParseBackups(backups)
	if err != nil {
		return nil, fmt.Errorf("simulate: %w", err)
	}
	if loc == nil {
		loc = time.UTC
	}
	ds, err := Apply(p, bs, now, loc)
	if err != nil {
		return nil, fmt.Errorf("simulate: %w", err)
	}
	out := make([]SimulatedDecision, len(ds))
	for i, d := range ds {
		action := "remove"
		if d.Keep {
			action = "keep"
		}
		out[i] = SimulatedDecision{
			ID:      d.Backup.ID,
			Time:    d.Backup.Time.In(loc).Format(time.RFC3339),
			Action:  action,
			Reasons: d.Reasons,
		}
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("simulate: encode: %w", err)
	}
	return b, nil
}
