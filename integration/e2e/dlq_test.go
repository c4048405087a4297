package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/integration/harness"
	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/pkg/testenv"
)

// TestDeadLettersWithTheCLI runs a real `backstream serve` and handles its
// dead letters with nothing but `backstream dlq` (no terminal: the output
// is a pipe). An outside publisher requests a backup of a plan that is not
// applied yet: hook and snapshot each give up on it. The dead
// letters are listed (table and JSON, filtered) and shown; once the plan is
// applied, one replay of both entries runs the backup to success; a
// second replay is a duplicate. A message too large to keep whole is
// dead-lettered cut and its replay refused. Purging refuses an unknown
// sequence, then removes everything.
func TestDeadLettersWithTheCLI(t *testing.T) {
	dir := t.TempDir()
	port := testenv.FreePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	srv := harness.StartProcess(t, dir, nil, "serve", "--data", filepath.Join(dir, "data"), "--embedded", testenv.Addr(port), "--listen", "")
	srv.WaitOutput("backstream serving", time.Minute)
	cli := func(args ...string) (string, int) {
		t.Helper()
		return harness.Run(t, dir, nil, append(args, "--nats", url)...)
	}
	mustCLI := func(args ...string) string {
		t.Helper()
		out, code := cli(args...)
		if code != 0 {
			t.Fatalf("backstream %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
		return out
	}
	listJSON := func(args ...string) []bus.DeadLetter {
		t.Helper()
		var l []bus.DeadLetter
		out := mustCLI(append([]string{"dlq", "list", "-o", "json"}, args...)...)
		if err := json.Unmarshal([]byte(out), &l); err != nil {
			t.Fatalf("dlq list -o json: %v\n%s", err, out)
		}
		return l
	}

	// An outside publisher, with the trigger role, asks for a backup of a
	// plan nobody applied yet.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	outsider := bustest.ConnectAs(t, url, "outsider", bus.RoleTrigger)
	runID := events.NewID()
	req := events.MustNew(outsider.Meta("late", runID, ""), events.BackupRequestedData{Trigger: events.TriggerEvent, RequestedBy: "ci"})
	if err := outsider.Publish(ctx, req); err != nil {
		t.Fatal(err)
	}
	admin := bustest.Connect(t, url, "test")
	wantConsumers := []string{"hook", "snapshot"}
	var dead []bus.DeadLetter
	deadline := time.Now().Add(time.Minute)
	for {
		l, err := admin.DeadLetters().List(ctx, bus.DeadLetterFilter{Plan: "late"})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, dl := range l {
			got = append(got, dl.Consumer)
		}
		slices.Sort(got)
		if slices.Equal(got, wantConsumers) {
			dead = l
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead letters of plan late by %v, want one by each of %v", got, wantConsumers)
		}
		time.Sleep(100 * time.Millisecond)
	}
	seqs := make([]string, len(dead))
	snapshotSeq := ""
	for i, dl := range dead {
		seqs[i] = strconv.FormatUint(dl.Seq, 10)
		if dl.Consumer == "snapshot" {
			snapshotSeq = seqs[i]
		}
	}

	// Listed as a table, with what an operator needs on one line.
	out := mustCLI("dlq", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !regexp.MustCompile(`^SEQ +TIME +CONSUMER +TYPE +PLAN +RUN +SIZE +REASON$`).MatchString(lines[0]) {
		t.Fatalf("dlq list: want a header and two rows:\n%s", out)
	}
	row := regexp.MustCompile(`(?m)^` + snapshotSeq + ` +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +snapshot +backup\.requested +late +` + runID + ` +\d+ B +.*plan "late".*$`)
	if !row.MatchString(out) {
		t.Errorf("dlq list: no row for the snapshot's dead letter %s of run %s:\n%s", snapshotSeq, runID, out)
	}
	if strings.Contains(out, "\x1b") {
		t.Errorf("dlq list wrote terminal escapes:\n%q", out)
	}
	// As JSON, and filtered.
	if l := listJSON(); len(l) != 2 || l[0].RunID != runID || l[0].Type != events.BackupRequested || l[0].EventID != req.ID() || l[0].Cut {
		t.Errorf("dlq list -o json: %+v", l)
	}
	if l := listJSON("--consumer", "snapshot"); len(l) != 1 || strconv.FormatUint(l[0].Seq, 10) != snapshotSeq {
		t.Errorf("dlq list --consumer snapshot: %+v, want only %s", l, snapshotSeq)
	}
	if l := listJSON("--plan", "late", "--consumer", "hook"); len(l) != 1 || l[0].Consumer != "hook" {
		t.Errorf("dlq list --plan late --consumer hook: %+v", l)
	}
	if out := mustCLI("dlq", "list", "--plan", "other"); strings.TrimSpace(out) != "no dead letters" {
		t.Errorf("dlq list --plan other: %q, want no dead letters", out)
	}

	// Shown: the reason, the headers, the event pretty-printed.
	out = mustCLI("dlq", "show", snapshotSeq)
	for _, want := range []string{
		"consumer     snapshot",
		"subject      " + events.Subject(events.BackupRequested, "late"),
		"run          " + runID,
		`plan "late"`,
		"\nheaders:\n",
		"  " + bus.HeaderDeadFrom + ": snapshot\n",
		"\nevent:\n{\n",
		"\n  \"runid\": \"" + runID + "\"",
		"\n    \"requestedBy\": \"ci\"",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dlq show %s lacks %q:\n%s", snapshotSeq, want, out)
		}
	}

	// A message larger than a dead letter keeps is stored cut, and its
	// replay is refused, saying why.
	big := append([]byte(`{"junk":"`), bytes.Repeat([]byte("x"), bus.DeadLetterMaxData+4096)...)
	if _, err := outsider.JS.Publish(ctx, events.Subject(events.BackupRequested, "junk"), append(big, `"}`...)); err != nil {
		t.Fatal(err)
	}
	var cutSeq string
	deadline = time.Now().Add(time.Minute)
	for cutSeq == "" {
		for _, dl := range listJSON("--plan", "junk", "--consumer", "snapshot") {
			if dl.Cut {
				cutSeq = strconv.FormatUint(dl.Seq, 10)
			}
		}
		if cutSeq == "" && time.Now().After(deadline) {
			t.Fatal("no cut dead letter of plan junk")
		}
	}
	out, code := cli("dlq", "replay", cutSeq)
	if code != 1 || !strings.Contains(out, "replay dead letter "+cutSeq+": dead letter holds only part of its event: it keeps the first 65536 of the event's") ||
		!strings.Contains(out, "cannot be replayed") {
		t.Errorf("dlq replay of a cut dead letter: exit %d, want 1 and why:\n%s", code, out)
	}
	if out := mustCLI("dlq", "show", cutSeq); !strings.Contains(out, "replay       no: the copy keeps only the first 65536 of") {
		t.Errorf("dlq show of a cut dead letter:\n%s", out)
	}

	// The cause fixed: the plan applied. One replay for both entries
	// reaches every consumer, and the run succeeds.
	source := filepath.Join(dir, "late.txt")
	if err := os.WriteFile(source, bytes.Repeat([]byte("late but whole\n"), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	planFile := filepath.Join(dir, "late.yaml")
	if err := os.WriteFile(planFile, []byte(commandPlan("late", filepath.Join(dir, "backups"), fmt.Sprintf(`["cat", %q]`, source), "")), 0o600); err != nil {
		t.Fatal(err)
	}
	mustCLI("plan", "apply", "-f", planFile)
	out = mustCLI(append([]string{"dlq", "replay"}, seqs...)...)
	first := seqs[0]
	if !strings.Contains(out, "replayed dead letter "+first+": backup.requested of plan late (run "+runID+"), on "+events.Subject(events.BackupRequested, "late")) ||
		!strings.Contains(out, "Nats-Msg-Id "+req.ID()+":dlq:"+first) ||
		strings.Count(out, "the same event as "+first) != 1 {
		t.Errorf("dlq replay %v: want one replay and one entry of the same event:\n%s", seqs, out)
	}
	if r := harness.WaitRun(t, runs.NewStore(admin.Runs), runID, 2*time.Minute); r.Phase != runs.Succeeded {
		t.Fatalf("run %s after the replay: %s (%s)", runID, r.Phase, r.Error)
	}
	if out := mustCLI("run", runID); !strings.Contains(out, "phase Succeeded") {
		t.Errorf("backstream run %s:\n%s", runID, out)
	}
	if l := listJSON("--plan", "late"); len(l) != 2 {
		t.Errorf("after the replay %d dead letters of plan late, want both kept (and no new one): %+v", len(l), l)
	}
	out = mustCLI("dlq", "replay", first)
	if !strings.Contains(out, "dead letter "+first+": already replayed within the events stream's duplicate window") {
		t.Errorf("a second replay of %s:\n%s", first, out)
	}

	// Purge: an unknown sequence refuses the whole purge.
	out, code = cli("dlq", "purge", first, "999999")
	if code != 1 || !strings.Contains(out, "purge: no such dead letter: 999999 (nothing purged)") {
		t.Errorf("dlq purge with an unknown sequence: exit %d:\n%s", code, out)
	}
	if l := listJSON("--plan", "late"); len(l) != 2 {
		t.Errorf("a refused purge removed dead letters: %d left", len(l))
	}
	var all []string
	for _, dl := range listJSON() {
		all = append(all, strconv.FormatUint(dl.Seq, 10))
	}
	out = mustCLI(append([]string{"dlq", "purge"}, all...)...)
	if strings.Count(out, "purged dead letter ") != len(all) || !strings.Contains(out, "purged dead letter "+snapshotSeq+": snapshot backup.requested of plan late (run "+runID+")") {
		t.Errorf("dlq purge %v:\n%s", all, out)
	}
	if out := mustCLI("dlq", "list"); strings.TrimSpace(out) != "no dead letters" {
		t.Errorf("dlq list after the purge:\n%s", out)
	}
	if out := mustCLI("dlq", "list", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("dlq list -o json after the purge: %q", out)
	}
	if out, code := cli("dlq", "show", snapshotSeq); code != 1 || !strings.Contains(out, "dead letter "+snapshotSeq+": no such dead letter") {
		t.Errorf("dlq show of a purged dead letter: exit %d:\n%s", code, out)
	}
	if out, code := cli("dlq", "replay", "abc"); code != 2 || !strings.Contains(out, `"abc" is not a dead letter's sequence number`) {
		t.Errorf("dlq replay abc: exit %d:\n%s", code, out)
	}
}
