package bus

import (
	"testing"
	"time"
)

// TestOwnedBufferIsFreeOnlyAfterEveryHold: a WriteOwned buffer goes back to
// the writer's free list when the last of its holds (the writer's own, the
// stored JetStream copy, each local reader's ack) is released, in any order.
func TestOwnedBufferIsFreeOnlyAfterEveryHold(t *testing.T) {
	tests := []struct {
		name  string
		holds int // besides the writer's own
	}{
		{"jetstream copy only", 1},
		{"jetstream copy and a local reader", 2},
		{"two local readers and a jetstream copy", 3},
		{"no reader left", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			free := make(chan []byte, 1)
			o := newOwnedBuf(make([]byte, 8), free)
			for range tt.holds {
				o.hold()
			}
			for i := range tt.holds + 1 {
				if len(free) != 0 {
					t.Fatalf("free after %d of %d releases", i, tt.holds+1)
				}
				o.release()
			}
			if len(free) != 1 {
				t.Fatal("not free after every release")
			}
		})
	}
}

// TestALocalAckCountsOnce: acking a local chunk twice returns one token.
func TestALocalAckCountsOnce(t *testing.T) {
	p := newPipe(pipeKey{"run", KindRaw, "r"}, 2, time.Now())
	<-p.tokens
	<-p.tokens
	a := &localAck{p: p}
	a.ack()
	a.ack()
	if n := len(p.tokens); n != 1 {
		t.Fatalf("%d tokens back, want 1", n)
	}
}

// TestAnAbandonedOfferIsSwept: a pipe a writer offered and never ended, with
// no reader, goes once idle for as long as the server keeps an idle
// consumer; a pipe with a reader waiting, or claimed, stays.
func TestAnAbandonedOfferIsSwept(t *testing.T) {
	h := newLocalHub()
	now := time.Now()
	h.now = func() time.Time { return now }
	abandoned := pipeKey{"run1", KindRaw, "filter"}
	waiting := pipeKey{"run2", KindRaw, "filter"}
	claimed := pipeKey{"run3", KindRaw, "filter"}
	h.offer(abandoned, 4)
	h.claim(waiting, 4)
	h.offer(claimed, 4)
	h.claim(claimed, 4)
	now = now.Add(pipeIdle + time.Minute)
	h.offer(pipeKey{"run4", KindRaw, "filter"}, 4) // any registration sweeps
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.pipes[abandoned]; ok {
		t.Error("the abandoned offer is still there")
	}
	for _, k := range []pipeKey{waiting, claimed} {
		if _, ok := h.pipes[k]; !ok {
			t.Errorf("%v: swept, though its reader is here", k)
		}
	}
}
