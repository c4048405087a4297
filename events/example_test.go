package events_test

import (
	"fmt"

	"github.com/backstream/backstream/events"
)

// An outside program (a cron job, a CI pipeline) asks for a backup of a plan
// by publishing a backup.requested event. It imports only this module; the
// NATS publish itself sets the header Nats-Msg-Id to e.ID().
func ExampleNew() {
	e, err := events.New(events.Meta{
		Source: "myorg/cron",
		Plan:   "orders-db",
		RunID:  events.NewID(),
	}, events.BackupRequestedData{Trigger: events.TriggerAPI})
	if err != nil {
		fmt.Println("build event:", err)
		return
	}
	fmt.Println(e.Type())
	fmt.Println(events.Subject(e.Type(), e.Subject()))
	// Output:
	// io.backstream.backup.requested
	// bs.events.backup.requested.orders-db
}

// A consumer decodes an event into the payload its type names; a contract
// violation wraps events.ErrInvalid.
func ExampleDecodeAs() {
	e := events.MustNew(events.Meta{Source: "backstream/upload/host-1", Plan: "orders-db", RunID: "01JNR4S7T0000000000000000A"},
		events.UploadFailedData{Destination: "s3-main", Error: "put part 3: connection reset"})
	d, err := events.DecodeAs[*events.UploadFailedData](e)
	if err != nil {
		fmt.Println("decode:", err)
		return
	}
	fmt.Println(d.Destination, "|", d.Error)
	// Output: s3-main | put part 3: connection reset
}

// Tools fetch the JSON Schema of a payload to check events they did not
// build with this module.
func ExampleSchema() {
	s, ok := events.Schema(events.BackupRequested)
	fmt.Println(ok, len(s) > 0)
	_, ok = events.Schema("io.backstream.backup.exploded")
	fmt.Println(ok)
	// Output:
	// true true
	// false
}
