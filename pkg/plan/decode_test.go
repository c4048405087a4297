package plan

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/source/command"
)

func TestUnknownFieldsNameLine(t *testing.T) {
	tests := []struct {
		name string
		give string
		want string
	}{
		{"top level", "apiVersion: x\nkind: Plan\nspce: {}\n", `plans/x.yaml:3: unknown field "spce" in the plan`},
		{"spec", "spec:\n  source: {type: command}\n  filter: {}\n", `plans/x.yaml:3: unknown field "filter" in spec`},
		{"plugin extra key", "spec:\n  source:\n    type: command\n    argv: [a]\n", `plans/x.yaml:4: unknown field "argv" (a command plugin takes its config under "command")`},
		{"destination key", "spec:\n  destinations:\n    - name: a\n      type: filesystem\n      path: /x\n", `plans/x.yaml:5: unknown field "path" (a filesystem plugin takes its config under "filesystem")`},
		{"hook", "spec:\n  hooks:\n    - name: db\n      type: sql\n      retries: 3\n", `plans/x.yaml:5: unknown field "retries" in a hook`},
		{"op", "spec:\n  hooks:\n    - name: db\n      type: sql\n      ops:\n        - name: a\n          query: x\n", `plans/x.yaml:7: unknown field "query" in a hook op`},
		{"retention", "spec:\n  retention:\n    keepLats: 3\n", `plans/x.yaml:3: unknown field "keepLats" in retention`},
		{"destination retention", "spec:\n  destinations:\n    - name: a\n      type: filesystem\n      retention:\n        keepLats: 3\n", `plans/x.yaml:6: unknown field "keepLats" in retention`},
		{"destination retention duration", "spec:\n  destinations:\n    - name: a\n      type: filesystem\n      retention: {keepWithin: 7x}\n", `plans/x.yaml:5: spec.destinations[0].retention.keepWithin: invalid duration "7x": unknown unit 'x' (use y, m, w, d or h)`},
		{"destination retention not a block", "spec:\n  destinations:\n    - name: a\n      type: filesystem\n      retention: 5\n", "plans/x.yaml:5: spec.destinations[0].retention: want a mapping, got 5"},
		{"retention duration", "spec:\n  retention:\n    keepWithin: 7x\n", `plans/x.yaml:3: spec.retention.keepWithin: invalid duration "7x": unknown unit 'x' (use y, m, w, d or h)`},
		{"schedule", "spec:\n  schedule:\n    crontab: x\n", `plans/x.yaml:3: unknown field "crontab" in schedule`},
		{"encryption", "spec:\n  filters:\n    encryption:\n      key: x\n", `plans/x.yaml:4: unknown field "key" in encryption`},
		{"secret ref", "spec:\n  filters:\n    encryption:\n      passphrase: {value: x}\n", `plans/x.yaml:4: unknown field "value" in a secret reference`},
		{"workflow", "spec:\n  workflows:\n    - name: backup\n      priority: 4\n", `plans/x.yaml:4: unknown field "priority" in a workflow`},
		{"step", "spec:\n  workflows:\n    - name: backup\n      sequence:\n        - workflow: pre\n", `plans/x.yaml:5: step: unknown field "workflow"; want hook, group, snapshot or restore`},
		{"duration", "spec:\n  alert: {expectEvery: 5}\n", `plans/x.yaml:2: spec.alert.expectEvery: want a duration string such as 30s, 6h or 7d`},
		{"command string", "spec:\n  hooks:\n    - name: db\n      type: exec\n      ops:\n        - name: a\n          command: ls -l\n", `plans/x.yaml:7: spec.hooks[0].ops[0].command: want an argv list, or a string holding a JSON array; use ["sh", "-c", "..."] for a shell line`},
		{"chunk size", "spec:\n  chunkSize: 1GB\n", `plans/x.yaml:2: spec.chunkSize: invalid size "1GB": want bytes or a number with KiB or MiB`},
		{"syntax", "spec:\n  source: [\n", `plans/x.yaml:2: did not find expected node content`},
		{"duplicate key", "kind: Plan\nkind: Plan\n", `plans/x.yaml:2: kind: mapping key "kind" already defined at line 1`},
		{"workflows not a list", "spec:\n  workflows:\n    backup:\n      sequence: [snapshot]\n", `plans/x.yaml:3: spec.workflows: want a list, got a mapping`},
		{"integer", "spec:\n  retention:\n    keepLast: x\n", `plans/x.yaml:3: spec.retention.keepLast: want an integer, got "x"`},
		{"long value", "spec:\n  retention:\n    keepLast: three or four\n", `plans/x.yaml:3: spec.retention.keepLast: want an integer, got "three o..."`},
		{"two fields could be meant", "spec:\n  retention: {keepLast: x, keepDaily: x}\n", "plans/x.yaml:2: want an integer, got \"x\"\nplans/x.yaml:2: want an integer, got \"x\""},
		{"secret by value", "spec:\n  filters:\n    encryption:\n      passphrase: hunter2\n", `plans/x.yaml:4: spec.filters.encryption.passphrase: want a secret reference such as {env: NAME} or {file: PATH}, not the value itself`},
		{"destinations not a list", "spec:\n  destinations:\n    name: a\n", `plans/x.yaml:3: spec.destinations: want a list, got a mapping`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("plans/x.yaml", []byte(tt.give))
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("want *DecodeError, got %T %v", err, err)
			}
			if err.Error() != tt.want {
				t.Errorf("got  %s\nwant %s", err, tt.want)
			}
		})
	}
}

