// Package api is backstream's HTTP API: health, plans, runs, triggers for
// backups, restores, scrubs and drills, and dead letters. It only reads KV, publishes
// trigger events, and replays or deletes dead letters; it never runs a
// stage itself. It never answers anyone it has not
// authenticated (bearer token or client certificate) beyond GET /healthz,
// never lets a role do more than it may, and never takes requestedBy from
// a request body.
package api

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage"
)

// Server serves the API. Every route but GET /healthz needs an
// authenticated identity with a role (see guard).
type Server struct {
	d      *stage.Deps
	log    *slog.Logger
	tokens *tokenFile
	tls    *tls.Config
	mux    *http.ServeMux
}

// New builds the API from cfg (after Prepare): it reads the tokens file and
// the TLS files now, so a bad one stops serve at start.
func New(d *stage.Deps, cfg Config) (*Server, error) {
	s := &Server{d: d, log: d.Log, mux: http.NewServeMux()}
	if s.log == nil {
		s.log = slog.Default()
	}
	if cfg.TokensFile == "" && cfg.ClientCA == "" {
		return nil, errors.New("api: neither a tokens file nor a client CA: no one could use it")
	}
	if cfg.TokensFile != "" {
		t, err := loadTokenFile(cfg.TokensFile)
		if err != nil {
			return nil, fmt.Errorf("--api-tokens: %w", err)
		}
		s.tokens = t
	}
	tc, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	s.tls = tc
	s.mux.HandleFunc("GET /healthz", s.health)
	s.Handle("GET /v1/plans", RoleRead, http.HandlerFunc(s.plans))
	s.Handle("GET /v1/runs", RoleRead, http.HandlerFunc(s.runs))
	s.Handle("GET /v1/runs/{id}", RoleRead, http.HandlerFunc(s.run))
	s.Handle("POST /v1/plans/{plan}/trigger", RoleTrigger, http.HandlerFunc(s.trigger))
	s.Handle("POST /v1/plans/{plan}/restore", RoleRestore, http.HandlerFunc(s.restore))
	s.Handle("POST /v1/plans/{plan}/drill", RoleTrigger, http.HandlerFunc(s.drill))
	s.Handle("POST /v1/plans/{plan}/scrub", RoleTrigger, http.HandlerFunc(s.scrub))
	s.Handle("POST /v1/runs/{id}/cancel", RoleTrigger, http.HandlerFunc(s.cancel))
	s.Handle("POST /v1/runs/{id}/replay", RoleTrigger, http.HandlerFunc(s.replay))
	s.routeDeadLetters() // dlq.go
	return s, nil
}

// Handle serves h on pattern to identities with at least role need (app
// mounts /metrics this way).
func (s *Server) Handle(pattern string, need Role, h http.Handler) {
	s.mux.Handle(pattern, s.guard(need, h))
}

