package index

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
	"google.golang.org/protobuf/proto"
)

// measureBytesPerSpan writes nSpans of the workload shape in batches of 100
// traces, closes the store (flushing memtables) and returns the on-disk
// bytes (SSTables plus value log) per span.
func measureBytesPerSpan(tb testing.TB, nSpans int) float64 {
	tb.Helper()
	dir := tb.TempDir()
	st, err := Open(dir, slog.New(slog.DiscardHandler), nil, benchOptions())
	require.NoError(tb, err)
	w := newWorkload(42)
	written := 0
	for written < nSpans {
		batch := w.kept(100)
		require.NoError(tb, st.WriteTraces(context.Background(), batch))
		written += 5 * len(batch)
	}
	require.NoError(tb, st.Close())
	return float64(dirSize(dir, ".sst")+dirSize(dir, ".vlog")) / float64(written)
}

func TestDiskBytesPerSpan(t *testing.T) {
	// The race detector slows writes tenfold; the smaller run still
	// exercises flush and compression, and the benchmark covers 200k spans.
	n := 50_000
	if testing.Short() || raceEnabled {
		n = 10_000
	}
	perSpan := measureBytesPerSpan(t, n)
	t.Logf("%.1f bytes per span on disk (%d spans)", perSpan, n)
	require.Less(t, perSpan, 150.0, "storage budget is 150 bytes per span")
}

// BenchmarkDiskBytesPerSpan reports the on-disk footprint of 200k spans.
func BenchmarkDiskBytesPerSpan(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		b.ReportMetric(measureBytesPerSpan(b, 200_000), "bytes/span")
	}
}

func BenchmarkWriteTraces(b *testing.B) {
	b.ReportAllocs()
	st, err := Open(b.TempDir(), slog.New(slog.DiscardHandler), nil, benchOptions())
	require.NoError(b, err)
	defer func() { require.NoError(b, st.Close()) }()
	w := newWorkload(7)
	// Spans as the indexer hands them over: decoded lazily from a record,
	// their attributes still in the wire.
	kept := func() []KeptTrace {
		var dec span.Decoder
		out := w.kept(100)
		for i := range out {
			data, err := proto.Marshal(span.ToTracesData(out[i].Trace.Spans))
			require.NoError(b, err)
			out[i].Trace.Spans, err = dec.DecodeTracesLazy(data)
			require.NoError(b, err)
		}
		return out
	}
	batches := make([][]KeptTrace, 64)
	for i := range batches {
		batches[i] = kept()
	}
	spans := 0
	b.ResetTimer()
	cpu0 := cpuTime(b)
	var genCPU time.Duration
	for i := 0; b.Loop(); i++ {
		batch := batches[i%len(batches)]
		if i >= len(batches) {
			// Fresh trace IDs so the benchmark measures new traces, not rewrites.
			b.StopTimer()
			g := cpuTime(b)
			batch = kept()
			genCPU += cpuTime(b) - g
			b.StartTimer()
		}
		if err := st.WriteTraces(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
		spans += 500
	}
	// CPU of the whole process (Badger's flushes and compactions included)
	// per span: wall time on a shared machine says more about the
	// neighbours than about the store. Generating fresh batches is not
	// counted (though Badger goroutines running meanwhile are, which only
	// overstates the cost).
	b.ReportMetric(float64((cpuTime(b)-cpu0-genCPU).Microseconds())/float64(spans), "cpu-µs/span")
	b.ReportMetric(float64(spans)/b.Elapsed().Seconds(), "spans/s")
}

// benchOptions are the defaults, with the compression overridable through
// THREADLINE_BENCH_COMPRESSION to compare codecs.
func benchOptions() Options {
	o := DefaultOptions()
	if c := os.Getenv("THREADLINE_BENCH_COMPRESSION"); c != "" {
		o.Compression = c
	}
	return o
}

// cpuTime is the user plus system CPU time this process has used.
func cpuTime(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	require.NoError(tb, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkSearch(b *testing.B) {
	st, err := Open(b.TempDir(), slog.New(slog.DiscardHandler), nil, benchOptions())
	require.NoError(b, err)
	defer func() { require.NoError(b, st.Close()) }()
	w := newWorkload(9)
	for range 200 {
		require.NoError(b, st.WriteTraces(context.Background(), w.kept(100)))
	}
	for _, tc := range []struct {
		name string
		q    *readerpb.SearchRequest
	}{
		{"recent", &readerpb.SearchRequest{}},
		{"service", &readerpb.SearchRequest{Tags: map[string]string{"service.name": "payment"}}},
		{"attr+status", &readerpb.SearchRequest{Tags: map[string]string{"http.route": "/api/cart", "status": "error"}}},
		{"same_span", &readerpb.SearchRequest{Tags: map[string]string{"service.name": "checkout", "name": "SELECT orders"}, SameSpan: true, SpanMinDurationNanos: 1_000_000}},
		{"duration", &readerpb.SearchRequest{MinDurationNanos: 200_000_000}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				res, err := st.Search(context.Background(), tc.q)
				if err != nil || len(res) == 0 {
					b.Fatal(fmt.Sprint(err, len(res)))
				}
			}
		})
	}
}

// BenchmarkTrace reads random stored traces by ID: each read decompresses
// the chunk group holding the trace (a cold read; the reader's group cache
// lives for one call).
func BenchmarkTrace(b *testing.B) {
	st, err := Open(b.TempDir(), slog.New(slog.DiscardHandler), nil, benchOptions())
	require.NoError(b, err)
	defer func() { require.NoError(b, st.Close()) }()
	w := newWorkload(11)
	var written []KeptTrace
	for range 100 {
		batch := w.kept(100)
		require.NoError(b, st.WriteTraces(context.Background(), batch))
		written = append(written, batch...)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		kt := written[(i*7919)%len(written)]
		got, found, err := st.Trace(context.Background(), kt.Trace.ID)
		if err != nil || !found || len(got.Spans) != len(kt.Trace.Spans) {
			b.Fatal(err, found, len(got.Spans))
		}
	}
}

// BenchmarkBatchPostings gathers the posting lists of one batch the size
// the indexer writes under load (820 traces of 5 spans), each trace in 20
// postings: 9 shared by most of the batch (services, statuses, common
// values), 11 drawn from 3,000.
func BenchmarkBatchPostings(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n, npostings = 820, 3020
	prepared := make([]preparedTrace, n)
	seqs := make([]uint64, n)
	durs := make([]int, n)
	for i := range prepared {
		seqs[i] = uint64(1_700_000_000_000+rng.IntN(2000))<<12 + uint64(rng.IntN(30))
		durs[i] = 3000 + rng.IntN(20)
		for j := range 20 {
			p := int32(rng.IntN(30))
			if j > 8 {
				p = int32(30 + rng.IntN(2970))
			}
			prepared[i].postings = append(prepared[i].postings, p)
		}
	}
	var lists postingLists
	for b.Loop() {
		lists.gather(prepared, seqs, durs, npostings)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n*5), "ns/span")
}
