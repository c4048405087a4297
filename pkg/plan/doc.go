// Package plan is the model of a backstream plan: the declarative YAML that
// names a source, hooks, workflows, filters, destinations, schedule,
// retention, verify and alert settings.
//
// It decodes plans strictly (an unknown field is an error with its line),
// fills documented defaults, validates every rule at once with field paths,
// round-trips plans through JSON for the KV bucket, and holds the one pure
// function every stage uses to find the next workflow step (NextStep).
//
// The package never does I/O beyond reading the plan files it is asked to
// load, and never resolves secrets: a plan names secrets by reference
// (pkg/secret), and the stage that needs a value resolves it where it runs.
// Plugin configuration blocks are kept opaque here; plugins decode them with
// Plugin.Decode and check them through a Checker.
package plan
