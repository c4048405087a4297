package s3_test

import (
	"context"
	"io"
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"

	"github.com/backstream/backstream/pkg/storage"
	"github.com/backstream/backstream/pkg/storage/storagetest"
	"github.com/backstream/backstream/pkg/testenv"
)

// repeat yields n bytes cycling through buf: a stream of any size with no
// allocation per part.
type repeat struct {
	buf  []byte
	off  int
	left int64
}

func (r *repeat) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n := copy(p, r.buf[r.off:])
	r.off = (r.off + n) % len(r.buf)
	r.left -= int64(n)
	return n, nil
}

// peakHeap samples the live heap until stop is called and returns its peak.
func peakHeap() (stop func() uint64) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var peak uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			metrics.Read(sample)
			peak = max(peak, sample[0].Value.Uint64())
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak
	}
}

// BenchmarkPut is the "MinIO upload of in-memory data" figure: 1 GiB
// streamed (size unknown to the backend) into a local MinIO with the
// default part size and concurrency. Run with -benchtime=1x.
func BenchmarkPut(b *testing.B) {
	srv := testenv.MinIO(b)
	c := config(b, srv, srv.NewBucket(b, "bench"))
	c.PartSize, c.Concurrency = 0, 0 // the defaults: 16 MiB × 4
	s := open(b, c)
	defer s.Close()
	const size = 1 << 30
	buf := storagetest.Data(1, 1<<20)
	ctx := context.Background()
	b.SetBytes(size)
	b.ReportAllocs()
	runtime.GC()
	stop := peakHeap()
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Put(ctx, "bench/object", &repeat{buf: buf, left: size}, storage.PutOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(stop())/(1<<20), "peak-heap-MiB")
}

// A Put holds at most PartSize × Concurrency bytes of buffers, whatever the
// object's size: 150 MiB through 5 MiB × 3 allocates about 15 MiB.
func TestPutMemoryBounded(t *testing.T) {
	srv := testenv.MinIO(t)
	c := config(t, srv, srv.NewBucket(t, "memory"))
	s := open(t, c)
	defer s.Close()
	const size = 150 << 20
	bound := uint64(c.PartSize) * uint64(c.Concurrency)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if _, err := s.Put(context.Background(), "m", &repeat{buf: storagetest.Data(2, 1<<20), left: size}, storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("put of %d MiB allocated %.1f MiB in total (part buffers %d MiB)", size>>20, float64(alloc)/(1<<20), bound>>20)
	// Slack for the HTTP client's own per-request allocations.
	if alloc > bound+8<<20 {
		t.Fatalf("put of %d MiB allocated %d MiB, want at most the part buffers (%d MiB) plus 8 MiB", size>>20, alloc>>20, bound>>20)
	}
	if _, err := s.Stat(context.Background(), "m"); err != nil {
		t.Fatal(err)
	}
}