func TestDecodeReportsAllUnknownFields(t *testing.T) {
	_, err := Parse("p.yaml", []byte("kind: Plan\nfoo: 1\nspec:\n  bar: 2\n  hooks:\n    - name: a\n      baz: 3\n"))
	want := "p.yaml:2: unknown field \"foo\" in the plan\np.yaml:4: unknown field \"bar\" in spec\np.yaml:7: unknown field \"baz\" in a hook"
	if err == nil || err.Error() != want {
		t.Fatalf("got:\n%v\nwant:\n%s", err, want)
	}
}

func TestPluginDecodeIsStrictWithPlanLines(t *testing.T) {
	p := mustParse(t, strings.Replace(base, "command: {argv: [echo, hi]}", "command:\n      # the dump\n      argv: [echo, hi]\n      dirr: /tmp", 1))
	var c command.Config
	err := p.Spec.Source.Decode(&c)
	want := `line 11: dirr: unknown field (the command block takes argv, dir, env, restoreArgv)`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Path != "dirr" || fe.Line != 11 {
		t.Fatalf("got %#v, want a *FieldError of dirr on line 11", err)
	}
	if got := p.Validate(realChecker{}); got == nil || !strings.Contains(got.Error(), "plans/orders.yaml:11: spec.source.command.dirr: unknown field (the command block takes") {
		t.Fatalf("Validate: %v", got)
	}
}

func TestPluginDecodeAbsentBlockIsEmpty(t *testing.T) {
	p := mustParse(t, strings.Replace(base, "command: {argv: [echo, hi]}", "", 1))
	c := command.Config{Dir: "kept"}
	if err := p.Spec.Source.Decode(&c); err != nil || c.Dir != "kept" || c.Argv != nil {
		t.Fatalf("got %+v, %v", c, err)
	}
}

func TestParseAllAndLoad(t *testing.T) {
	dir := t.TempDir()
	two := strings.Replace(base, "name: orders", "name: a", 1) + "---\n" + strings.Replace(base, "name: orders", "name: b", 1) + "---\n"
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ab.yaml", two)
	write("c.yml", strings.Replace(base, "name: orders", "name: c", 1))
	write("notes.txt", "not a plan")
	plans, err := LoadPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range plans {
		names = append(names, p.Name()+"@"+filepath.Base(p.File))
	}
	if want := []string{"a@ab.yaml", "b@ab.yaml", "c@c.yml"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("got %v, want %v", names, want)
	}
	if _, err := Parse("ab.yaml", []byte(two)); err == nil || err.Error() != "ab.yaml: holds 2 plans, want exactly one" {
		t.Fatalf("Parse of two plans: %v", err)
	}
	write("dup.yaml", strings.Replace(base, "name: orders", "name: c", 1))
	if _, err := LoadDir(dir); err == nil || !strings.Contains(err.Error(), `plan "c" is already defined in `) {
		t.Fatalf("duplicate: %v", err)
	}
	one, err := LoadPath(filepath.Join(dir, "ab.yaml"))
	if err != nil || len(one) != 2 {
		t.Fatalf("file: %d plans, %v", len(one), err)
	}
}

