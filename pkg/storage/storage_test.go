package storage_test

import (
	"errors"
	"testing"

	"github.com/backstream/backstream/pkg/storage"
)

func TestCheckKey(t *testing.T) {
	tests := []struct {
		name string
		give string
		ok   bool
	}{
		{"simple", "a", true},
		{"nested", "plans/orders/01J.bin", true},
		{"dot in name", "a/.hidden/b..c", true},
		{"empty", "", false},
		{"absolute", "/a", false},
		{"trailing slash", "a/", false},
		{"double slash", "a//b", false},
		{"dotdot", "a/../b", false},
		{"dot", "./a", false},
		{"backslash", `a\b`, false},
		{"nul", "a\x00b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := storage.CheckKey(tt.give)
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, storage.ErrInvalidKey)) {
				t.Fatalf("CheckKey(%q) = %v, want ok=%v", tt.give, err, tt.ok)
			}
		})
	}
}

func TestCheckPrefix(t *testing.T) {
	tests := []struct {
		name string
		give string
		ok   bool
	}{
		{"empty", "", true},
		{"directory", "plans/", true},
		{"partial", "plans/ord", true},
		{"absolute", "/plans", false},
		{"dotdot", "../", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := storage.CheckPrefix(tt.give); (err == nil) != tt.ok {
				t.Fatalf("CheckPrefix(%q) = %v, want ok=%v", tt.give, err, tt.ok)
			}
		})
	}
}
