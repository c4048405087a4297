package events

import (
	"embed"
	"strings"
)

// schemaFiles embeds the whole directory (not schema/*.json) so the package
// still compiles while the generator, which imports it, recreates an empty
// schema directory.
//
//go:embed schema
var schemaFiles embed.FS

// Schema returns the JSON Schema (draft 2020-12) of the data of events of
// type typ, a full CloudEvent type such as BackupRequested, or false when typ
// is not a registered type. The schema allows properties it does not list,
// so that consumers accept payloads from newer publishers. Each call returns
// a fresh copy the caller may modify.
func Schema(typ string) ([]byte, bool) {
	if _, ok := registry[typ]; !ok {
		return nil, false
	}
	b, err := schemaFiles.ReadFile("schema/" + strings.TrimPrefix(typ, TypePrefix) + ".json")
	if err != nil {
		return nil, false
	}
	return b, true
}
