package index

import (
	"cmp"
	"context"
	mrand "math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
)

// searchService returns how many traces a search by service finds (through
// its posting list).
func searchService(t *testing.T, st *Store, service string) int {
	t.Helper()
	got, err := st.Search(context.Background(), &readerpb.SearchRequest{Tags: map[string]string{"service.name": service}, Limit: 1000})
	require.NoError(t, err)
	return len(got)
}

// TestPostingsWrittenTogether: WriteTracesThen returns with the traces
// readable by ID and their postings gathered; Flush writes the postings of
// several batches as one fragment per value and only then runs the
// batches' durable callbacks, once each.
func TestPostingsWrittenTogether(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	w := newWorkload(31)
	a, b := w.kept(20), w.kept(30)
	var durableA, durableB atomic.Int32
	require.NoError(t, st.WriteTracesThen(ctx, a, func() { durableA.Add(1) }))
	require.NoError(t, st.WriteTracesThen(ctx, b, func() { durableB.Add(1) }))
	requireTraces(t, st, a)
	requireTraces(t, st, b)
	require.Zero(t, durableA.Load(), "postings not written yet")
	require.Zero(t, searchService(t, st, "frontend"), "search finds a trace once its postings are written")

	require.NoError(t, st.Flush(ctx))
	require.EqualValues(t, 1, durableA.Load())
	require.EqualValues(t, 1, durableB.Load())
	require.Equal(t, len(a)+len(b), searchService(t, st, "frontend"))
	require.Equal(t, 1, countKeys(t, st, svcPosting("frontend")), "one fragment for both batches")

	require.NoError(t, st.Flush(ctx))
	require.EqualValues(t, 1, durableA.Load(), "a callback runs once")
}

// TestPostingsFlushedByAge: postings of writes that stop are written within
// postingFlushAge (and a bit), without a Flush call.
func TestPostingsFlushedByAge(t *testing.T) {
	st := openStore(t, t.TempDir())
	batch := newWorkload(32).kept(10)
	var durable atomic.Int32
	require.NoError(t, st.WriteTracesThen(context.Background(), batch, func() { durable.Add(1) }))
	require.Eventually(t, func() bool { return durable.Load() == 1 }, 5*postingFlushAge, 10*time.Millisecond)
	require.Equal(t, len(batch), searchService(t, st, "frontend"))
}

// failAfter is a context whose Err reports cancellation after n calls.
type failAfter struct {
	context.Context
	n atomic.Int32
}

