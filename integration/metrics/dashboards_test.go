package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/influxdata/influxdb-client-go/v2/api/write"
	"gopkg.in/yaml.v3"
)

// knownData writes the fixture every dashboard and alert query is judged
// against: plan a succeeded an hour ago, plan b 30 hours ago, plan c never
// (it only failed, and the watchdog reported it missing, as it did b); b
// and c owe inverse ops, a owed one and paid it. Cancelled runs, with the
// points the metrics stage makes for backup.cancelled (a backup_run with
// status cancelled, no backup_stage): a's after its success, c's before
// its failure, and plan e's, the only run e ever had.
func knownData(t *testing.T, influxURL string, now time.Time) {
	t.Helper()
	c := influxdb2.NewClient(influxURL, "")
	defer c.Close()
	w := c.WriteAPIBlocking("", database)
	p := influxdb2.NewPoint
	tags := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	run := map[string]any{"duration_s": 12.5, "bytes_in": int64(4 << 20), "bytes_out": int64(1 << 20), "ratio": 4.0, "chunks": int64(16), "throughput_bps": float64(4<<20) / 12.5}
	pts := []*write.Point{
		p("backup_success", tags("plan", "a", "source", "mariadb", "destination", "s3"), map[string]any{"value": true}, now.Add(-time.Hour)),
		p("backup_run", tags("plan", "a", "status", "succeeded", "trigger", "schedule"), run, now.Add(-time.Hour)),
		p("backup_stage", tags("plan", "a", "stage", "snapshot", "status", "succeeded"), map[string]any{"duration_s": 10.0}, now.Add(-time.Hour-time.Second)),
		p("backup_success", tags("plan", "b", "source", "postgres", "destination", "s3"), map[string]any{"value": true}, now.Add(-30*time.Hour)),
		p("backup_run", tags("plan", "b", "status", "succeeded", "trigger", "schedule"), run, now.Add(-30*time.Hour)),
		p("backup_run", tags("plan", "b", "status", "failed", "trigger", "schedule"), map[string]any{"duration_s": 3.0, "error": "upload local: disk full", "failed_stage": "upload"}, now.Add(-5*time.Hour)),
		p("backup_stage", tags("plan", "b", "stage", "upload", "status", "failed"), map[string]any{"error": "upload local: disk full"}, now.Add(-5*time.Hour)),
		p("backup_missed", tags("plan", "b"), map[string]any{"value": int64(1), "slot": now.Add(-90 * time.Minute).Unix()}, now.Add(-30*time.Minute)),
		p("backup_run", tags("plan", "c", "status", "failed", "trigger", "cli"), map[string]any{"duration_s": 1.0, "error": "snapshot: exit status 2", "failed_stage": "snapshot"}, now.Add(-2*time.Hour)),
		p("backup_stage", tags("plan", "c", "stage", "snapshot", "status", "failed"), map[string]any{"error": "snapshot: exit status 2"}, now.Add(-2*time.Hour)),
		p("backup_missed", tags("plan", "c"), map[string]any{"value": int64(1), "slot": now.Add(-80 * time.Minute).Unix()}, now.Add(-20*time.Minute)),
		p("backup_run", tags("plan", "a", "status", "cancelled", "trigger", "cli"), map[string]any{"duration_s": 40.0, "by": "cli:alice", "reason": "wrong window", "steps": "snapshot,filter"}, now.Add(-30*time.Minute)),
		p("backup_run", tags("plan", "c", "status", "cancelled", "trigger", "schedule"), map[string]any{"duration_s": 5.0, "by": "api:ops"}, now.Add(-4*time.Hour)),
		p("backup_run", tags("plan", "e", "status", "cancelled", "trigger", "api"), map[string]any{"duration_s": 8.0, "by": "api:ops", "reason": "maintenance", "steps": "db/lock"}, now.Add(-3*time.Hour)),
		// Owed inverse ops: a's was paid, b's is owed now, c's since the
		// watchdog last wrote (6 hours ago).
		p("compensation_owed", tags("plan", "a"), map[string]any{"owed": int64(1)}, now.Add(-3*time.Hour)),
		p("compensation_owed", tags("plan", "a"), map[string]any{"owed": int64(0)}, now.Add(-2*time.Hour)),
		p("compensation_owed", tags("plan", "b"), map[string]any{"owed": int64(0)}, now.Add(-5*time.Hour)),
		p("compensation_owed", tags("plan", "b"), map[string]any{"owed": int64(1)}, now.Add(-10*time.Minute)),
		p("compensation_owed", tags("plan", "c"), map[string]any{"owed": int64(2)}, now.Add(-6*time.Hour)),
	}
	pts = append(pts, drillData(now)...)
	pts = append(pts, scrubData(now)...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.WritePoint(ctx, pts...); err != nil {
		t.Fatalf("write fixture: %v", err)
	}
}

// drillData are backup_drill points as the metrics stage makes them: a's
// drill failed three days ago and succeeded since; b's succeeded five days
// ago and its newest slot was missed; c's failed two hours ago; e's failed,
// then its next slot was missed (red, not orange: the newest drill that ran
// failed).
func drillData(now time.Time) []*write.Point {
	p := influxdb2.NewPoint
	ok := func(plan string, at time.Time) *write.Point {
		return p("backup_drill", map[string]string{"plan": plan, "status": "succeeded"}, map[string]any{"success": int64(1), "bytes": int64(1 << 20),
			"rows": int64(1), "restore_ms": int64(900), "check_ms": int64(20), "duration_ms": int64(1000), "backup_id": "01JNR4S7T0000000000000000A", "destination": "s3"}, at)
	}
	failed := func(plan, stage string, at time.Time) *write.Point {
		return p("backup_drill", map[string]string{"plan": plan, "status": "failed", "stage": stage}, map[string]any{"success": int64(0),
			"duration_ms": int64(500), "error": stage + ": it broke"}, at)
	}
	missed := func(plan string, at time.Time) *write.Point {
		return p("backup_drill", map[string]string{"plan": plan, "status": "missed"}, map[string]any{"success": int64(0), "slot": at.Add(-time.Hour).Unix()}, at)
	}
	return []*write.Point{
		failed("a", "restore", now.Add(-72*time.Hour)),
		ok("a", now.Add(-24*time.Hour)),
		ok("b", now.Add(-120*time.Hour)),
		missed("b", now.Add(-time.Hour)),
		failed("c", "check", now.Add(-2*time.Hour)),
		failed("e", "prepare", now.Add(-6*time.Hour)),
		missed("e", now.Add(-time.Hour)),
	}
}

// scrubData are backup_scrub points as the metrics stage makes them (one
// per destination, tagged with the scrub's status): a's scrub three days
// ago left a copy damaged, yesterday's found everything whole; b's left one
// damaged two hours ago; c's was clean, then its newest scrub failed; e's
// repaired a copy; f's left a copy in local damaged and a later scrub of s3
// alone was clean; g's could not reach nas.
func scrubData(now time.Time) []*write.Point {
	type dest struct {
		name                                   string
		corrupt, missing, repaired, unrepaired int64
		err                                    string
	}
	scrub := func(plan, status string, at time.Time, ds ...dest) []*write.Point {
		var out []*write.Point
		for _, d := range ds {
			f := map[string]any{"checked": int64(4), "verified": 4 - d.corrupt, "corrupt": d.corrupt, "missing": d.missing, "repaired": d.repaired,
				"unrepaired": d.unrepaired, "bytes": int64(4 << 20), "duration_ms": int64(3000), "incomplete": int64(0)}
			if d.err != "" {
				f["incomplete"], f["error"] = int64(1), d.err
			}
			out = append(out, influxdb2.NewPoint("backup_scrub", map[string]string{"plan": plan, "destination": d.name, "mode": "ciphertext", "status": status}, f, at))
		}
		return out
	}
	var pts []*write.Point
	for _, s := range [][]*write.Point{
		scrub("a", "damaged", now.Add(-72*time.Hour), dest{name: "local", corrupt: 1, unrepaired: 1}, dest{name: "s3"}),
		scrub("a", "clean", now.Add(-24*time.Hour), dest{name: "local"}, dest{name: "s3"}),
		scrub("b", "damaged", now.Add(-2*time.Hour), dest{name: "local", missing: 1, unrepaired: 1}, dest{name: "s3"}),
		scrub("c", "clean", now.Add(-48*time.Hour), dest{name: "local"}),
		{influxdb2.NewPoint("backup_scrub", map[string]string{"plan": "c", "status": "failed"}, map[string]any{"error": "full mode without a key"}, now.Add(-time.Hour))},
		scrub("e", "repaired", now.Add(-5*time.Hour), dest{name: "local", corrupt: 1, repaired: 1}, dest{name: "s3"}),
		scrub("f", "damaged", now.Add(-48*time.Hour), dest{name: "local", corrupt: 1, unrepaired: 1}, dest{name: "s3"}),
		scrub("f", "clean", now.Add(-time.Hour), dest{name: "s3"}),
		scrub("g", "incomplete", now.Add(-3*time.Hour), dest{name: "local"}, dest{name: "nas", err: "list nas: connection refused"}),
	} {
		pts = append(pts, s...)
	}
	return pts
}

type dashboard struct {
	Time struct {
		From string `json:"from"`
	} `json:"time"`
	Templating struct {
		List []struct {
			Name    string `json:"name"`
			Type    string `json:"type"`
			Query   string `json:"query"`
			Current struct {
				Value string `json:"value"`
			} `json:"current"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	Title   string `json:"title"`
	Targets []struct {
		RefID string `json:"refId"`
		Query string `json:"query"`
	} `json:"targets"`
	FieldConfig struct {
		Defaults struct {
			Thresholds struct {
				Steps []struct {
					Color string   `json:"color"`
					Value *float64 `json:"value"`
				} `json:"steps"`
			} `json:"thresholds"`
			Mappings []struct {
				Options map[string]struct {
					Text  string `json:"text"`
					Color string `json:"color"`
				} `json:"options"`
			} `json:"mappings"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
}

// color is what Grafana paints value v with: a value mapping's colour when
// one matches, else the colour of the highest threshold step at or below v.
func (p panel) color(v float64) string {
	for _, m := range p.FieldConfig.Defaults.Mappings {
		if o, ok := m.Options[fmt.Sprint(v)]; ok && o.Color != "" {
			return o.Color
		}
	}
	c := ""
	for _, s := range p.FieldConfig.Defaults.Thresholds.Steps {
		if s.Value == nil || v >= *s.Value {
			c = s.Color
		}
	}
	return c
}

func (p panel) text(v float64) string {
	for _, m := range p.FieldConfig.Defaults.Mappings {
		if o, ok := m.Options[fmt.Sprint(v)]; ok {
			return o.Text
		}
	}
	return ""
}

// grafanaFlux prepares a panel's query as Grafana would: dashboard
// variables substituted and the v record of the time range defined.
func grafanaFlux(q string, vars map[string]string, from string) string {
	for k, v := range vars {
		q = strings.ReplaceAll(q, "${"+k+"}", v)
	}
	return fmt.Sprintf("v = {timeRangeStart: %s, timeRangeStop: now(), windowPeriod: 1m}\n", from) + q
}

func num(v any) float64 {
	switch x := v.(type) {
	case int64:
		return float64(x)
	case float64:
		return x
	case uint64:
		return float64(x)
	}
	return math.NaN()
}

func byPlan(rows []map[string]any, key string) map[string]float64 {
	out := map[string]float64{}
	for _, r := range rows {
		out[fmt.Sprint(r[key])] = num(r["_value"])
	}
	return out
}

func keys(rows []map[string]any, cols ...string) []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range rows {
		var parts []string
		for _, c := range cols {
			parts = append(parts, fmt.Sprint(r[c]))
		}
		k := strings.Join(parts, " ")
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// TestDashboardQueries runs every query of dashboards/backstream.json
// against the known data and checks what each panel would show.
func TestDashboardQueries(t *testing.T) {
	influx := startInflux(t)
	knownData(t, influx.URL(), time.Now())

	b, err := os.ReadFile("../../dashboards/backstream.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard json: %v", err)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Query
		if v.Current.Value != "" {
			vars[v.Name] = v.Current.Value
		}
	}
	if vars["bucket"] != database || vars["window"] != "25h" {
		t.Fatalf("dashboard variables %v: want bucket %s and window 25h", vars, database)
	}
	from := "-" + strings.TrimPrefix(d.Time.From, "now-")

	checks := map[string]func(t *testing.T, p panel, rows []map[string]any){
		// a's cancellation after its success leaves it OK; e's only run was
		// cancelled: its own colour; c was cancelled before it failed: red.
		"Plan status": func(t *testing.T, p panel, rows []map[string]any) {
			got := byPlan(rows, "plan")
			want := map[string]string{"a": "green OK", "b": "red NO SUCCESS", "c": "red NO SUCCESS", "e": "blue CANCELLED"}
			for plan, cell := range want {
				v, ok := got[plan]
				if shown := p.color(v) + " " + p.text(v); !ok || shown != cell {
					t.Errorf("plan %s: value %v (present %v) shows %q, want %q", plan, v, ok, shown, cell)
				}
			}
			if len(got) != len(want) {
				t.Errorf("cells %v, want one per plan a, b, c, e", got)
			}
		},
		"Time since last success": func(t *testing.T, p panel, rows []map[string]any) {
			got := byPlan(rows, "plan")
			if a := got["a"]; math.Abs(a-3600) > 300 || p.color(a) != "green" {
				t.Errorf("plan a: %v s (%s), want about 3600 s, green", a, p.color(a))
			}
			if b := got["b"]; math.Abs(b-30*3600) > 300 || p.color(b) != "red" {
				t.Errorf("plan b: %v s (%s), want about 108000 s, red", b, p.color(b))
			}
			for _, plan := range []string{"c", "e"} {
				if v, ok := got[plan]; !ok || p.text(v) != "never" || p.color(v) != "red" {
					t.Errorf("plan %s: %v (present %v) shows %q in %s, want never in red", plan, v, ok, p.text(v), p.color(v))
				}
			}
		},
		"Run duration":      plansAre("a", "b"),
		"Throughput":        plansAre("a", "b"),
		"Compression ratio": plansAre("a", "b"),
		"Bytes in and stored": func(t *testing.T, p panel, rows []map[string]any) {
			want := []string{"a bytes_in", "a bytes_out", "b bytes_in", "b bytes_out"}
			if got := keys(rows, "plan", "_field"); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("series %v, want %v", got, want)
			}
		},
		"Failures by stage": func(t *testing.T, p panel, rows []map[string]any) {
			if got := byPlan(rows, "stage"); len(got) != 2 || got["snapshot"] != 1 || got["upload"] != 1 {
				t.Errorf("failures by stage %v, want snapshot 1, upload 1", got)
			}
		},
		"Latest errors": func(t *testing.T, p panel, rows []map[string]any) {
			if len(rows) != 2 || rows[0]["plan"] != "c" || rows[0]["failed_stage"] != "snapshot" || rows[0]["error"] != "snapshot: exit status 2" ||
				rows[1]["plan"] != "b" || rows[1]["failed_stage"] != "upload" {
				t.Errorf("latest errors %v, want c's snapshot failure, then b's upload failure", rows)
			}
		},
		"Missed successes (watchdog)": plansAre("b", "c"),
		// a failed, then succeeded; b's newest slot was missed after a
		// success; c failed; e failed and then missed a slot.
		"Drill status": cells(map[string]string{"a": "green SUCCEEDED", "b": "orange OVERDUE", "c": "red FAILED", "e": "red FAILED"}),
		// a's damage was found whole again; f's damage in local stands
		// though a later scrub of s3 alone was clean.
		"Scrub status": cells(map[string]string{"a": "green CLEAN", "b": "red DAMAGED", "c": "red FAILED", "e": "yellow REPAIRED",
			"f": "red DAMAGED", "g": "grey INCOMPLETE"}),
		"Cancelled runs": func(t *testing.T, p panel, rows []map[string]any) {
			want := []string{
				"a cli cli:alice wrong window snapshot,filter",
				"e api api:ops maintenance db/lock",
				"c schedule api:ops <nil> <nil>",
			}
			var got []string
			for _, r := range rows {
				got = append(got, fmt.Sprint(r["plan"], " ", r["trigger"], " ", r["by"], " ", r["reason"], " ", r["steps"]))
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("cancelled runs, newest first:\n got %q\nwant %q", got, want)
			}
		},
	}
	for _, p := range d.Panels {
		t.Run(p.Title, func(t *testing.T) {
			check, ok := checks[p.Title]
			if !ok {
				t.Fatalf("panel %q has no check: every dashboard query must be tested", p.Title)
			}
			if len(p.Targets) != 1 {
				t.Fatalf("%d targets, want 1", len(p.Targets))
			}
			rows, err := flux(t, influx, grafanaFlux(p.Targets[0].Query, vars, from))
			if err != nil {
				t.Fatalf("query: %v", err)
			}
			check(t, p, rows)
		})
	}
	if len(d.Panels) != len(checks) {
		t.Errorf("%d panels, %d checks", len(d.Panels), len(checks))
	}
}

// cells checks a status panel: one cell per plan, each showing its colour
// and text.
func cells(want map[string]string) func(t *testing.T, p panel, rows []map[string]any) {
	return func(t *testing.T, p panel, rows []map[string]any) {
		t.Helper()
		got := byPlan(rows, "plan")
		for plan, cell := range want {
			v, ok := got[plan]
			if shown := p.color(v) + " " + p.text(v); !ok || shown != cell {
				t.Errorf("plan %s: value %v (present %v) shows %q, want %q", plan, v, ok, shown, cell)
			}
		}
		if len(got) != len(want) {
			t.Errorf("cells %v, want one for each of %v", got, want)
		}
	}
}

func plansAre(want ...string) func(t *testing.T, p panel, rows []map[string]any) {
	return func(t *testing.T, p panel, rows []map[string]any) {
		t.Helper()
		if got := keys(rows, "plan"); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("plans %v, want %v", got, want)
		}
	}
}

type alertFile struct {
	Groups []struct {
		Rules []struct {
			UID       string `yaml:"uid"`
			Title     string `yaml:"title"`
			Condition string `yaml:"condition"`
			Data      []struct {
				RefID             string `yaml:"refId"`
				DatasourceUID     string `yaml:"datasourceUid"`
				RelativeTimeRange struct {
					From int `yaml:"from"`
				} `yaml:"relativeTimeRange"`
				Model struct {
					Query      string `yaml:"query"`
					Type       string `yaml:"type"`
					Expression string `yaml:"expression"`
					Reducer    string `yaml:"reducer"`
					Conditions []struct {
						Evaluator struct {
							Type   string    `yaml:"type"`
							Params []float64 `yaml:"params"`
						} `yaml:"evaluator"`
					} `yaml:"conditions"`
				} `yaml:"model"`
			} `yaml:"data"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// readAlerts reads the provisioned alert rules.
func readAlerts(t *testing.T) alertFile {
	t.Helper()
	b, err := os.ReadFile("../../dashboards/provisioning/alerting/backstream.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var f alertFile
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("alert rules: %v", err)
	}
	return f
}

// TestAlertRules runs every alert rule's query against the known data and
// evaluates its reduce and threshold steps: each backup rule fires for
// plans b and c, the drill and scrub rules as want says.
// No rule fires for a cancellation as such (a's, after its success); the
// success-missing rule fires for e, whose only run was cancelled, because
// e has no backup: a cancelled run is no success.
func TestAlertRules(t *testing.T) {
	influx := startInflux(t)
	knownData(t, influx.URL(), time.Now())
	f := readAlerts(t)
	want := map[string]string{
		"backstream-success-missing":   "[b c e]",
		"backstream-backup-missed":     "[b c]",
		"backstream-compensation-owed": "[b c]",
		// A failed drill (c), a missed one (b), both (e); not a's, whose
		// failure a later success cleared.
		"backstream-drill-failed": "[b c e]",
		// Unrepaired damage (b; f's in one destination, though a later
		// scrub of another was clean) or a failed scrub (c); not a's,
		// whose damage a later scrub found whole.
		"backstream-scrub-damage": "[b c f]",
		// A repaired copy (e) and a destination that could not be
		// scrubbed (g) are a warning.
		"backstream-scrub-repaired": "[e g]",
	}
	n := 0
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			n++
			t.Run(r.Title, func(t *testing.T) {
				var rows []map[string]any
				var reducer, cond string
				var limit float64
				for _, d := range r.Data {
					switch {
					case d.DatasourceUID == "backstream-influxdb":
						from := fmt.Sprintf("-%ds", d.RelativeTimeRange.From)
						var err error
						rows, err = flux(t, influx, grafanaFlux(d.Model.Query, nil, from))
						if err != nil {
							t.Fatalf("query %s: %v", d.RefID, err)
						}
					case d.Model.Type == "reduce":
						reducer = d.Model.Reducer
					case d.Model.Type == "threshold" && d.RefID == r.Condition:
						cond, limit = d.Model.Conditions[0].Evaluator.Type, d.Model.Conditions[0].Evaluator.Params[0]
					}
				}
				if reducer != "last" {
					t.Fatalf("reducer %q: the test evaluates last only", reducer)
				}
				// Rows come per plan in time order: the last one is the reduction.
				var firing []string
				for plan, v := range byPlan(rows, "plan") {
					if (cond == "lt" && v < limit) || (cond == "gt" && v > limit) {
						firing = append(firing, plan)
					}
				}
				sort.Strings(firing)
				if w, ok := want[r.UID]; !ok || fmt.Sprint(firing) != w {
					t.Errorf("rule %s fires for %v, want %s (rows %v)", r.UID, firing, w, rows)
				}
			})
		}
	}
	if n != len(want) {
		t.Errorf("%d rules, want %d", n, len(want))
	}
}
