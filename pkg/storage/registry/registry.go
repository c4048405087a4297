// Package registry assembles the storage backends by name. The set is built
// explicitly in Default, in one place; nothing registers itself from init.
package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/filesystem"
	"github.com/backstream/backstream/pkg/storage/s3"
)

// ErrUnknownBackend means no backend is registered under a name.
var ErrUnknownBackend = errors.New("unknown storage backend")

// Decode fills a backend's Config from a plan's plugin block. The plan
// package passes its strict YAML decoder, so an unknown field is an error.
type Decode = func(v any) error

// Backend is one storage implementation, by name.
type Backend struct {
	// Name is what a plan's destination names, e.g. "s3".
	Name string
	// Check decodes and validates a config without touching the network or
	// the disk; it is what `plan apply` runs.
	Check func(decode Decode) error
	// New decodes, validates and opens the storage.
	New func(ctx context.Context, decode Decode) (storage.Storage, error)
}

// Registry maps names to Backends. It is read-only after construction and
// safe for concurrent use.
type Registry struct {
	byName map[string]Backend
}

// New builds a registry of backends. An empty or duplicate name, or a
// Backend without Check or New, is a programming error and panics.
func New(backends ...Backend) *Registry {
	r := &Registry{byName: make(map[string]Backend, len(backends))}
	for _, b := range backends {
		switch {
		case b.Name == "":
			panic("storage registry: backend without a name")
		case b.Check == nil || b.New == nil:
			panic(fmt.Sprintf("storage registry: backend %q without Check or New", b.Name))
		}
		if _, dup := r.byName[b.Name]; dup {
			panic(fmt.Sprintf("storage registry: duplicate backend %q", b.Name))
		}
		r.byName[b.Name] = b
	}
	return r
}

// Default is the registry of every backend backstream ships.
func Default() *Registry {
	return New(Filesystem(), S3())
}

// Names lists the registered backends, sorted.
func (r *Registry) Names() []string {
	names := make([]string, 0, len(r.byName))
	for n := range r.byName {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Lookup returns the backend called name.
func (r *Registry) Lookup(name string) (Backend, error) {
	b, ok := r.byName[name]
	if !ok {
		return Backend{}, fmt.Errorf("%w %q (have %s)", ErrUnknownBackend, name, strings.Join(r.Names(), ", "))
	}
	return b, nil
}

// Check validates the config of backend name.
func (r *Registry) Check(name string, decode Decode) error {
	b, err := r.Lookup(name)
	if err != nil {
		return err
	}
	return b.Check(decode)
}

// Open opens a storage of backend name.
func (r *Registry) Open(ctx context.Context, name string, decode Decode) (storage.Storage, error) {
	b, err := r.Lookup(name)
	if err != nil {
		return nil, err
	}
	return b.New(ctx, decode)
}

// configOf builds Check and New for a backend whose Config has Validate.
func configOf[C interface{ Validate() error }](name string, open func(context.Context, C) (storage.Storage, error)) Backend {
	// Check reports the problems bare (a plan names where they are); New
	// names the backend, since its error travels further.
	decode := func(d Decode) (C, error) {
		var c C
		if err := d(&c); err != nil {
			return c, err
		}
		return c, c.Validate()
	}
	return Backend{
		Name: name,
		Check: func(d Decode) error {
			_, err := decode(d)
			return err
		},
		New: func(ctx context.Context, d Decode) (storage.Storage, error) {
			c, err := decode(d)
			if err != nil {
				return nil, fmt.Errorf("%s config: %w", name, err)
			}
			return open(ctx, c)
		},
	}
}

// Filesystem is the "filesystem" backend (filesystem.Config).
func Filesystem() Backend { return configOf("filesystem", filesystem.New) }

// S3 is the "s3" backend (s3.Config).
func S3() Backend { return configOf("s3", s3.New) }
