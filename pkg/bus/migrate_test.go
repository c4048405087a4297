package bus_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/backstream/backstream/pkg/bus"
	"github.com/backstream/backstream/pkg/bus/bustest"
)

func TestChunkStreamFromAnOlderLayoutIsReplaced(t *testing.T) {
	srv := bustest.Server(t)
	old := bustest.Connect(t, srv.URL(), "old")
	ctx := context.Background()
	if err := old.JS.DeleteStream(ctx, bus.DataStream); err != nil {
		t.Fatal(err)
	}
	if _, err := old.JS.CreateStream(ctx, jetstream.StreamConfig{Name: bus.DataStream, Subjects: []string{bus.DataRoot + ".>"}, Storage: jetstream.FileStorage, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	b := bustest.Connect(t, srv.URL(), "new")
	s, err := b.JS.Stream(ctx, bus.DataStream)
	if err != nil {
		t.Fatal(err)
	}
	if st := s.CachedInfo().Config.Storage; st != jetstream.MemoryStorage {
		t.Fatalf("chunk stream storage %v after setup, want memory", st)
	}
}

func TestChunkStreamUnderItsEarlierNameIsReplaced(t *testing.T) {
	srv := bustest.Server(t)
	old := bustest.Connect(t, srv.URL(), "old")
	ctx := context.Background()
	if err := old.JS.DeleteStream(ctx, bus.DataStream); err != nil {
		t.Fatal(err)
	}
	if _, err := old.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "BACKSTREAM_DATA", Subjects: []string{bus.DataRoot + ".>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	b := bustest.Connect(t, srv.URL(), "new")
	if _, err := b.JS.Stream(ctx, bus.DataStream); err != nil {
		t.Fatalf("chunk stream after setup: %v", err)
	}
	if _, err := b.JS.Stream(ctx, "BACKSTREAM_DATA"); err == nil {
		t.Fatal("the earlier chunk stream is still there")
	}
}

// A plans bucket set up by an earlier version kept 10 revisions per plan;
// runs now read the revision they started with, so setup raises it to
// PlansHistory in place and keeps what the bucket holds.
func TestPlansBucketWithShortHistoryIsRaised(t *testing.T) {
	srv := bustest.Server(t)
	old := bustest.Connect(t, srv.URL(), "old")
	ctx := context.Background()
	if _, err := old.JS.UpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bus.PlansBucket, Description: "backstream plans", History: 10, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if st, err := old.Plans.Status(ctx); err != nil || st.History() != 10 {
		t.Fatalf("old bucket: %v %v", st, err)
	}
	first, err := old.Plans.Put(ctx, "p", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Plans.Put(ctx, "p", []byte("v2")); err != nil {
		t.Fatal(err)
	}

	b := bustest.Connect(t, srv.URL(), "new")
	st, err := b.Plans.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.History() != bus.PlansHistory {
		t.Fatalf("plans bucket history %d after setup, want %d", st.History(), bus.PlansHistory)
	}
	e, err := b.Plans.GetRevision(ctx, "p", first)
	if err != nil || string(e.Value()) != "v1" {
		t.Fatalf("revision %d after setup: %v", first, err)
	}
	for i := range bus.PlansHistory {
		if _, err := b.Plans.Put(ctx, "p", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Plans.GetRevision(ctx, "p", first+1); err == nil {
		t.Fatalf("revision %d still stored after %d later ones", first+1, bus.PlansHistory)
	}
}

// Plans, runs and keyrings are read from their stream's leader on a
// cluster: a record one process wrote must be there for the next process
// that reads it, which a follower's direct get does not promise. A bucket
// an earlier version set up with direct gets is switched over in place; the
// leases bucket keeps them (its permissions pin owners to key prefixes
// through the direct get's subject). With one replica every bucket keeps
// them: the only copy answers.
func TestRecordBucketsAreReadFromTheLeader(t *testing.T) {
	ctx := context.Background()
	directGets := func(t *testing.T, b *bus.Bus, want map[string]bool) {
		t.Helper()
		for bucket, direct := range want {
			s, err := b.JS.Stream(ctx, "KV_"+bucket)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.CachedInfo().Config.AllowDirect; got != direct {
				t.Errorf("bucket %s: direct gets %v after setup, want %v", bucket, got, direct)
			}
		}
	}
	t.Run("one replica", func(t *testing.T) {
		b := bustest.Connect(t, bustest.Server(t).URL(), "single")
		directGets(t, b, map[string]bool{bus.PlansBucket: true, bus.RunsBucket: true, bus.KeyringsBucket: true, bus.LeasesBucket: true})
	})
	t.Run("three replicas", func(t *testing.T) {
		_, url := bustest.Cluster(t, 3)
		old := bustest.ConnectWith(t, url, "old", bus.RoleAdmin, bus.Config{Replicas: 3})
		directGetsOn(t, old, bus.RunsBucket)
		if _, err := old.Runs.Put(ctx, "r1", []byte("record")); err != nil {
			t.Fatal(err)
		}
		b := bustest.ConnectWith(t, url, "new", bus.RoleAdmin, bus.Config{Replicas: 3})
		directGets(t, b, map[string]bool{bus.PlansBucket: false, bus.RunsBucket: false, bus.KeyringsBucket: false, bus.LeasesBucket: true})
		if e, err := b.Runs.Get(ctx, "r1"); err != nil || string(e.Value()) != "record" {
			t.Fatalf("record after the switch: %v", err)
		}
	})
}

// Processes that set the buckets up at once (serve and a CLI started
// together) each make a bucket, which nats.go does with direct gets on,
// and on a cluster turn them off again. A handle bound in between would
// ask for direct gets that no replica answers any more, on every read
// from then on: every handle setup returns reads.
func TestConcurrentSetupsAllReadTheirBuckets(t *testing.T) {
	_, url := bustest.Cluster(t, 3)
	first := bustest.ConnectWith(t, url, "first", bus.RoleAdmin, bus.Config{Replicas: 3})
	ctx := context.Background()
	for round := range 5 {
		// Each round starts from buckets an earlier version left with
		// direct gets on, so that every process sets them up at once.
		directGetsOn(t, first, bus.PlansBucket, bus.RunsBucket, bus.KeyringsBucket)
		var wg sync.WaitGroup
		buses := make([]*bus.Bus, 6)
		for i := range buses {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buses[i] = bustest.ConnectWith(t, url, fmt.Sprintf("p%d", i), bus.RoleAdmin, bus.Config{Replicas: 3})
			}()
		}
		wg.Wait()
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if _, err := buses[0].Runs.Put(ctx, "r1", []byte("record")); err != nil {
			t.Fatal(err)
		}
		for i, b := range buses {
			for name, kv := range map[string]jetstream.KeyValue{bus.PlansBucket: b.Plans, bus.RunsBucket: b.Runs, bus.KeyringsBucket: b.Keyrings} {
				if _, err := kv.Get(ctx, "r1"); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
					t.Fatalf("round %d, process %d: get from bucket %s: %v", round, i, name, err)
				}
			}
		}
		cancel()
	}
}

// TestConcurrentSetupsOfAFreshCluster: six admin processes set up a new
// three-node cluster at once (a platform starting all its replicas
// against a new cluster), twice. nats-server may answer none of the equal
// creates of a replicated stream that reach it together; each request
// then waited out the whole connect deadline and every process failed
// (6 of 6, in every round). Each attempt now has its own deadline and the
// next one finds the stream made.
func TestConcurrentSetupsOfAFreshCluster(t *testing.T) {
	for round := range 2 {
		_, url := bustest.Cluster(t, 3)
		var wg sync.WaitGroup
		buses := make([]*bus.Bus, 6)
		for i := range buses {
			wg.Go(func() {
				buses[i] = bustest.ConnectWith(t, url, fmt.Sprintf("r%dp%d", round, i), bus.RoleAdmin, bus.Config{Replicas: 3})
			})
		}
		wg.Wait()
		if t.Failed() {
			t.Fatalf("round %d: not every process set the cluster up", round)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := buses[0].Runs.Put(ctx, "r1", []byte("record")); err != nil {
			t.Fatal(err)
		}
		for i, b := range buses {
			if e, err := b.Runs.Get(ctx, "r1"); err != nil || string(e.Value()) != "record" {
				t.Fatalf("round %d, process %d: get from bucket %s: %v", round, i, bus.RunsBucket, err)
			}
		}
		cancel()
	}
}

// directGetsOn turns direct gets on for buckets, as a backstream before
// leader reads left them, or as another process setting them up has them
// for a moment.
func directGetsOn(t *testing.T, b *bus.Bus, buckets ...string) {
	t.Helper()
	ctx := context.Background()
	for _, bucket := range buckets {
		s, err := b.JS.Stream(ctx, "KV_"+bucket)
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		cfg.AllowDirect = true
		if _, err := b.JS.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
}
