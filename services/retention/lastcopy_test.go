package retention

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/format"
	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/retention"
)

var (
	t0  = time.Date(2026, 11, 1, 2, 0, 0, 0, time.UTC)
	now = t0.Add(30 * 24 * time.Hour)
)

// day is backup n (1 = oldest), made n days after t0.
func day(n int, verified bool) retention.Backup {
	return retention.Backup{ID: fmt.Sprintf("b%02d", n), Time: t0.Add(time.Duration(n) * 24 * time.Hour), Verified: verified}
}

// days is backups from..to, all verified.
func days(from, to int) []retention.Backup {
	var out []retention.Backup
	for n := from; n <= to; n++ {
		out = append(out, day(n, true))
	}
	return out
}

func keepLast(n int) *retention.Policy { return &retention.Policy{KeepLast: n} }

func without(bs []retention.Backup, ids ...string) []retention.Backup {
	return slices.DeleteFunc(slices.Clone(bs), func(b retention.Backup) bool { return slices.Contains(ids, b.ID) })
}

func replaced(bs []retention.Backup, b retention.Backup) []retention.Backup {
	out := slices.Clone(bs)
	out[slices.IndexFunc(out, func(x retention.Backup) bool { return x.ID == b.ID })] = b
	return out
}

func TestKeepLastCopies(t *testing.T) {
	tests := []struct {
		name       string
		here       []retention.Backup // this destination's backups; its policy is keepLast 2
		others     []Other
		wantRemove []string
		wantLast   map[string]string // backup id -> a piece of its last-copy reason
	}{
		{
			name:       "another destination holds every backup verified: the policy alone decides",
			here:       days(1, 7),
			others:     []Other{{Destination: "remote", Policy: keepLast(5), Backups: days(1, 7)}},
			wantRemove: []string{"b01", "b02", "b03", "b04", "b05"},
		},
		{
			name:       "the other lacks a backup its policy keeps: kept here as the last copy",
			here:       days(1, 7),
			others:     []Other{{Destination: "remote", Policy: keepLast(5), Backups: without(days(1, 7), "b05")}},
			wantRemove: []string{"b01", "b02", "b03", "b04"},
			wantLast:   map[string]string{"b05": "destination remote has no copy and its policy keeps it (last #3)"},
		},
		{
			name:       "the other's copy failed verification: kept here",
			here:       days(1, 7),
			others:     []Other{{Destination: "remote", Policy: keepLast(5), Backups: replaced(days(1, 7), day(4, false))}},
			wantRemove: []string{"b01", "b02", "b03", "b05"},
			wantLast:   map[string]string{"b04": "destination remote has no verified copy and its policy keeps it"},
		},
		{
			name:       "the other lacks a backup its policy lets go too: removed everywhere",
			here:       days(1, 7),
			others:     []Other{{Destination: "remote", Policy: keepLast(5), Backups: without(days(1, 7), "b01")}},
			wantRemove: []string{"b01", "b02", "b03", "b04", "b05"},
		},
		{
			name:       "the other keeps everything and lacks a backup",
			here:       days(1, 7),
			others:     []Other{{Destination: "archive", Backups: without(days(1, 7), "b02")}},
			wantRemove: []string{"b01", "b03", "b04", "b05"},
			wantLast:   map[string]string{"b02": "destination archive has no copy and keeps every backup"},
		},
		{
			name:       "the other cannot be listed: unknown counts as no copy, everything stays",
			here:       days(1, 4),
			others:     []Other{{Destination: "remote", Policy: keepLast(5), Err: errors.New("dial tcp: connection refused")}},
			wantRemove: nil,
			wantLast: map[string]string{
				"b01": "destination remote could not be listed (dial tcp: connection refused)",
				"b02": "destination remote could not be listed",
			},
		},
		{
			name:       "the other cannot read its manifest of the backup",
			here:       days(1, 4),
			others:     []Other{{Destination: "remote", Policy: keepLast(1), Backups: without(days(1, 4), "b01"), Unreadable: map[string]bool{"b01": true}}},
			wantRemove: []string{"b02"},
			wantLast:   map[string]string{"b01": "destination remote cannot read its manifest of it"},
		},
		{
			name: "one of two others lacks it: kept; the other holding it does not help",
			here: days(1, 7),
			others: []Other{
				{Destination: "remote", Policy: keepLast(5), Backups: days(1, 7)},
				{Destination: "tape", Policy: keepLast(4), Backups: without(days(1, 7), "b04")},
			},
			wantRemove: []string{"b01", "b02", "b03", "b05"},
			wantLast:   map[string]string{"b04": "destination tape has no copy"},
		},
		{
			name:       "an unverified copy here is no verified copy: the policy removes it",
			here:       replaced(days(1, 7), day(3, false)),
			others:     []Other{{Destination: "remote", Policy: keepLast(5), Backups: without(days(1, 7), "b03")}},
			wantRemove: []string{"b01", "b02", "b03", "b04", "b05"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ds, err := retention.Apply(*keepLast(2), tt.here, now, time.UTC)
			if err != nil {
				t.Fatal(err)
			}
			n, err := KeepLastCopies(ds, tt.others, now, time.UTC)
			if err != nil {
				t.Fatal(err)
			}
			var removed []string
			last := map[string]string{}
			for _, d := range ds {
				if !d.Keep {
					removed = append(removed, d.Backup.ID)
				}
				if len(d.Reasons) > 0 && strings.HasPrefix(d.Reasons[0], LastCopyPrefix) {
					last[d.Backup.ID] = d.Reasons[0]
				}
			}
			slices.Sort(removed)
			if !slices.Equal(removed, tt.wantRemove) {
				t.Errorf("removed %v, want %v", removed, tt.wantRemove)
			}
			if n != len(last) {
				t.Errorf("returned %d, but %d reasons start with %q", n, len(last), LastCopyPrefix)
			}
			for id, want := range tt.wantLast {
				if !strings.Contains(last[id], want) {
					t.Errorf("%s: last-copy reason %q, want it to hold %q", id, last[id], want)
				}
			}
			if got, want := slices.Sorted(maps.Keys(last)), slices.Sorted(maps.Keys(tt.wantLast)); !slices.Equal(got, want) {
				t.Errorf("kept as last copies %v, want %v", got, want)
			}
		})
	}
}