// Handler routes the API. Every request body is bounded by MaxBodyBytes,
// and a path no route knows needs the read role to learn so: without it
// the answer is 401, so nothing can be probed anonymously.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
		if _, pattern := s.mux.Handler(r); pattern == "" {
			s.guard(RoleRead, s.mux).ServeHTTP(w, r)
			return
		}
		s.mux.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, planstore.ErrNotFound), errors.Is(err, runs.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, events.ErrInvalid), errors.Is(err, stage.ErrUnknownDestination), errors.Is(err, runs.ErrBadListOption):
		code = http.StatusBadRequest
	case errors.Is(err, stage.ErrNoDrill):
		code = http.StatusConflict
	case errors.Is(err, planstore.ErrInvalidPlan):
		// The stored plan, not the request, is wrong.
		code = http.StatusConflict
	case errors.Is(err, stage.ErrExecRefused):
		code = http.StatusForbidden
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	if !s.d.Bus.NC.IsConnected() {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "nats disconnected"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) plans(w http.ResponseWriter, r *http.Request) {
	ps, bad, err := s.d.Plans.List(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	// A stored plan that fails validation is listed in its place by name,
	// as {"metadata": {"name"}, "invalid": reason}, never hiding the others.
	byName := map[string]any{}
	for _, p := range ps {
		byName[p.Name()] = p
	}
	for name, err := range bad {
		byName[name] = map[string]any{"metadata": map[string]string{"name": name}, "invalid": err.Error()}
	}
	names := slices.Sorted(maps.Keys(byName))
	out := []any{}
	for _, n := range names {
		out = append(out, byName[n])
	}
	writeJSON(w, http.StatusOK, out)
}

// TriggerRequest is the body of POST /v1/plans/{plan}/trigger (optional).
type TriggerRequest struct {
	Reason string `json:"reason,omitempty"`
	// RequestedBy is accepted for older clients and ignored: the run's
	// requestedBy is always the authenticated identity.
	RequestedBy string `json:"requestedBy,omitempty"`
}

func (s *Server) trigger(w http.ResponseWriter, r *http.Request) {
	var body TriggerRequest
	if !decode(w, r, &body, true) {
		return
	}
	id, _ := IdentityFrom(r.Context())
	runID, err := s.d.RequestBackup(r.Context(), r.PathValue("plan"), events.TriggerAPI, id.RequestedBy(), body.Reason)
	if err != nil {
		writeErr(w, err)
		return
	}
	s.log.Info("api backup requested", "plan", r.PathValue("plan"), "run", runID, "by", id.RequestedBy())
	writeJSON(w, http.StatusAccepted, map[string]string{"runId": runID})
}

// RestoreRequest is the body of POST /v1/plans/{plan}/restore.
type RestoreRequest struct {
	// BackupID names the backup (its run id); "latest" picks the newest verified.
	BackupID    string `json:"backupId"`
	Destination string `json:"destination"`
	// Target overrides where the plan's source restores to; empty restores
	// into the plan's own source, replacing its data.
	Target string `json:"target,omitempty"`
	Create bool   `json:"create,omitempty"`
	// Clean removes what is in the target's way first.
	Clean bool `json:"clean,omitempty"`
	// FallbackOlder lets the restore go on to the previous verified
	// backups once every copy of the chosen one failed its checks.
	FallbackOlder bool `json:"fallbackOlder,omitempty"`
	// Confirm must name the plan when the restore replaces data (Clean, or
	// no Target): a restore that overwrites is never an accident.
	Confirm string `json:"confirm,omitempty"`
	// RequestedBy is accepted for older clients and ignored: the run's
	// requestedBy is always the authenticated identity.
	RequestedBy string `json:"requestedBy,omitempty"`
}

// replaces reports whether the restore overwrites data: it cleans the
// target first, or restores into the plan's own source.
func (q RestoreRequest) replaces() bool { return q.Clean || q.Target == "" }

func (s *Server) restore(w http.ResponseWriter, r *http.Request) {
	var req RestoreRequest
	if !decode(w, r, &req, false) {
		return
	}
	planName := r.PathValue("plan")
	if _, err := s.d.Plans.Get(r.Context(), planName); err != nil {
		writeErr(w, err)
		return
	}
	if req.replaces() && req.Confirm != planName {
		why := "restores into the plan's own source (no target)"
		if req.Clean {
			why = "cleans its target first (clean: true)"
		}
		got := "is missing"
		if req.Confirm != "" {
			got = fmt.Sprintf("is %q, not the plan's name", req.Confirm)
		}
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf(
			"confirm: this restore replaces data: it %s; confirm %s: send \"confirm\": %q to proceed", why, got, planName)})
		return
	}
	id, _ := IdentityFrom(r.Context())
	runID, err := s.d.RequestRestore(r.Context(), planName, events.RestoreRequestedData{
		BackupID:      req.BackupID,
		Destination:   req.Destination,
		Target:        req.Target,
		RequestedBy:   id.RequestedBy(),
		Create:        req.Create,
		Clean:         req.Clean,
		FallbackOlder: req.FallbackOlder,
	})
	if err != nil {
		writeErr(w, err)
		return
	}
	s.log.Info("api restore requested", "plan", planName, "run", runID, "by", id.RequestedBy(),
		"backup", req.BackupID, "destination", req.Destination, "target", req.Target, "clean", req.Clean)
	writeJSON(w, http.StatusAccepted, map[string]string{"runId": runID})
}

