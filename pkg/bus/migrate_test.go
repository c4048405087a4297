package bus_test

import (
	"context"
	"testing"

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
