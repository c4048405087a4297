package bus

import (
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/backstream/backstream/events"
)

// Roles of NATS users. Each service of a split deployment connects as the
// role of its name; RoleAdmin sets up streams and buckets and manages plans
// (the CLI, `backstream setup`, and a serve that runs every service);
// RoleTrigger is for outside publishers of backup requests; RoleViewer for
// read-only tools.
const (
	RoleAdmin   = "admin"
	RoleTrigger = "trigger"
	RoleViewer  = "viewer"
)

// Permissions is what one role may publish and subscribe to: the allow
// lists, everything else denied by the server, minus DenyPublish, which
// the server checks after the allow list (deny wins). DenyPublish only
// carves the stages' durable consumers out of the wildcards a reader of
// the events stream needs for its own, randomly named consumers.
type Permissions struct {
	Publish     []string
	Subscribe   []string
	DenyPublish []string
	// Responses lets the role answer requests it received: publish one
	// reply to a request's reply subject, within two minutes, whatever
	// inbox the asker uses (the owner of run state answering stages).
	Responses bool
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
		p.DenyPublish = append(p.DenyPublish, g.DenyPublish...)
		p.Responses = p.Responses || g.Responses
	}
	for _, l := range []*[]string{&p.Publish, &p.Subscribe, &p.DenyPublish} {
		slices.Sort(*l)
		*l = slices.Compact(*l)
	}
	return p
}

const jsAPI = "$JS.API."

// base is what every role needs: to look up the streams and buckets it
// binds to (bus.Connect checks that they are current). Its inbox is
// granted per user (ForUser).
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
			jsAPI + "STREAM.INFO.KV_" + KeyringsBucket,
		},
	}
}

// consume is a stage's durable consumer of the events stream, and the dead
// letters it copies events to. Its name is a subject token of the
// JetStream API, so nobody else's grant matches it (see follow).
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

// follow reads a stream through ordered consumers (trigger --wait, `runs`,
// KV gets, lists and watches). Such consumers have generated names, which a
// permission cannot pin down, so the grant is a wildcard; they are
// read-only (no acks). On the events stream, the stages' durable consumers
// are carved out (Roles adds the deny list): a reader must not update,
// delete or pull from them, which would take events from a stage.
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

// writeKV puts, updates and deletes every key of a bucket.
func writeKV(bucket string) grant {
	return join(readKV(bucket), grant{Publish: []string{"$KV." + bucket + ".>"}})
}

// lease reads and writes the keys of the leases bucket under prefix (one
// prefix per owner: schedule., retention., watchdog., sweep.); the rest of
// the bucket it cannot even read.
func lease(prefix string) grant {
	subj := "$KV." + LeasesBucket + "." + prefix + ".>"
	stream := "KV_" + LeasesBucket
	return grant{Publish: []string{
		subj,
		jsAPI + "DIRECT.GET." + stream + "." + subj,
		jsAPI + "CONSUMER.CREATE." + stream + ".*." + subj,
		jsAPI + "CONSUMER.DELETE." + stream + ".*",
		jsAPI + "CONSUMER.INFO." + stream + ".*",
		"$JS.FC." + stream + ".>",
	}}
}

// writeChunks writes chunk streams of kind: publishes chunks on the
// readers' subjects, creates the readers' consumers (pinned to kind by
// their filter subject) and watches their ack floors (consumer names are
// one token, which a permission cannot pin to a kind).
func writeChunks(kind string) grant {
	return grant{Publish: []string{
		DataRoot + ".*." + kind + ".*",
		jsAPI + "CONSUMER.CREATE." + DataStream + ".*." + DataRoot + ".*." + kind + ".*",
		jsAPI + "CONSUMER.INFO." + DataStream + ".*",
	}}
}

// readChunks reads chunk streams of kind through the reader's durable
// consumer, deletes it and purges what is left of the reader's copy.
func readChunks(kind string) grant {
	return grant{Publish: []string{
		jsAPI + "CONSUMER.CREATE." + DataStream + ".*." + DataRoot + ".*." + kind + ".*",
		jsAPI + "CONSUMER.INFO." + DataStream + ".*",
		jsAPI + "CONSUMER.MSG.NEXT." + DataStream + ".*",
		jsAPI + "CONSUMER.DELETE." + DataStream + ".*",
		jsAPI + "STREAM.PURGE." + DataStream,
		"$JS.ACK." + DataStream + ".>",
	}}
}

