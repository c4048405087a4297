package retention

import (
	"errors"
	"testing"

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/retention"
)

func TestLifecycleUsesTheDestinationsPolicy(t *testing.T) {
	p, err := plan.Parse("orders.yaml", []byte(`apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: orders}
spec:
  source: {type: command, command: {argv: ["true"]}}
  destinations:
    - {name: local, type: filesystem, filesystem: {path: /l}, retention: {keepDaily: 3}}
    - {name: remote, type: filesystem, filesystem: {path: /r}, retention: {keepDaily: 30}}
    - {name: plain, type: filesystem, filesystem: {path: /p}}
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dest      string
		wantDaily int
		wantErr   error
	}{
		{dest: "local", wantDaily: 4},
		{dest: "remote", wantDaily: 31},
		{dest: "plain", wantErr: ErrNoPolicy},
	}
	for _, tt := range tests {
		t.Run(tt.dest, func(t *testing.T) {
			l, err := Lifecycle(p, tt.dest)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			daily := 0
			for _, r := range l.Rules {
				if r.Tags[retention.CycleTag] == "daily" {
					daily = r.ExpireAfterDays
				}
			}
			if daily != tt.wantDaily {
				t.Errorf("daily rule expires after %d days, want %d (%+v)", daily, tt.wantDaily, l.Rules)
			}
		})
	}
}
