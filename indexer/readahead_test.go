package indexer

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/threadline/threadline/sampling"
)

func TestReadAheadFollowsDeciderRate(t *testing.T) {
	r := newReadAhead(time.Second, 200_000)
	require.Equal(t, 200_000, r.Limit(), "starts at the static bound")

	t0 := time.Unix(1000, 0)
	// 40k spans decided in 0.5 s of busy time within one window: 80k
	// spans/s, so 1.25 × 80k × 1 s = 100k.
	r.decided(t0, 250*time.Millisecond, 20_000)
	require.Equal(t, 200_000, r.Limit(), "no change inside a window")
	r.decided(t0.Add(time.Second), 250*time.Millisecond, 20_000)
	require.Equal(t, 100_000, r.Limit())

	// A light window (little busy time) says nothing about the rate.
	r.decided(t0.Add(2*time.Second), 10*time.Millisecond, 10)
	require.Equal(t, 100_000, r.Limit())

	// A faster decider is capped at the static bound; a slow one at a tenth.
	r.decided(t0.Add(3*time.Second), 100*time.Millisecond, 100_000)
	require.Equal(t, 200_000, r.Limit())
	r.decided(t0.Add(4*time.Second), time.Second, 1_000)
	require.Equal(t, 20_000, r.Limit())
}

// TestConsumerWaitsAtReadAheadLimit: HandleRecords stops taking records once
// the buffer is past the read-ahead limit, before the static bound, and goes
// on once the decider has taken the buffered traces.
func TestConsumerWaitsAtReadAheadLimit(t *testing.T) {
	cfg := testConfig()
	cfg.DecisionWait = 500 * time.Millisecond
	h := newHarness(t, cfg, sampling.DefaultConfig())
	h.ix.ahead.limit.Store(2) // a decider measured at a few spans per second

	start := time.Now().Add(-time.Minute)
	h.feed(traceSpec{id: traceID(1), service: "api", op: "GET /", start: start, duration: time.Millisecond, spans: 3}.build())
	h.ix.mu.Lock()
	assembling := len(h.ix.traces)
	h.ix.mu.Unlock()
	require.Zero(t, assembling, "the feed returned before the decider took the trace that went over the limit")
	require.Eventually(t, func() bool { return h.ledger.Pending() == 0 }, 10*time.Second, 10*time.Millisecond)
}
