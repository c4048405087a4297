package source

import (
	"context"
	"path/filepath"
	"strings"
)

// ScratchKind is what a fire drill's scratch target of a source is.
type ScratchKind int

const (
	// ScratchDatabase: a database the drill names; the source makes it
	// (Restore with Create and Clean), queries it and drops it (Scratcher).
	ScratchDatabase ScratchKind = iota + 1
	// ScratchDirectory: a private directory the drill makes (0700) and
	// removes itself; Restore unpacks into it.
	ScratchDirectory
)

// Drillable is a Source that a fire drill can restore into a scratch
// target made for the drill, never into what the source backs up.
//
// ScratchKind says what that target is. An error wrapping ErrUnsupported
// says why this source, as configured, cannot be drilled, and names the
// setting to change (a physical MariaDB backup needs a stopped server).
//
// Owns reports whether target is, holds or lies inside what the source
// backs up (one of its databases, its directory): a drill refuses such a
// target. It never touches the service and is safe for concurrent use.
type Drillable interface {
	ScratchKind() (ScratchKind, error)
	Owns(target string) bool
}

// Scratcher is a Drillable whose scratch targets are databases on the
// source's own server, reached with the plugin's connection settings (a
// password only through the environment or a 0600 file, never argv).
//
// DropScratch drops database target and everything in it. Dropping one
// that does not exist is no error, so a drill calls it before its restore
// (what a crashed delivery of the same drill left) and after. It refuses
// (ErrUnsupported) a target the source Owns. Sessions still connected to
// the database do not stop the drop where the server can end them.
//
// QueryRows runs one SQL statement in database target and returns how many
// rows it returned; a statement that fails is an error (an *Error where a
// child ran). It may be called concurrently.
type Scratcher interface {
	Drillable
	DropScratch(ctx context.Context, target string) error
	QueryRows(ctx context.Context, target, sql string) (int64, error)
}

// PathOverlaps reports whether directories a and b are the same or one
// lies inside the other (after filepath.Clean; relative paths as given).
// Directory sources use it for Owns.
func PathOverlaps(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	a, b = filepath.Clean(a), filepath.Clean(b)
	if a == b {
		return true
	}
	within := func(dir, p string) bool {
		rel, err := filepath.Rel(dir, p)
		return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
	}
	return within(a, b) || within(b, a)
}