// deleteDeadLetters deletes single dead letters by sequence (`dlq purge`);
// purging the stream as a whole stays the admin's.
func deleteDeadLetters() grant {
	return grant{Publish: []string{jsAPI + "STREAM.MSG.DELETE." + DeadLetterStream}}
}

// ask lets a stage ask the owner of run state for transitions of runs
// (runs.Owner) on its own subject only, which tells the owner who asks: a
// stage records only its own steps, and no stage writes the runs bucket or
// announces a run's outcome.
func ask(stage string) grant {
	return grant{Publish: []string{"bs.control." + stage}}
}

// owner is the owner of run state (the control service): the one writer
// of the runs bucket, answering the stages' requests, and the one
// publisher of run outcomes.
func owner() grant {
	return join(writeKV(RunsBucket), readKV(PlansBucket),
		grant{Subscribe: []string{"bs.control.*"}, Responses: true},
		publish(events.BackupFailed, events.RestoreFailed, events.BackupSucceeded, events.RestoreSucceeded, events.StepFailed,
			events.BackupCancelled, events.RestoreCancelled),
		// A replay's attempt starts from what drove it the first time.
		publish(events.BackupRequested, events.RestoreRequested, events.StepCompleted, events.UploadCompleted, events.UploadRequested))
}

// Roles is every role, in a fixed order: the single source of the embedded
// server's users and of deploy/nats-server.conf (RenderServerConf).
func Roles() []Role {
	type def struct {
		name, doc string
		grants    []grant
	}
	defs := []def{
		{RoleTrigger, "outside publishers: request a backup and follow it (trigger --wait)", []grant{
			readKV(PlansBucket), readKV(RunsBucket), follow(EventsStream),
			publish(events.BackupRequested, events.ScrubRequested, events.DrillRequested)}},
		{RoleViewer, "read-only tools: plans, runs, events, dead letters", []grant{
			readKV(PlansBucket), readKV(RunsBucket), follow(EventsStream), follow(DeadLetterStream)}},
		{"control", "owns run state: applies the stages' transitions, announces run outcomes, fails overdue runs", []grant{
			owner()}},
		{"schedule", "publishes scheduled backup, scrub and drill requests; concurrencyPolicy replace fails the run it replaces", []grant{
			readKV(PlansBucket), readKV(RunsBucket), ask("schedule"), lease("schedule"),
			publish(events.BackupRequested, events.ScrubRequested, events.DrillRequested)}},
		{"hook", "runs hook steps and their compensation", []grant{
			consume("hook"), consume("compensate"), readKV(PlansBucket), readKV(RunsBucket), ask("hook"),
			publish(events.StepCompleted, events.HookCompleted, events.HookFailed,
				events.CompensationCompleted, events.CompensationFailed)}},
		{"snapshot", "dumps sources into raw chunk streams", []grant{
			consume("snapshot"), readKV(PlansBucket), readKV(RunsBucket), ask("snapshot"), writeChunks(KindRaw),
			publish(events.StepCompleted, events.SnapshotStarted, events.SnapshotProgressed,
				events.SnapshotCompleted, events.SnapshotFailed)}},
		// The filter makes a plan's keyring on its first backup with a
		// passphrase, and replaces it when the passphrase changed.
		{"filter", "compresses and seals raw chunks; keeps the plans' keyrings", []grant{
			consume("filter"), readKV(PlansBucket), readKV(RunsBucket), writeKV(KeyringsBucket), ask("filter"), readChunks(KindRaw), writeChunks(KindSealed),
			publish(events.FilterCompleted, events.FilterFailed)}},
		{"upload", "writes sealed chunks into destinations", []grant{
			consume("upload"), consume("upload-copy"), readKV(PlansBucket), readKV(RunsBucket), ask("upload"), readChunks(KindSealed), lease("sweep"),
			publish(events.UploadProgressed, events.UploadCompleted, events.UploadFailed)}},
		{"verify", "reads backups back; scrubs stored backups and repairs damaged copies", []grant{
			consume("verify"), consume("verify-failed"), consume("scrub"), readKV(PlansBucket), readKV(RunsBucket), ask("verify"),
			publish(events.VerifyCompleted, events.VerifyFailed, events.ScrubCompleted, events.ScrubFailed)}},
		{"retention", "applies retention after a verified backup", []grant{
			consume("retention"), readKV(PlansBucket), readKV(RunsBucket), ask("retention"), lease("retention"),
			publish(events.RetentionCompleted, events.RetentionFailed)}},
		{"restore", "restores backups into their targets; runs fire drills into scratch targets", []grant{
			consume("restore"), consume("drill"), readKV(PlansBucket), readKV(RunsBucket), ask("restore"),
			publish(events.StepCompleted, events.RestoreStarted, events.RestoreProgressed, events.DrillSucceeded, events.DrillFailed)}},
		{"metrics", "writes points, watches for missing successes", []grant{
			consume("metrics"), readKV(PlansBucket), readKV(RunsBucket), ask("metrics"), lease("watchdog"),
			publish(events.BackupMissed, events.DrillMissed)}},
		// Replaying a dead letter publishes an event of any type, which
		// would let the API forge run outcomes: the api role keeps to the
		// requests it makes anyway, and other replays are the admin's
		// (`backstream dlq replay`; docs/security.md).
		{"api", "the HTTP API: reads plans and runs, requests backups, restores, scrubs and drills, cancels runs, reads and deletes dead letters", []grant{
			readKV(PlansBucket), readKV(RunsBucket), ask("api"), follow(DeadLetterStream), deleteDeadLetters(),
			publish(events.BackupRequested, events.RestoreRequested, events.ScrubRequested, events.DrillRequested)}},
	}
	// Every durable consumer of the events stream belongs to one role; the
	// others may not touch it, also not through follow's wildcards.
	var durables []string
	for _, d := range defs {
		for _, g := range d.grants {
			for _, s := range g.Publish {
				if name, ok := strings.CutPrefix(s, "$JS.ACK."+EventsStream+"."); ok {
					durables = append(durables, strings.TrimSuffix(name, ".>"))
				}
			}
		}
	}
	out := []Role{{Name: RoleAdmin, Doc: "sets up streams and buckets (backstream setup), manages plans, runs every service in one process",
		Permissions: Permissions{Publish: []string{">"}, Subscribe: []string{">"}}}}
	for _, d := range defs {
		p := join(append([]grant{base()}, d.grants...)...)
		if slices.Contains(p.Publish, jsAPI+"CONSUMER.CREATE."+EventsStream+".>") {
			var deny []string
			for _, name := range durables {
				if slices.Contains(p.Publish, "$JS.ACK."+EventsStream+"."+name+".>") {
					continue // its own
				}
				c := EventsStream + "." + name
				deny = append(deny, jsAPI+"CONSUMER.CREATE."+c, jsAPI+"CONSUMER.CREATE."+c+".>",
					jsAPI+"CONSUMER.DELETE."+c, jsAPI+"CONSUMER.MSG.NEXT."+c)
			}
			p = join(p, grant{DenyPublish: deny})
		}
		out = append(out, Role{Name: d.name, Doc: d.doc, Permissions: p})
	}
	return out
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

// server is p as the embedded server's user permissions.
func (p Permissions) server() *server.Permissions {
	sp := &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: p.Publish},
		Subscribe: &server.SubjectPermission{Allow: p.Subscribe},
	}
	if len(p.DenyPublish) > 0 {
		sp.Publish.Deny = p.DenyPublish
	}
	if p.Responses {
		sp.Response = &server.ResponsePermission{MaxMsgs: 1, Expires: 2 * time.Minute}
	}
	return sp
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
	s := "publish [" + strings.Join(p.Publish, " ") + "] subscribe [" + strings.Join(p.Subscribe, " ") + "]"
	if len(p.DenyPublish) > 0 {
		s += " deny publish [" + strings.Join(p.DenyPublish, " ") + "]"
	}
	return s
}