func (c *failAfter) Err() error {
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

// TestPostingsFailedFlush: a flush that fails part-way keeps what it took,
// runs no callback, and the next flush writes it all. The batch is written
// twice (a replay), so the lists it had sorted held repeats.
func TestPostingsFailedFlush(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	a, b := newWorkload(33).kept(10), newWorkload(34).kept(10)
	var durable atomic.Int32
	require.NoError(t, st.WriteTracesThen(ctx, a, func() { durable.Add(1) }))
	require.NoError(t, st.WriteTracesThen(ctx, a, func() { durable.Add(1) }))
	failing := &failAfter{Context: ctx}
	failing.n.Store(5)
	require.ErrorIs(t, st.Flush(failing), context.Canceled)
	require.Zero(t, durable.Load())
	require.NoError(t, st.WriteTracesThen(ctx, b, func() { durable.Add(1) }))
	require.NoError(t, st.Flush(ctx))
	require.EqualValues(t, 3, durable.Load())
	require.Equal(t, len(a)+len(b), searchService(t, st, "frontend"))
	// The service postings come first in key order: the failed flush had
	// sorted them.
	for _, svc := range []string{"frontend", "checkout", "payment"} {
		seqs := postingSeqs(t, st, svcPosting(svc))
		require.NotEmpty(t, seqs)
		require.NotContains(t, seqs, uint64(0), "posting of %s lost seqs in the failed flush", svc)
	}
}

// TestCloseWritesPostings: Close writes the postings gathered.
func TestCloseWritesPostings(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	batch := newWorkload(35).kept(10)
	require.NoError(t, st.WriteTracesThen(context.Background(), batch, nil))
	require.NoError(t, st.Close())
	st = openStore(t, dir)
	require.Equal(t, len(batch), searchService(t, st, "frontend"))
}

// TestPostingsFlushedByCount: a write that finds postingFlushTraces gathered
// has the posting loop write them, long before postingFlushAge; past four
// times that, the writer flushes itself.
func TestPostingsFlushedByCount(t *testing.T) {
	defer func(n int) { postingFlushTraces = n }(postingFlushTraces)
	postingFlushTraces = 20
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	w := newWorkload(36)
	var durable atomic.Int32
	start := time.Now()
	require.NoError(t, st.WriteTracesThen(ctx, w.kept(10), func() { durable.Add(1) }))
	require.NoError(t, st.WriteTracesThen(ctx, w.kept(10), func() { durable.Add(1) }))
	require.Eventually(t, func() bool { return durable.Load() == 2 }, postingFlushAge/2, time.Millisecond)
	require.Less(t, time.Since(start), postingFlushAge, "not the age-driven flush")

	st.flushMu.Lock() // a flush that does not finish: the loop is stuck
	require.NoError(t, st.WriteTracesThen(ctx, w.kept(50), nil))
	require.Equal(t, 50, st.postings.pending())
	returned := make(chan error)
	go func() { returned <- st.WriteTracesThen(ctx, w.kept(40), nil) }()
	require.Eventually(t, func() bool { return st.postings.pending() == 90 }, 5*time.Second, time.Millisecond)
	select {
	case <-returned:
		t.Fatal("a write past four times postingFlushTraces returned before flushing")
	case <-time.After(50 * time.Millisecond):
	}
	st.flushMu.Unlock()
	require.NoError(t, <-returned)
	require.Zero(t, st.postings.pending(), "the writer flushed what had gathered")
}

// TestPostingsLostInCrashAreReplayed: a crash after a commit and before its
// posting flush leaves the traces readable by ID but not found by search;
// the replay the unreleased records cause writes the postings and counts no
// span twice.
func TestPostingsLostInCrashAreReplayed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := DefaultOptions()
	st, err := Open(dir, nil, nil, opts)
	require.NoError(t, err)
	batch := newWorkload(37).kept(10)
	var durable atomic.Int32
	require.NoError(t, st.WriteTracesThen(ctx, batch, func() { durable.Add(1) }))
	// The crash: the process stops without the flush Close would do.
	close(st.stop)
	st.wg.Wait()
	require.NoError(t, st.db.Close())
	st.groups.close()
	require.Zero(t, durable.Load())

	st = openStore(t, dir)
	requireTraces(t, st, batch)
	require.Zero(t, searchService(t, st, "frontend"), "the postings were lost")
	require.NoError(t, st.WriteTraces(ctx, batch)) // the replay
	require.Equal(t, len(batch), searchService(t, st, "frontend"))
	for _, s := range searchAll(t, st) {
		require.EqualValues(t, 5, s.SpanCount, "the replay counts no span twice")
	}
}

// TestRunMerger: lists made of descending runs (a batch's seqs each, some
// repeated, as a trace written twice posts its seq twice) come out sorted
// newest first, as a sort would, whatever the number and length of runs.
func TestRunMerger(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(5, 6))
	var m runMerger
	for round := range 300 {
		var list []uint64
		for range round % 40 {
			run := make([]uint64, rng.IntN(30))
			for i := range run {
				run[i] = uint64(rng.IntN(500))
			}
			slices.SortFunc(run, func(a, b uint64) int { return cmp.Compare(b, a) })
			list = append(list, run...)
		}
		want := slices.Clone(list)
		slices.SortFunc(want, func(a, b uint64) int { return cmp.Compare(b, a) })
		got := m.merge(list)
		require.Equal(t, want, got)
		if len(list) > 0 {
			require.Same(t, &list[0], &got[0], "sorted in place")
		}
	}
}
