package runs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// Owner is the owner of run state as a stage sees it: the one writer of
// the runs bucket, which applies the transitions stages ask for.
//
// Ask applies req (Permit decides whether stage may ask it) and returns
// the record after it and the transition's outcome. A request may be asked
// again after an error or a lost reply: every transition is idempotent or
// answers a repeat the way it answered first (OpFail announces again for
// the same cause, OpClaim answers Done or Interrupted). Errors wrapping
// ErrRefused, ErrBadRequest, ErrNotOwner or ErrNotFailed mean asking again
// cannot help; ErrNotFound that the run has no record; any other error is
// transient.
type Owner interface {
	Ask(ctx context.Context, stage string, req Request) (*Run, Outcome, error)
}

// ControlRoot is the subject root of transition requests:
// ControlRoot.<stage>. A stage's NATS user may publish on its own subject
// only, so the owner knows who asks.
const ControlRoot = "bs.control"

// ControlSubject is the subject stage asks on.
func ControlSubject(stage string) string { return ControlRoot + "." + stage }

// Reply is the owner's answer on the wire.
type Reply struct {
	Run     *Run    `json:"run,omitempty"`
	Outcome Outcome `json:"outcome,omitzero"`
	Error   string  `json:"error,omitempty"`
	// Code names the sentinel Error wraps: refused, badRequest, notOwner,
	// notFound, nothingOwed, notReplayable, notFailed, stale; empty for a transient error.
	Code string `json:"code,omitempty"`
}

var codes = map[string]error{
	"refused":       ErrRefused,
	"badRequest":    ErrBadRequest,
	"notOwner":      ErrNotOwner,
	"notFound":      ErrNotFound,
	"nothingOwed":   ErrNothingOwed,
	"notReplayable": ErrNotReplayable,
	"notFailed":     ErrNotFailed,
	"stale":         ErrStale,
}

// ReplyOf is the wire form of an owner's answer.
func ReplyOf(r *Run, o Outcome, err error) Reply {
	rep := Reply{Run: r, Outcome: o}
	if err != nil {
		rep.Run = nil
		rep.Error = err.Error()
		for code, sentinel := range codes {
			if errors.Is(err, sentinel) {
				rep.Code = code
			}
		}
	}
	return rep
}

// remoteError is an owner's error as a stage receives it.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// DefaultAskTimeout bounds one request to the owner.
const DefaultAskTimeout = 15 * time.Second

// Remote asks the owner over NATS request/reply.
type Remote struct {
	NC *nats.Conn
	// Timeout bounds one request (DefaultAskTimeout when zero).
	Timeout time.Duration
}

var _ Owner = Remote{}

// Ask implements Owner.
func (c Remote) Ask(ctx context.Context, stage string, req Request) (*Run, Outcome, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return nil, Outcome{}, fmt.Errorf("ask %s of run %s: %w", req.Op, req.Run, err)
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultAskTimeout
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg, err := c.NC.RequestWithContext(rctx, ControlSubject(stage), data)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			err = fmt.Errorf("%w: no control service answers on %s (run one: serve --services control)", err, ControlSubject(stage))
		}
		return nil, Outcome{}, fmt.Errorf("ask %s of run %s: %w", req.Op, req.Run, err)
	}
	var rep Reply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return nil, Outcome{}, fmt.Errorf("ask %s of run %s: decode reply: %w", req.Op, req.Run, err)
	}
	if rep.Error != "" {
		return nil, rep.Outcome, &remoteError{msg: rep.Error, sentinel: codes[rep.Code]}
	}
	return rep.Run, rep.Outcome, nil
}
