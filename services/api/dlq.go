package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/backstream/backstream/events"
	"github.com/backstream/backstream/pkg/bus"
)

// routeDeadLetters serves the dead letters (bus.DeadLetters). Reading them
// needs the read role. A replay may re-drive any event, a restore.requested
// that overwrites a database included, so it needs the restore role; so
// does a purge, which destroys the evidence of a failure (restore is the
// strongest role short of admin).
func (s *Server) routeDeadLetters() {
	s.Handle("GET /v1/dlq", RoleRead, http.HandlerFunc(s.deadLetters))
	s.Handle("GET /v1/dlq/{seq}", RoleRead, http.HandlerFunc(s.deadLetter))
	s.Handle("POST /v1/dlq/{seq}/replay", RoleRestore, http.HandlerFunc(s.replayDeadLetter))
	s.Handle("DELETE /v1/dlq/{seq}", RoleRestore, http.HandlerFunc(s.purgeDeadLetter))
}

// DeadLetterResponse is the body of GET /v1/dlq/{seq}: the entry, its
// headers, and what it stores.
type DeadLetterResponse struct {
	bus.DeadLetter
	Headers map[string][]string `json:"headers"`
	// Event is the stored event when it is JSON (secrets were redacted
	// when it was first published).
	Event json.RawMessage `json:"event,omitempty"`
	// Data is the stored bytes (base64) when they are not JSON: a cut
	// copy, or a message that never was a CloudEvent.
	Data []byte `json:"data,omitempty"`
}

func (s *Server) deadLetters(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := bus.DeadLetterFilter{Consumer: q.Get("consumer"), Plan: q.Get("plan")}
	if err := f.Validate(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	var ok bool
	if f.Limit, ok = queryLimit(w, q, bus.DefaultDeadLetterLimit, bus.MaxDeadLetterLimit); !ok {
		return
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("after: %q is not a dead letter's sequence", v)})
			return
		}
		f.After = n
	}
	list, err := s.d.Bus.DeadLetters().List(r.Context(), f)
	if err != nil {
		writeDeadLetterErr(w, err)
		return
	}
	if len(list) == f.Limit {
		linkNext(w, "/v1/dlq", q, "after", strconv.FormatUint(list[len(list)-1].Seq, 10))
	}
	if list == nil {
		list = []bus.DeadLetter{}
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) deadLetter(w http.ResponseWriter, r *http.Request) {
	seq, ok := pathSeq(w, r)
	if !ok {
		return
	}
	c, err := s.d.Bus.DeadLetters().Get(r.Context(), seq)
	if err != nil {
		writeDeadLetterErr(w, err)
		return
	}
	resp := DeadLetterResponse{DeadLetter: c.DeadLetter, Headers: c.Header}
	if !c.Cut && json.Valid(c.Data) {
		resp.Event = c.Data
	} else {
		resp.Data = c.Data
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) replayDeadLetter(w http.ResponseWriter, r *http.Request) {
	seq, ok := pathSeq(w, r)
	if !ok {
		return
	}
	res, err := s.d.Bus.DeadLetters().Replay(r.Context(), seq)
	var refused *bus.PublishRefusedError
	if errors.As(err, &refused) {
		// A split deployment's api role publishes requests only: a
		// replay of any other event would let the API forge outcomes.
		writeJSON(w, http.StatusForbidden, map[string]string{"error": fmt.Sprintf(
			"the api's NATS user may not publish %s; replay with `backstream dlq replay %d` as admin", refused.Subject, seq)})
		return
	}
	if err != nil {
		writeDeadLetterErr(w, err)
		return
	}
	id, _ := IdentityFrom(r.Context())
	s.log.Info("api dead letter replayed", "seq", seq, "subject", res.Subject, "id", res.EventID,
		"eventSeq", res.EventSeq, "duplicate", res.Duplicate, "by", id.RequestedBy())
	writeJSON(w, http.StatusAccepted, res)
}

func (s *Server) purgeDeadLetter(w http.ResponseWriter, r *http.Request) {
	seq, ok := pathSeq(w, r)
	if !ok {
		return
	}
	done, err := s.d.Bus.DeadLetters().Purge(r.Context(), seq)
	if err != nil {
		writeDeadLetterErr(w, err)
		return
	}
	id, _ := IdentityFrom(r.Context())
	for _, dl := range done {
		s.log.Info("api dead letter purged", "seq", dl.Seq, "consumer", dl.Consumer, "type", dl.Type,
			"plan", dl.Plan, "runid", dl.RunID, "by", id.RequestedBy())
	}
	writeJSON(w, http.StatusOK, done[0])
}

// pathSeq reads {seq}; it answers the request itself when it returns false.
func pathSeq(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	raw := r.PathValue("seq")
	seq, err := strconv.ParseUint(raw, 10, 64)
	if err != nil || seq == 0 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("seq %q: want a dead letter's sequence number (a positive integer)", truncate(raw, 64))})
		return 0, false
	}
	return seq, true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// writeDeadLetterErr answers a failed dead-letter operation: an unknown
// sequence is 404; a dead letter that cannot be replayed (cut, or still
// refused by the event contract) is 409, since the stored entry and not
// the request is what is wrong.
func writeDeadLetterErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, bus.ErrNoDeadLetter):
		code = http.StatusNotFound
	case errors.Is(err, bus.ErrDeadLetterCut), errors.Is(err, events.ErrInvalid):
		code = http.StatusConflict
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