// listing is a destination's listing of plan p with backups bs.
func listing(dest string, bs []retention.Backup) Listing {
	l := Listing{Destination: dest}
	for _, b := range bs {
		st := format.VerifyVerified
		if !b.Verified {
			st = format.VerifyFailed
		}
		l.Manifests = append(l.Manifests, format.Manifest{BackupID: b.ID, Plan: "orders", Created: b.Time, Verify: format.VerifyResult{Status: st}})
	}
	return l
}

func TestDecideUsesTheDestinationsPolicy(t *testing.T) {
	src := `apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: orders}
spec:
  source: {type: command, command: {argv: ["true"]}}
  retention: {keepLast: 4}
  destinations:
    - {name: local, type: filesystem, filesystem: {path: /l}, retention: {keepLast: 2}}
    - {name: remote, type: filesystem, filesystem: {path: /r}, retention: {keepLast: 5}}
    - {name: plain, type: filesystem, filesystem: {path: /p}}
`
	p, err := plan.Parse("orders.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(nil); err != nil {
		t.Fatal(err)
	}
	noPlanPolicy := *p
	noPlanPolicy.Spec.Retention = nil
	tests := []struct {
		name     string
		plan     *plan.Plan
		dest     string
		wantKept int // of 7 daily backups
		wantNone bool
	}{
		{"own short block", p, "local", 2, false},
		{"own long block", p, "remote", 5, false},
		{"the plan's block", p, "plain", 4, false},
		{"no block anywhere", &noPlanPolicy, "plain", 7, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := Decide(tt.plan, listing(tt.dest, days(1, 7)), "b07", now)
			if err != nil {
				t.Fatal(err)
			}
			if (o.Policy == nil) != tt.wantNone {
				t.Fatalf("policy %+v, want none: %v", o.Policy, tt.wantNone)
			}
			if tt.wantNone {
				return
			}
			kept := 0
			for _, d := range o.Decisions {
				if d.Keep {
					kept++
				}
			}
			if kept != tt.wantKept {
				t.Errorf("kept %d, want %d", kept, tt.wantKept)
			}
		})
	}
}
