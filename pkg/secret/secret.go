// Package secret resolves the secret references a plan holds. A plan never
// holds a secret value: it names an environment variable or a file, and the
// service that needs the value reads it where it runs. Values never enter KV,
// events, manifests or logs.
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

// Resolve reads the secret value. A trailing newline of a file is dropped.
func (r Ref) Resolve() (string, error) {
	if err := r.Validate(); err != nil {
		return "", fmt.Errorf("secret %s: %w", r, err)
	}
	if r.Env != "" {
		v, ok := os.LookupEnv(r.Env)
		if !ok {
			return "", fmt.Errorf("secret %s: environment variable not set", r)
		}
		return v, nil
	}
	b, err := os.ReadFile(r.File)
	if err != nil {
		return "", fmt.Errorf("secret %s: %w", r, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}