func TestExamplesParseAndValidate(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(files) < 2 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		plans, err := LoadPath(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range plans {
			if err := p.Validate(realChecker{}); err != nil {
				t.Error(err)
			}
		}
	}
	demo, err := ParseFile("../../examples/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c command.Config
	if err := demo.Spec.Source.Decode(&c); err != nil {
		t.Fatal(err)
	}
	if demo.Name() != "demo" || demo.Spec.Source.Type != "command" ||
		!reflect.DeepEqual(c.Argv, []string{"tar", "-C", "examples", "-cf", "-", "."}) ||
		demo.Spec.Filters.Compression != CompressionZstd || demo.Spec.Filters.Encryption != nil ||
		demo.Spec.Destinations[0].Name != "local" || demo.Spec.Destinations[0].Config["path"] != "./data/backups" ||
		demo.Spec.Retention.KeepLast != 5 || demo.Spec.Retention.KeepDaily != 7 ||
		demo.Spec.Alert.ExpectEvery.Std() != 24*time.Hour {
		t.Fatalf("demo plan is not what docs promise: %+v", demo.Spec)
	}
}

// fusion is hooks and workflows of an IBM Fusion Recipe as Fusion writes them.
const fusion = `apiVersion: backstream.io/v1alpha1
kind: Plan
metadata: {name: mysql}
spec:
  source: {type: command, command: {argv: [mysqldump]}}
  destinations: [{name: local, type: filesystem, filesystem: {path: /b}}]
  hooks:
  - name: mysql-pod-exec
    type: exec
    namespace: mysql
    labelSelector: app=mysql
    nameSelector: mysql-.*
    selectResource: pod
    singlePodOnly: true
    timeout: 300
    onError: fail
    ops:
    - name: flush-tables-with-read-lock
      command: >
        ["/bin/bash", "-c", "mysql -e 'FLUSH TABLES WITH READ LOCK'"]
      container: mysql
      timeout: 120
      inverseOp: unlock-tables
    - name: unlock-tables
      command: '["/bin/bash", "-c", "mysql -e \"UNLOCK TABLES\""]'
      container: mysql
      onError: continue
      inverseOp: ""
  workflows:
  - name: backup
    sequence:
    - hook: mysql-pod-exec/flush-tables-with-read-lock
    - group: mysql-volumes
    - hook: mysql-pod-exec/unlock-tables
  - name: restore
    sequence:
    - group: mysql-volumes
    - hook: mysql-pod-exec/unlock-tables
`

func TestFusionRecipeParsesAndValidates(t *testing.T) {
	p := mustParse(t, fusion)
	if err := p.Validate(realChecker{}); err != nil {
		t.Fatal(err)
	}
	h, op, ok := p.Op("mysql-pod-exec", "flush-tables-with-read-lock")
	if !ok {
		t.Fatal("op not found")
	}
	wantK := &KubernetesHook{Namespace: "mysql", LabelSelector: "app=mysql", NameSelector: "mysql-.*", SelectResource: "pod", SinglePodOnly: true}
	if h.Type != HookKubernetes || !reflect.DeepEqual(h.Kubernetes, wantK) {
		t.Errorf("hook: type %s, kubernetes %+v", h.Type, h.Kubernetes)
	}
	if want := (Command{"/bin/bash", "-c", "mysql -e 'FLUSH TABLES WITH READ LOCK'"}); !reflect.DeepEqual(op.Command, want) {
		t.Errorf("command %q", op.Command)
	}
	if h.EffectiveTimeout(op) != 2*time.Minute || h.Timeout.Std() != 5*time.Minute || op.Container != "mysql" {
		t.Errorf("timeouts %v %v, container %q", h.EffectiveTimeout(op), h.Timeout, op.Container)
	}
	_, unlock, _ := p.Op("mysql-pod-exec", "unlock-tables")
	if h.EffectiveOnError(unlock) != OnErrorContinue || h.EffectiveOnError(op) != OnErrorFail || h.EffectiveTimeout(unlock) != 5*time.Minute {
		t.Errorf("unlock inherits wrongly")
	}
	if got := stepStrings(p.Sequence("backup")); !reflect.DeepEqual(got, []string{"hook:mysql-pod-exec/flush-tables-with-read-lock", "snapshot", "hook:mysql-pod-exec/unlock-tables"}) {
		t.Errorf("backup %v", got)
	}
	if got := stepStrings(p.Sequence("restore")); !reflect.DeepEqual(got, []string{"restore", "hook:mysql-pod-exec/unlock-tables"}) {
		t.Errorf("restore %v", got)
	}
}

func TestFusionFieldsOnlyOnPodHooks(t *testing.T) {
	src := strings.Replace(base, "      type: sql\n", "      type: sql\n      namespace: db\n", 1)
	got := problemsOf(t, mustParse(t, src).Validate(nil))
	want := []string{"spec.hooks[0].kubernetes: only kubernetes hooks select pods (kubernetes block, or Fusion namespace/labelSelector/nameSelector/selectResource/singlePodOnly)"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q", got)
	}
	both := strings.Replace(fusion, "    namespace: mysql\n", "    namespace: mysql\n    kubernetes: {namespace: other}\n", 1)
	if _, err := Parse("f.yaml", []byte(both)); err == nil || !strings.Contains(err.Error(), "namespace set both at hook level and in kubernetes") {
		t.Fatalf("both: %v", err)
	}
}

func stepStrings(steps []Step) []string {
	var out []string
	for _, s := range steps {
		out = append(out, s.String())
	}
	return out
}
