package events

// The JSON Schemas under schema/ are generated from the payload structs and
// the generator's table of Validate rules; a test fails when they drift.
//go:generate go run ./internal/schemagen -dir schema -src payloads.go