// DrillRequest is the body of POST /v1/plans/{plan}/drill (optional).
type DrillRequest struct {
	// BackupID names the backup to drill; empty or "latest" drills the
	// newest backup verified in any destination.
	BackupID string `json:"backupId,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// drill asks for a fire drill: the plan's backup restored into a scratch
// target made for it, never into the plan's source, so the trigger role
// may ask for one. 409 when the plan has no spec.drill.
func (s *Server) drill(w http.ResponseWriter, r *http.Request) {
	var req DrillRequest
	if !decode(w, r, &req, true) {
		return
	}
	if req.BackupID == "latest" {
		req.BackupID = ""
	}
	id, _ := IdentityFrom(r.Context())
	planName := r.PathValue("plan")
	drillID, err := s.d.RequestDrill(r.Context(), planName, events.DrillRequestedData{
		Trigger: events.TriggerAPI, RequestedBy: id.RequestedBy(), Reason: req.Reason, BackupID: req.BackupID})
	if err != nil {
		writeErr(w, err)
		return
	}
	s.log.Info("api drill requested", "plan", planName, "drill", drillID, "by", id.RequestedBy(), "backup", req.BackupID)
	writeJSON(w, http.StatusAccepted, map[string]string{"drillId": drillID})
}

// ScrubRequest is the body of POST /v1/plans/{plan}/scrub (optional).
type ScrubRequest struct {
	// Mode is full or ciphertext; empty: the plan's spec.scrub.mode.
	Mode string `json:"mode,omitempty"`
	// Destination limits the scrub to one destination of the plan.
	Destination string `json:"destination,omitempty"`
	Reason      string `json:"reason,omitempty"`
}

// scrub asks for a scrub of the plan's stored backups. It only reads
// them, and a repair writes a verified copy's own bytes again.
func (s *Server) scrub(w http.ResponseWriter, r *http.Request) {
	var req ScrubRequest
	if !decode(w, r, &req, true) {
		return
	}
	id, _ := IdentityFrom(r.Context())
	planName := r.PathValue("plan")
	scrubID, err := s.d.RequestScrub(r.Context(), planName, events.ScrubRequestedData{
		Trigger: events.TriggerAPI, RequestedBy: id.RequestedBy(), Reason: req.Reason, Mode: req.Mode, Destination: req.Destination})
	if err != nil {
		writeErr(w, err)
		return
	}
	s.log.Info("api scrub requested", "plan", planName, "scrub", scrubID, "by", id.RequestedBy(), "mode", req.Mode, "destination", req.Destination)
	writeJSON(w, http.StatusAccepted, map[string]string{"scrubId": scrubID})
}

// decode reads r's JSON body into v, refusing unknown fields (a misspelt
// "clean" or "confirm" must not pass unnoticed) and more than one value.
// An empty body is an error unless optional. It answers the request itself
// when it returns false.
func decode(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if errors.Is(err, io.EOF) {
		if optional {
			return true
		}
		err = errors.New("empty; want a JSON object")
	}
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value")
	}
	if err == nil {
		return true
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": fmt.Sprintf("body: larger than %d bytes", tooBig.Limit)})
		return false
	}
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body: " + err.Error()})
	return false
}

// runs lists a page of runs, newest first (runs.Store.List): ?plan=P,
// ?limit=N (default runs.DefaultListLimit, at most runs.MaxListLimit) and
// ?before=ID, which a Link header with rel="next" gives for the next page.
func (s *Server) runs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	o := runs.ListOptions{Plan: q.Get("plan"), Before: q.Get("before")}
	var ok bool
	if o.Limit, ok = queryLimit(w, q, runs.DefaultListLimit, runs.MaxListLimit); !ok {
		return
	}
	page, err := s.d.Runs.List(r.Context(), o)
	if err != nil {
		writeErr(w, err)
		return
	}
	if page.Next != "" {
		linkNext(w, "/v1/runs", q, "before", page.Next)
	}
	if page.Runs == nil {
		page.Runs = []*runs.Run{}
	}
	writeJSON(w, http.StatusOK, page.Runs)
}

// queryLimit reads ?limit=, 1 to max, def when absent; a bad one is
// answered 400 naming it (ok false).
func queryLimit(w http.ResponseWriter, q url.Values, def, max int) (n int, ok bool) {
	v := q.Get("limit")
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("limit: %q is not a number from 1 to %d", v, max)})
		return 0, false
	}
	return n, true
}

// linkNext sets the Link header of a page's successor: path with the
// request's query and cursor=value.
func linkNext(w http.ResponseWriter, path string, q url.Values, cursor, value string) {
	next := maps.Clone(q)
	next.Set(cursor, value)
	w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, path, next.Encode()))
}

func (s *Server) run(w http.ResponseWriter, r *http.Request) {
	run, err := s.d.Runs.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, run)
}

// operatedRun loads the run an operator acts on ({id}) and checks that the
// caller may act on it: the route needs the trigger role, a restore run the
// restore role too (doing, e.g. "cancelling", is refused because of why).
// It answers the request itself when ok is false.
func (s *Server) operatedRun(w http.ResponseWriter, r *http.Request, doing, why string) (run *runs.Run, id Identity, ok bool) {
	id, _ = IdentityFrom(r.Context())
	runID := r.PathValue("id")
	run, err := s.d.Runs.Get(r.Context(), runID)
	if err != nil {
		writeErr(w, err)
		return nil, id, false
	}
	if run.Kind == runs.KindRestore && id.Role < RoleRestore {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": fmt.Sprintf(
			"%s restore run %s needs the restore role (%s); %s has %s", doing, runID, why, id.Name, id.Role)})
		return nil, id, false
	}
	return run, id, true
}

// CancelRequest is the body of POST /v1/runs/{id}/cancel (optional).
type CancelRequest struct {
	Reason string `json:"reason,omitempty"`
}

// cancel ends a running run Cancelled. A backup run needs the trigger role
// (who may start a backup may stop one); a restore run the restore role,
// since a restore stopped midway leaves its target partly written.
func (s *Server) cancel(w http.ResponseWriter, r *http.Request) {
	var req CancelRequest
	if !decode(w, r, &req, true) {
		return
	}
	run, id, ok := s.operatedRun(w, r, "cancelling", "it leaves the target partly written")
	if !ok {
		return
	}
	runID := run.ID
	if run.Phase.Done() {
		writeJSON(w, http.StatusConflict, map[string]string{"error": fmt.Sprintf("run %s is %s already: only a running run can be cancelled", runID, run.Phase)})
		return
	}
	who := "api:" + id.Name
	after, _, err := s.d.Ask(r.Context(), "api", runs.Request{Op: runs.OpCancel, Run: runID, Owner: who, Error: req.Reason})
	if err != nil {
		writeErr(w, err)
		return
	}
	if after.Phase != runs.Cancelled {
		writeJSON(w, http.StatusConflict, map[string]string{"error": fmt.Sprintf("run %s ended %s before it could be cancelled", runID, after.Phase)})
		return
	}
	s.log.Info("api run cancelled", "run", runID, "plan", after.Plan, "by", who, "reason", req.Reason)
	writeJSON(w, http.StatusOK, after)
}

// ReplayRequest is the body of POST /v1/runs/{id}/replay (optional).
type ReplayRequest struct {
	// Stage is where the attempt starts (verify, a hook step, retention);
	// empty: where the run failed.
	Stage string `json:"stage,omitempty"`
	// FromStart runs the whole workflow again.
	FromStart bool `json:"fromStart,omitempty"`
}

// replay starts the next attempt of a failed or cancelled run. A backup
// run needs the trigger role; a restore run the restore role, since its
// replay writes into the target again.
func (s *Server) replay(w http.ResponseWriter, r *http.Request) {
	var req ReplayRequest
	if !decode(w, r, &req, true) {
		return
	}
	stageName := req.Stage
	if req.FromStart {
		if stageName != "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body: stage and fromStart exclude each other"})
			return
		}
		stageName = runs.ReplayStart
	}
	run, id, ok := s.operatedRun(w, r, "replaying", "it writes into the target again")
	if !ok {
		return
	}
	runID := run.ID
	who := "api:" + id.Name
	after, o, err := s.d.Ask(r.Context(), "api", runs.Request{Op: runs.OpReplay, Run: runID, Step: stageName, Owner: who})
	if errors.Is(err, runs.ErrNotReplayable) {
		writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
		return
	}
	if err != nil {
		writeErr(w, err)
		return
	}
	s.log.Info("api run replayed", "run", runID, "plan", after.Plan, "attempt", after.CurrentAttempt(), "stage", o.Stage, "by", who)
	writeJSON(w, http.StatusAccepted, map[string]any{"runId": runID, "attempt": after.CurrentAttempt(), "stage": o.Stage, "reused": o.Reused})
}
