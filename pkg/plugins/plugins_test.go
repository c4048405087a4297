package plugins_test

import (
	"strings"
	"testing"

	"github.com/backstream/backstream/pkg/plan"
	"github.com/backstream/backstream/pkg/plugins"
)

func TestExecUsesNamesEveryFieldThatRunsAProgram(t *testing.T) {
	tests := []struct {
		name   string
		source string
		hooks  string
		want   string
	}{
		{"files runs nothing", "{type: files, files: {path: /srv}}", "", ""},
		{"command runs its argv", "{type: command, command: {argv: [pg_dumpall]}}", "",
			"spec.source.command.argv"},
		{"and its restoreArgv", "{type: command, command: {argv: [a], restoreArgv: [b]}}", "",
			"spec.source.command.argv, spec.source.command.restoreArgv"},
		{"mariadb from PATH runs nothing of the plan's", "{type: mariadb, mariadb: {host: db}}", "", ""},
		{"mariadb binDir and extraArgs", "{type: mariadb, mariadb: {host: db, binDir: /tmp/x, extraArgs: [--plugin-dir=/tmp]}}", "",
			"spec.source.mariadb.binDir, spec.source.mariadb.extraArgs"},
		{"postgres extraArgs only reach pg_dump", "{type: postgres, postgres: {host: db, extraArgs: [--no-owner]}}", "", ""},
		{"postgres binDir", "{type: postgres, postgres: {host: db, binDir: /opt/pg}}", "", "spec.source.postgres.binDir"},
		{"redis binDir", "{type: redis, redis: {addr: 'r:6379', binDir: /opt/r}}", "", "spec.source.redis.binDir"},
		{"exec and kubernetes hooks, not http", "{type: files, files: {path: /srv}}",
			`
    - {name: lock, type: exec, ops: [{name: a, command: [true]}]}
    - {name: ping, type: http, ops: [{name: a, http: {url: "http://x/"}}]}
    - {name: pod, type: kubernetes, kubernetes: {namespace: n, labelSelector: app=db}, ops: [{name: a, command: [true]}]}`,
			"spec.hooks[0] (exec hook lock), spec.hooks[2] (kubernetes hook pod)"},
	}
	reg := plugins.Default()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := "apiVersion: backstream.io/v1alpha1\nkind: Plan\nmetadata: {name: p}\nspec:\n  source: " + tt.source +
				"\n  destinations: [{name: l, type: filesystem, filesystem: {path: /b}}]\n"
			if tt.hooks != "" {
				doc += "  hooks:" + tt.hooks + "\n"
			}
			p, err := plan.Parse("p.yaml", []byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Validate(reg); err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(reg.ExecUses(p), ", "); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}
