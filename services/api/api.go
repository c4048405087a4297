// Package api is backstream's HTTP API: health, plans, runs, and triggers
// for backups and restores. It only reads KV and publishes trigger events;
// it never runs a stage itself.
package api

import (
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"slices"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/planstore"
	"github.com/backstream/backstream/pkg/runs"
	"github.com/backstream/backstream/services/stage"
)

// Server serves the API.
type Server struct{ d *stage.Deps }

// New builds the API.
func New(d *stage.Deps) *Server { return &Server{d: d} }

// Handler routes the API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.health)
	mux.HandleFunc("GET /v1/plans", s.plans)
	mux.HandleFunc("POST /v1/plans/{plan}/trigger", s.trigger)
	mux.HandleFunc("POST /v1/plans/{plan}/restore", s.restore)
	mux.HandleFunc("GET /v1/runs", s.runs)
	mux.HandleFunc("GET /v1/runs/{id}", s.run)
	return mux
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
	case errors.Is(err, events.ErrInvalid):
		code = http.StatusBadRequest
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

func (s *Server) trigger(w http.ResponseWriter, r *http.Request) {
	var body struct {
		RequestedBy string `json:"requestedBy"`
		Reason      string `json:"reason"`
	}
	if r.ContentLength > 0 {
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body: " + err.Error()})
			return
		}
	}
	id, err := s.d.RequestBackup(r.Context(), r.PathValue("plan"), events.TriggerAPI, body.RequestedBy, body.Reason)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"runId": id})
}

func (s *Server) restore(w http.ResponseWriter, r *http.Request) {
	var req events.RestoreRequestedData
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body: " + err.Error()})
		return
	}
	id, err := s.d.RequestRestore(r.Context(), r.PathValue("plan"), req)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"runId": id})
}

func (s *Server) runs(w http.ResponseWriter, r *http.Request) {
	list, err := s.d.Runs.List(r.Context(), r.URL.Query().Get("plan"))
	if err != nil {
		writeErr(w, err)
		return
	}
	if list == nil {
		list = []*runs.Run{}
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) run(w http.ResponseWriter, r *http.Request) {
	run, err := s.d.Runs.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, run)
}
