package all_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/source"
	"github.com/backstream/backstream/pkg/source/all"
)

func TestRegistry(t *testing.T) {
	r := all.Registry()
	if got := strings.Join(r.Names(), ","); got != "command,files,mariadb,mongodb,postgres,redis" {
		t.Fatalf("names %s", got)
	}
	if _, err := r.Lookup("oracle"); !errors.Is(err, source.ErrUnknownPlugin) {
		t.Fatalf("lookup of an unknown plugin: %v", err)
	}
}

func TestDuplicatePanics(t *testing.T) {
	r := all.Registry()
	p, err := r.Lookup("files")
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a duplicate plugin did not panic")
		}
	}()
	source.NewRegistry(p, p)
}

// TestExamplePlanBlocks decodes the example block of each plugin from
// docs/sources.md through its registry entry.
func TestExamplePlanBlocks(t *testing.T) {
	tests := []struct {
		plugin string
		block  string
	}{
		{"command", "argv: [etcdctl, snapshot, save, /dev/stdout]\nenv: {ETCDCTL_PASSWORD: {env: ETCD_PW}}\nrestoreArgv: [sh-free-restorer]"},
		{"files", "path: /srv/www\ninclude: ['**/*.php', 'uploads/**']\nexclude: ['cache', '*.tmp']"},
		{"mariadb", "host: db1\nport: 3306\nuser: backup\npassword: {file: /run/secrets/db1}\ndatabases: [shop]\nmode: logical"},
		{"postgres", "host: pg1\nuser: postgres\npassword: {env: PGPW}\ndatabases: [orders, billing]\nglobals: true"},
		{"redis", "addr: cache1:6379\npassword: {env: REDIS_PW}"},
		{"mongodb", "uri: {file: /run/secrets/mongo-uri}\ndatabases: [catalog]\ncollections: [catalog.items]"},
	}
	r := all.Registry()
	for _, tt := range tests {
		t.Run(tt.plugin, func(t *testing.T) {
			p, err := r.Lookup(tt.plugin)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Check(source.YAMLDecoder([]byte(tt.block))); err != nil {
				t.Fatal(err)
			}
			if _, err := p.New(source.YAMLDecoder([]byte(tt.block))); err != nil {
				t.Fatal(err)
			}
		})
	}
}
