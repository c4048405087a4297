// Package all assembles the registry of every source plugin, in one place.
package all

import (
	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/command"
	"github.com/backstream/backstream/pkg/source/files"
	"github.com/backstream/backstream/pkg/source/mariadb"
	"github.com/backstream/backstream/pkg/source/mongodb"
	"github.com/backstream/backstream/pkg/source/postgres"
	"github.com/backstream/backstream/pkg/source/redis"
)

// Registry returns a new registry holding every source plugin.
func Registry() *source.Registry {
	r := source.NewRegistry()
	r.Register(command.Plugin())
	// The files stream already is a tar; Extract only checks and names it.
	f := files.Plugin()
	f.Extract = source.TarExtract(files.Name + ".tar")
	r.Register(f)
	r.Register(mariadb.Plugin())
	r.Register(postgres.Plugin())
	r.Register(redis.Plugin())
	r.Register(mongodb.Plugin())
	return r
}
