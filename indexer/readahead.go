package indexer

import (
	"sync/atomic"
	"time"
)

// readAhead bounds how far the consumer runs ahead of the decider. Traces
// wait in the buffer for the decision wait and are then decided at whatever
// rate the decide loop (and the writers it feeds) manages; the buffer needs
// only that rate × the decision wait. When the decider is slower than the
// consumer, everything beyond it only queues in memory, when Kafka already
// holds it: at the end-to-end benchmark's load (one-second decision wait)
// the buffer sat at its static bound, 200k spans, three times what the
// decider needed, and those buffers and their bookkeeping raised the GC's
// heap goal for no throughput.
//
// The decide loop reports each batch: spans decided and the wall time it
// took. Once a second the limit becomes readAheadFactor × (spans decided per
// second of that busy time) × the decision wait, between a tenth of the
// static bound and the bound. Busy time rather than elapsed time measures
// what the decider can do, not what it was given, so a quiet period does not
// shrink the limit before a burst. The consumer waits while the buffer is
// over the limit; traces are decided early ("buffer_full") only past the
// static bound, as before.
type readAhead struct {
	wait  time.Duration
	max   int
	limit atomic.Int64

	// Decide goroutine only: the current measurement window.
	since time.Time
	busy  time.Duration
	spans int
}

const (
	// readAheadFactor leaves room above the decider's rate: below it the
	// consumer never waits in steady state, and the decider always has
	// traces that are due.
	readAheadFactor = 1.25
	// readAheadWindow is how often the limit is recomputed.
	readAheadWindow = time.Second
	// readAheadMinBusy is the least busy time a window needs to say
	// anything about the decider's rate; lighter windows keep the limit.
	readAheadMinBusy = 50 * time.Millisecond
)

func newReadAhead(wait time.Duration, maxSpans int) *readAhead {
	r := &readAhead{wait: wait, max: maxSpans}
	r.limit.Store(int64(maxSpans))
	return r
}

// Limit is how many spans may be buffered before the consumer waits.
func (r *readAhead) Limit() int { return int(r.limit.Load()) }

// decided records a decide batch of spans that took busy, finished at now.
func (r *readAhead) decided(now time.Time, busy time.Duration, spans int) {
	if r.since.IsZero() {
		r.since = now
	}
	r.busy += busy
	r.spans += spans
	if now.Sub(r.since) < readAheadWindow {
		return
	}
	if r.busy >= readAheadMinBusy {
		rate := float64(r.spans) / r.busy.Seconds()
		limit := int(readAheadFactor * rate * r.wait.Seconds())
		r.limit.Store(int64(min(max(limit, r.max/10), r.max)))
	}
	r.since, r.busy, r.spans = now, 0, 0
}
