package source_test

import (
	"testing"

	"github.com/backstream/backstream/pkg/source"
)

func TestPathOverlaps(t *testing.T) {
	tests := []struct {
		name string
		a, b string
		want bool
	}{
		{"same", "/srv/data", "/srv/data/", true},
		{"inside", "/srv/data/x", "/srv/data", true},
		{"holds", "/srv", "/srv/data", true},
		{"sibling with a common prefix", "/srv/data2", "/srv/data", false},
		{"apart", "/tmp/bsdrill_x", "/srv/data", false},
		{"dot-dot name inside", "/srv/data/..x", "/srv/data", true},
		{"empty", "", "/srv/data", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := source.PathOverlaps(tt.a, tt.b); got != tt.want {
				t.Errorf("PathOverlaps(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
		})
	}
}
