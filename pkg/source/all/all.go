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
	// The files stream already is a tar; Extract only checks and names it.
	f := files.Plugin()
	f.Extract = source.TarExtract(files.Name + ".tar")
	return source.NewRegistry(
		command.Plugin(),
		f,
		mariadb.Plugin(),
		postgres.Plugin(),
		redis.Plugin(),
		mongodb.Plugin(),
	)
}
