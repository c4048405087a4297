package bus

import (
	"slices"
	"strings"

	"github.com/backstream/backstream/events"
)

// Roles of NATS users. Each service of a split deployment connects as the
// role of its name; RoleAdmin sets up streams and buckets and manages plans
// (the CLI, and a serve that runs every service); RoleTrigger is for outside
// publishers of backup requests; RoleViewer for read-only tools.
const (
	RoleAdmin   = "admin"
	RoleTrigger = "trigger"
	RoleViewer  = "viewer"
)

// Permissions is what one role may publish and subscribe to. Everything else
// is denied by the server.
type Permissions struct {
	Publish   []string
	Subscribe []string
}

// Role is a NATS user role and what it may do.
type Role struct {
	Name string
	// Doc says what the role is for.
	Doc string
	Permissions
}

// grant is a set of permissions that roles are built from.
type grant = Permissions

func join(gs ...grant) Permissions {
	var p Permissions
	for _, g := range gs {
		p.Publish = append(p.Publish, g.Publish...)
		p.Subscribe = append(p.Subscribe, g.Subscribe...)
	}
	slices.Sort(p.Publish)
	p.Publish = slices.Compact(p.Publish)
	slices.Sort(p.Subscribe)
	p.Subscribe = slices.Compact(p.Subscribe)
	return p
}

const jsAPI = "$JS.API."

// base is what every role needs: to look up the streams and buckets it
// binds to. Its inbox is granted per user (ForUser).
func base() grant {
	return grant{
		Publish: []string{
			jsAPI + "INFO",
			jsAPI + "STREAM.INFO." + EventsStream,
			jsAPI + "STREAM.INFO." + DeadLetterStream,
			jsAPI + "STREAM.INFO." + DataStream,
			jsAPI + "STREAM.INFO.KV_" + PlansBucket,
			jsAPI + "STREAM.INFO.KV_" + RunsBucket,
			jsAPI + "STREAM.INFO.KV_" + LeasesBucket,
		},
	}
}

// consume is a stage's durable consumer of the events stream, and the dead
// letters it may copy events to.
func consume(durable string) grant {
	return grant{Publish: []string{
		jsAPI + "CONSUMER.CREATE." + EventsStream + "." + durable,
		jsAPI + "CONSUMER.CREATE." + EventsStream + "." + durable + ".>",
		jsAPI + "CONSUMER.INFO." + EventsStream + "." + durable,
		jsAPI + "CONSUMER.MSG.NEXT." + EventsStream + "." + durable,
		"$JS.ACK." + EventsStream + "." + durable + ".>",
		events.DeadLetterRoot + "." + durable,
	}}
}

// follow reads the events stream through ordered consumers (trigger --wait,
// `runs`, metrics catching up). Such consumers have generated names, which a
// permission cannot pin down; they are read-only (no acks).
func follow(stream string) grant {
	return grant{Publish: []string{
		jsAPI + "CONSUMER.CREATE." + stream + ".>",
		jsAPI + "CONSUMER.DELETE." + stream + ".>",
		jsAPI + "CONSUMER.INFO." + stream + ".>",
		jsAPI + "CONSUMER.MSG.NEXT." + stream + ".>",
		"$JS.FC." + stream + ".>",
		jsAPI + "DIRECT.GET." + stream,
		jsAPI + "DIRECT.GET." + stream + ".>",
		jsAPI + "STREAM.MSG.GET." + stream,
	}}
}

// publish lets a role emit events of the given types, for every plan.
func publish(types ...string) grant {
	var g grant
	for _, t := range types {
		g.Publish = append(g.Publish, events.SubjectFilter(t))
	}
	return g
}

// readKV reads (get, list, watch) a bucket.
func readKV(bucket string) grant { return follow("KV_" + bucket) }

// writeKV puts, updates and deletes keys of a bucket.
func writeKV(bucket string) grant {
	return join(readKV(bucket), grant{Publish: []string{"$KV." + bucket + ".>"}})
}

// chunks reads and writes chunk streams: the data plane.
func chunks() grant {
	return grant{Publish: []string{
		DataRoot + ".>",
		jsAPI + "CONSUMER.CREATE." + DataStream + ".>",
		jsAPI + "CONSUMER.DURABLE.CREATE." + DataStream + ".>",
		jsAPI + "CONSUMER.DELETE." + DataStream + ".>",
		jsAPI + "CONSUMER.INFO." + DataStream + ".>",
		jsAPI + "CONSUMER.MSG.NEXT." + DataStream + ".>",
		jsAPI + "STREAM.PURGE." + DataStream,
		"$JS.ACK." + DataStream + ".>",
	}}
}

