// Package secret resolves the secret references a plan holds. A plan never
// holds a secret value: it names an environment variable or a file, and the
// service that needs the value reads it where it runs. Values never enter KV,
// events, manifests or logs: every value Resolve returns is registered with
// the process's redactor (redact.go), and the places where text leaves the
// process (the bus, the run store, the log handler, hook and child output
// tails) pass it through Redact. This package must never log or return a
// value anywhere but from Resolve.
package secret

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Ref names where a secret value lives: exactly one of Env or File.
type Ref struct {
	Env  string `yaml:"env,omitempty" json:"env,omitempty"`
	File string `yaml:"file,omitempty" json:"file,omitempty"`
}

// IsZero reports whether r names nothing.
func (r Ref) IsZero() bool { return r.Env == "" && r.File == "" }

// Validate checks that r names exactly one place.
func (r Ref) Validate() error {
	switch {
	case r.Env != "" && r.File != "":
		return errors.New("set one of env, file, not both")
	case r.IsZero():
		return errors.New("set one of env, file")
	}
	return nil
}

// String names the reference, never the value.
func (r Ref) String() string {
	if r.Env != "" {
		return "env:" + r.Env
	}
	return "file:" + r.File
}

// Resolve reads the secret value and registers it with the redactor before
// returning it, so nothing the caller does with it can print it unredacted.
// A trailing newline of a file is dropped.
func (r Ref) Resolve() (string, error) {
	if err := r.Validate(); err != nil {
		return "", fmt.Errorf("secret %s: %w", r, err)
	}
	var v string
	if r.Env != "" {
		var ok bool
		if v, ok = os.LookupEnv(r.Env); !ok {
			return "", fmt.Errorf("secret %s: environment variable not set", r)
		}
	} else {
		b, err := os.ReadFile(r.File)
		if err != nil {
			return "", fmt.Errorf("secret %s: %w", r, err)
		}
		v = strings.TrimRight(string(b), "\r\n")
	}
	Register(v)
	return v, nil
}
