package app

import (
	"github.com/backstream/backstream/services/filter"
	"github.com/backstream/backstream/services/hook"
	"github.com/backstream/backstream/services/metrics"
	"github.com/backstream/backstream/services/restore"
	"github.com/backstream/backstream/services/retention"
	"github.com/backstream/backstream/services/snapshot"
	"github.com/backstream/backstream/services/stage"
	"github.com/backstream/backstream/services/upload"
	"github.com/backstream/backstream/services/verify"
)

// stageOrder is the start order of the event-driven stages; stages maps each
// to its constructor. This is the one place a new stage is registered.
var stageOrder = []string{"hook", "snapshot", "filter", "upload", "verify", "retention", "restore", "metrics"}

var stages = map[string]func(*stage.Deps) stage.Service{
	"hook":      func(d *stage.Deps) stage.Service { return hook.New(d) },
	"snapshot":  func(d *stage.Deps) stage.Service { return snapshot.New(d) },
	"filter":    func(d *stage.Deps) stage.Service { return filter.New(d) },
	"upload":    func(d *stage.Deps) stage.Service { return upload.New(d) },
	"verify":    func(d *stage.Deps) stage.Service { return verify.New(d) },
	"retention": func(d *stage.Deps) stage.Service { return retention.New(d) },
	"restore":   func(d *stage.Deps) stage.Service { return restore.New(d) },
	"metrics":   func(d *stage.Deps) stage.Service { return metrics.New(d) },
}