// runOutcomes are the events any stage that fails a run emits.
var runOutcomes = []string{events.StepCompleted, events.StepFailed, events.BackupFailed, events.RestoreFailed}

// Roles is every role, in a fixed order: the single source of the embedded
// server's users and of deploy/nats-server.conf.
func Roles() []Role {
	svc := func(name, doc string, gs ...grant) Role {
		return Role{Name: name, Doc: doc, Permissions: join(append([]grant{base()}, gs...)...)}
	}
	return []Role{
		{Name: RoleAdmin, Doc: "sets up streams and buckets, manages plans, runs every service in one process", Permissions: Permissions{Publish: []string{">"}, Subscribe: []string{">"}}},
		svc(RoleTrigger, "outside publishers: request a backup and follow it",
			readKV(PlansBucket), readKV(RunsBucket), follow(EventsStream),
			publish(events.BackupRequested)),
		svc(RoleViewer, "read-only tools: plans, runs, events, dead letters",
			readKV(PlansBucket), readKV(RunsBucket), follow(EventsStream), follow(DeadLetterStream)),
		svc("schedule", "publishes scheduled backup requests",
			readKV(PlansBucket), readKV(RunsBucket), writeKV(LeasesBucket),
			publish(events.BackupRequested)),
		svc("hook", "runs hook steps and compensation",
			consume("hook"), readKV(PlansBucket), writeKV(RunsBucket),
			publish(append(runOutcomes, events.HookCompleted, events.HookFailed, events.CompensationCompleted, events.CompensationFailed, events.BackupSucceeded, events.RestoreSucceeded)...)),
		svc("snapshot", "dumps sources into raw chunk streams",
			consume("snapshot"), readKV(PlansBucket), writeKV(RunsBucket), chunks(),
			publish(append(runOutcomes, events.SnapshotStarted, events.SnapshotProgressed, events.SnapshotCompleted, events.SnapshotFailed, events.BackupSucceeded)...)),
		svc("filter", "compresses and seals raw chunks",
			consume("filter"), readKV(PlansBucket), writeKV(RunsBucket), chunks(),
			publish(append(runOutcomes, events.FilterCompleted, events.FilterFailed)...)),
		svc("upload", "writes sealed chunks into destinations",
			consume("upload"), readKV(PlansBucket), writeKV(RunsBucket), chunks(),
			publish(append(runOutcomes, events.UploadProgressed, events.UploadCompleted, events.UploadFailed)...)),
		svc("verify", "reads backups back and settles runs",
			consume("verify"), readKV(PlansBucket), writeKV(RunsBucket),
			publish(append(runOutcomes, events.VerifyCompleted, events.VerifyFailed, events.BackupSucceeded)...)),
		svc("retention", "applies retention after a verified backup",
			consume("retention"), readKV(PlansBucket), readKV(RunsBucket),
			publish(events.RetentionCompleted, events.RetentionFailed)),
		svc("restore", "restores backups into their targets",
			consume("restore"), readKV(PlansBucket), writeKV(RunsBucket), chunks(),
			publish(append(runOutcomes, events.RestoreStarted, events.RestoreProgressed, events.RestoreSucceeded)...)),
		svc("metrics", "writes points, watches for missing successes, fails stuck runs",
			consume("metrics"), readKV(PlansBucket), writeKV(RunsBucket), follow(EventsStream),
			publish(append(runOutcomes, events.BackupMissed)...)),
		svc("api", "the HTTP API: reads plans and runs, requests backups and restores",
			readKV(PlansBucket), readKV(RunsBucket), follow(EventsStream),
			publish(events.BackupRequested, events.RestoreRequested)),
	}
}

// ForUser is what a user of the role may do: the role's permissions and
// replies on the user's own inbox (InboxPrefix of its name or public key),
// so no user can read the replies — or the chunk deliveries — of another.
func (r Role) ForUser(identity string) Permissions {
	if slices.Contains(r.Subscribe, ">") {
		return r.Permissions
	}
	return join(r.Permissions, grant{Subscribe: []string{InboxPrefix(identity) + ".>"}})
}

// RoleNamed returns the role of that name.
func RoleNamed(name string) (Role, bool) {
	for _, r := range Roles() {
		if r.Name == name {
			return r, true
		}
	}
	return Role{}, false
}

// RoleNames lists every role's name.
func RoleNames() []string {
	var out []string
	for _, r := range Roles() {
		out = append(out, r.Name)
	}
	return out
}

// String renders permissions for logs and docs.
func (p Permissions) String() string {
	return "publish [" + strings.Join(p.Publish, " ") + "] subscribe [" + strings.Join(p.Subscribe, " ") + "]"
}
