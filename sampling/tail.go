package sampling

import (
	"bytes"
	"container/heap"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/threadline/threadline/span"
)

// TraceInfo is what the sampler needs from an assembled trace; [Info] extracts it.
type TraceInfo struct {
	ID span.TraceID
	// RootService and RootOperation name the root span (no parent, or a parent
	// missing from the trace; the earliest if several): they form the top-N key.
	RootService, RootOperation string
	// End is when the root ended, in event time (the trace's last end when
	// there is no usable root); it picks the trace's window. A trace can be
	// decided only once it has ended, so ranked by its start, one that ran
	// for longer than the watermark lags (decision-max-wait + slack) arrived
	// after its window had closed and was late: the slowest traces of all
	// were the ones never kept.
	End time.Time
	// Duration is the root's duration (the whole trace's extent when there is
	// no usable root); the top-N ranks by it.
	Duration time.Duration
	// Orphan: the root names a parent the trace does not hold. The caller's
	// span may still be on its way (a request that outlasts the decision
	// wait exports its children first), or never come (an uninstrumented
	// caller propagated the context).
	Orphan bool
	// Error: some span has status ERROR or an event named "exception".
	Error bool
	// Pinned are reasons to keep decided elsewhere (ReasonExemplar,
	// ReasonAlert); any entry keeps the trace at once. This is the hook for
	// the exemplar and alert paths.
	Pinned []string
}

// Decision is the verdict on one trace: kept for Reasons, or dropped when
// Reasons is empty.
type Decision struct {
	ID      span.TraceID
	Reasons []string
}

// Keep reports whether the trace is kept.
func (d Decision) Keep() bool { return len(d.Reasons) > 0 }

// TailSampler decides which complete traces to keep: every error trace, every
// pinned (exemplar/alert) trace, the baseline fraction, and exactly the TopN
// slowest of the rest per (root service, root operation) per event-time window.
//
// It is a pure state machine — no goroutines, timers or wall clock; time enters
// only as trace start times and Advance watermarks — so the same calls in the
// same order always give the same decisions in the same order. It is not safe
// for concurrent use: the indexer drives it from one goroutine (or under its lock).
//
// Choices, and why:
//
//   - Error, pinned and baseline traces are decided at Offer, and do not enter
//     the top-N heaps: "latency_topn" ranks the traces nothing else keeps, so a
//     kept trace carries exactly the reasons known when it was decided and an
//     error storm of slow timeouts does not crowd the latency outliers out.
//     Above all it keeps replay exact: a trace that is decided and written
//     leaves no state behind, so once its Kafka records are committed, a replay
//     without them rebuilds the same heaps. (If errors held heap slots, an
//     error trace whose offset was committed would be missing on replay, and a
//     faster trace it had pushed out would be kept instead.)
//   - The heaps therefore hold exactly the N slowest non-error, non-pinned,
//     non-baseline traces of a key and window seen so far. Ties in duration go
//     to the smaller trace ID, so the ranking never depends on arrival order.
//   - A trace whose window the watermark has already closed is late: it is
//     decided at once (kept only for error/pinned/baseline) and counted.
//   - MaxKeys bounds live heaps. A trace that needs a new heap past the bound
//     sheds one: its held traces are dropped and counted as shed_keys. The
//     victim is chosen by segmented LRU over offers (not time, so the choice
//     is deterministic): the least recently offered-to heap among those
//     offered to only once, else the least recently offered-to of the rest.
//     High-cardinality junk keys (URLs with IDs) see one trace each, so they
//     churn among themselves, while a busy key keeps its heaps — including
//     the previous window's, idle while it waits for the watermark to close
//     it. Errors never sit in heaps, so shedding never costs an error trace.
//     (The alternative, refusing new keys once full, would let the first
//     MaxKeys junk keys of a window lock every real key out of it.)
//
// Kafka offsets and replay: a held trace has no decision yet, so the indexer
// must not commit its records. A new sampler given the same calls from a
// commit at offset O (below every held trace) on rebuilds each window's heap
// as the crashed one had it, the top-N of that window so far, all of it at
// or after O; so it decides every trace held at the commit, and every later
// trace, as the crashed one would have. The exceptions: a key shed by MaxKeys
// before the crash, whose LRU history a replay cannot see, and a window that
// closed after the commit, which the replay opens and ranks again (see
// Watermark). Traces before O that were decided may be re-decided
// differently (they are already written; writes are idempotent).
// Ends are ranked as given: a trace dated ahead of the watermark waits in
// its heap until the watermark reaches its window. The indexer bounds ends
// by when the trace reached Kafka (a client clock running fast), which
// replays unchanged.
type TailSampler struct {
	cfg      Config
	baseline *Baseline

	held    map[span.TraceID]*entry
	windows map[int64]*window
	open    []int64 // indices of windows with live heaps, ascending
	nheaps  int
	// Heaps in two LRU lists (segmented LRU): probation holds heaps offered
	// to once, protected those offered to again. Victims come from probation
	// first, so a flood of one-off keys churns among itself instead of
	// evicting a busy key's heap that is waiting for its window to close.
	// Each is the sentinel of a circular list; .next is the most recent.
	probation, protected topHeap
	free                 []*entry

	closed    int64 // windows with index < closed are closed
	watermark time.Time

	m *tailMetrics
}

// Metric label values of threadline_sampling_decisions_total.
const (
	outcomeKeptError    = "kept_error"
	outcomeKeptTopN     = "kept_topn"
	outcomeKeptBaseline = "kept_baseline"
	outcomeKeptPinned   = "kept_pinned"
	outcomeDropped      = "dropped"
	outcomeEvicted      = "dropped_evicted"
	outcomeLate         = "dropped_late"
	outcomeShedKeys     = "shed_keys"
)

type tailMetrics struct {
	keptError, keptTopN, keptBaseline, keptPinned prometheus.Counter
	dropped, evicted, late, shed                  prometheus.Counter
	held, keys                                    prometheus.Gauge
}

func newTailMetrics(reg prometheus.Registerer) (*tailMetrics, error) {
	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "threadline_sampling_decisions_total",
		Help: "Tail-sampling decisions by outcome: kept_error, kept_topn, kept_baseline, kept_pinned (a trace kept for several reasons counts under each), dropped (not slow enough), dropped_evicted (pushed out of a top-N heap), dropped_late (window already closed), shed_keys (dropped with a heap shed past max keys).",
	}, []string{"outcome"})
	m := &tailMetrics{
		keptError:    decisions.WithLabelValues(outcomeKeptError),
		keptTopN:     decisions.WithLabelValues(outcomeKeptTopN),
		keptBaseline: decisions.WithLabelValues(outcomeKeptBaseline),
		keptPinned:   decisions.WithLabelValues(outcomeKeptPinned),
		dropped:      decisions.WithLabelValues(outcomeDropped),
		evicted:      decisions.WithLabelValues(outcomeEvicted),
		late:         decisions.WithLabelValues(outcomeLate),
		shed:         decisions.WithLabelValues(outcomeShedKeys),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "threadline_sampling_held_traces",
			Help: "Traces held in top-N heaps awaiting their window's close; their Kafka records are not committed.",
		}),
		keys: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "threadline_sampling_keys",
			Help: "Live top-N heaps, one per (root service, root operation, window).",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{decisions, m.held, m.keys} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register sampling metrics: %w", err)
			}
		}
	}
	return m, nil
}

// entry is one held trace.
type entry struct {
	id  span.TraceID
	dur time.Duration
	h   *topHeap
	idx int // position in h.entries
}

// below reports whether a ranks below b: faster, or as fast with a larger ID.
func below(a, b *entry) bool {
	if a.dur != b.dur {
		return a.dur < b.dur
	}
	return bytes.Compare(a.id[:], b.id[:]) > 0
}

type opKey struct{ service, operation string }

// topHeap holds the top-N of one key in one window as a min-heap: entries[0]
// is the trace a newcomer must beat.
type topHeap struct {
	key        opKey
	win        *window
	entries    []*entry
	hits       int      // offers that reached this heap
	prev, next *topHeap // LRU list links
}

func (h *topHeap) Len() int           { return len(h.entries) }
func (h *topHeap) Less(i, j int) bool { return below(h.entries[i], h.entries[j]) }
func (h *topHeap) Swap(i, j int) {
	h.entries[i], h.entries[j] = h.entries[j], h.entries[i]
	h.entries[i].idx, h.entries[j].idx = i, j
}
func (h *topHeap) Push(x any) {
	e := x.(*entry)
	e.idx = len(h.entries)
	h.entries = append(h.entries, e)
}
func (h *topHeap) Pop() any {
	e := h.entries[len(h.entries)-1]
	h.entries[len(h.entries)-1] = nil
	h.entries = h.entries[:len(h.entries)-1]
	return e
}

type window struct {
	idx   int64
	heaps map[opKey]*topHeap
}

// NewTailSampler returns an empty sampler. Metrics are registered on reg
// unless it is nil.
func NewTailSampler(cfg Config, reg prometheus.Registerer) (*TailSampler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tail sampler config: %w", err)
	}
	b, err := NewBaseline(cfg.Baseline)
	if err != nil {
		return nil, fmt.Errorf("tail sampler baseline: %w", err)
	}
	m, err := newTailMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &TailSampler{
		cfg:      cfg,
		baseline: b,
		held:     make(map[span.TraceID]*entry),
		windows:  make(map[int64]*window),
		closed:   minInt64,
		m:        m,
	}
	s.probation.next, s.probation.prev = &s.probation, &s.probation
	s.protected.next, s.protected.prev = &s.protected, &s.protected
	return s, nil
}

const minInt64 = -1 << 63

// Offer takes a complete trace and returns the decisions made now: this
// trace's when it is kept at once (error, pinned, baseline) or dropped at once
// (late, or too fast for its full heap), plus any trace this one pushed out of
// a heap and any traces shed with a heap past MaxKeys. A trace that enters a
// heap is held and gets its decision from Advance, Flush, or a later eviction.
// Offering an ID that is still held replaces the held entry (the trace grew):
// the ID gets one decision, based on the newest offer.
func (s *TailSampler) Offer(t TraceInfo) []Decision {
	defer s.updateGauges()
	if old, ok := s.held[t.ID]; ok {
		s.removeEntry(old)
	}
	if reasons := s.immediateReasons(t); len(reasons) > 0 {
		return []Decision{{ID: t.ID, Reasons: reasons}}
	}
	if s.cfg.TopN == 0 {
		s.m.dropped.Inc()
		return []Decision{{ID: t.ID}}
	}
	k := s.windowOf(t.End)
	if k < s.closed {
		s.m.late.Inc()
		return []Decision{{ID: t.ID}}
	}
	var out []Decision
	key := opKey{t.RootService, t.RootOperation}
	w := s.windows[k]
	var h *topHeap
	if w != nil {
		h = w.heaps[key]
	}
	if h == nil {
		if s.nheaps >= s.cfg.MaxKeys {
			out = s.shed(s.victim(), out)
		}
		h = s.newHeap(k, key)
	}
	s.touch(h)
	e := s.newEntry(t.ID, t.Duration)
	if len(h.entries) < s.cfg.TopN {
		e.h = h
		heap.Push(h, e)
		s.held[e.id] = e
		return out
	}
	if !below(h.entries[0], e) {
		s.m.dropped.Inc()
		s.freeEntry(e)
		return append(out, Decision{ID: t.ID})
	}
	last := h.entries[0]
	delete(s.held, last.id)
	s.m.evicted.Inc()
	out = append(out, Decision{ID: last.id})
	s.freeEntry(last)
	e.h, e.idx = h, 0
	h.entries[0] = e
	heap.Fix(h, 0)
	s.held[e.id] = e
	return out
}

// immediateReasons returns why t is kept regardless of latency, counting each.
func (s *TailSampler) immediateReasons(t TraceInfo) []string {
	var reasons []string
	if t.Error {
		reasons = append(reasons, ReasonError)
		s.m.keptError.Inc()
	}
	pinned := false
	for _, r := range t.Pinned {
		if r == "" || slices.Contains(reasons, r) {
			continue
		}
		reasons = append(reasons, r)
		pinned = true
	}
	if pinned {
		s.m.keptPinned.Inc()
	}
	if s.baseline.Keep(t.ID) {
		if !slices.Contains(reasons, ReasonBaseline) {
			reasons = append(reasons, ReasonBaseline)
		}
		s.m.keptBaseline.Inc()
	}
	return reasons
}

// Advance closes every window that ended at or before watermark and returns a
// latency_topn keep decision for each trace held in them, ordered by window,
// then key, then slowest first. Watermarks that do not move forward are no-ops.
// Later offers into a closed window are late.
func (s *TailSampler) Advance(watermark time.Time) []Decision {
	if watermark.After(s.watermark) {
		s.watermark = watermark
	}
	c := floorDiv(nanos(watermark), int64(s.cfg.Window))
	if c <= s.closed {
		return nil
	}
	s.closed = c
	n := 0
	for n < len(s.open) && s.open[n] < c {
		n++
	}
	out := s.closeWindows(s.open[:n], nil)
	s.open = slices.Delete(s.open, 0, n)
	s.updateGauges()
	return out
}

// Flush decides every held trace now, for a graceful shutdown: they are the
// top-N so far, so they are kept as latency_topn. The watermark is unchanged.
func (s *TailSampler) Flush() []Decision {
	out := s.closeWindows(s.open, nil)
	s.open = s.open[:0]
	s.updateGauges()
	return out
}

// Pin decides a held trace now, kept for reason (the exemplar path: an
// alerting metric's exemplar named it while it waited in a top-N heap), and
// frees its heap slot. It reports false when id is not held — not offered
// yet, or already decided — and then changes nothing. Like a pinned Offer,
// the trace leaves no sampler state behind once decided.
func (s *TailSampler) Pin(id span.TraceID, reason string) (Decision, bool) {
	e, ok := s.held[id]
	if !ok {
		return Decision{}, false
	}
	s.removeEntry(e)
	s.m.keptPinned.Inc()
	s.updateGauges()
	return Decision{ID: id, Reasons: []string{reason}}, true
}

// Held reports how many traces are held awaiting their window's close.
func (s *TailSampler) Held() int { return len(s.held) }

// Keys reports how many top-N heaps are live.
func (s *TailSampler) Keys() int { return s.nheaps }

// Watermark returns the latest watermark passed to Advance (zero if none).
// The indexer does not store it with its Kafka commits: given to Advance
// first on a replay, it would make late a trace the crashed sampler kept
// when its window closed but whose write was not yet durable at the commit,
// and so lose it. Without it, a replay opens the windows that closed after
// the commit again and ranks their replayed traces again, which may keep a
// few traces the first run did not.
func (s *TailSampler) Watermark() time.Time { return s.watermark }

func (s *TailSampler) closeWindows(idx []int64, out []Decision) []Decision {
	for _, k := range idx {
		w := s.windows[k]
		delete(s.windows, k)
		heaps := make([]*topHeap, 0, len(w.heaps))
		for _, h := range w.heaps {
			heaps = append(heaps, h)
		}
		slices.SortFunc(heaps, func(a, b *topHeap) int {
			if c := strings.Compare(a.key.service, b.key.service); c != 0 {
				return c
			}
			return strings.Compare(a.key.operation, b.key.operation)
		})
		for _, h := range heaps {
			s.unlink(h)
			s.nheaps--
			for _, e := range sortedDesc(h.entries) {
				out = append(out, Decision{ID: e.id, Reasons: []string{ReasonLatencyTopN}})
				s.m.keptTopN.Inc()
				delete(s.held, e.id)
				s.freeEntry(e)
			}
		}
	}
	return out
}

// shed drops every trace held in h and removes h.
func (s *TailSampler) shed(h *topHeap, out []Decision) []Decision {
	for _, e := range sortedDesc(h.entries) {
		out = append(out, Decision{ID: e.id})
		s.m.shed.Inc()
		delete(s.held, e.id)
		s.freeEntry(e)
	}
	h.entries = h.entries[:0]
	s.removeHeap(h)
	return out
}

// removeEntry forgets a held trace without deciding it.
func (s *TailSampler) removeEntry(e *entry) {
	h := e.h
	heap.Remove(h, e.idx)
	delete(s.held, e.id)
	s.freeEntry(e)
	if len(h.entries) == 0 {
		s.removeHeap(h)
	}
}

func (s *TailSampler) newHeap(k int64, key opKey) *topHeap {
	w := s.windows[k]
	if w == nil {
		w = &window{idx: k, heaps: make(map[opKey]*topHeap)}
		s.windows[k] = w
		i, _ := slices.BinarySearch(s.open, k)
		s.open = slices.Insert(s.open, i, k)
	}
	h := &topHeap{key: key, win: w, entries: make([]*entry, 0, s.cfg.TopN)}
	w.heaps[key] = h
	s.nheaps++
	return h
}

func (s *TailSampler) removeHeap(h *topHeap) {
	s.unlink(h)
	s.nheaps--
	w := h.win
	delete(w.heaps, h.key)
	if len(w.heaps) == 0 {
		delete(s.windows, w.idx)
		if i, ok := slices.BinarySearch(s.open, w.idx); ok {
			s.open = slices.Delete(s.open, i, i+1)
		}
	}
}

// touch records an offer to h: it moves to the front of its LRU list, the
// protected one from its second offer on.
func (s *TailSampler) touch(h *topHeap) {
	h.hits++
	l := &s.probation
	if h.hits > 1 {
		l = &s.protected
	}
	if l.next == h {
		return
	}
	s.unlink(h)
	h.prev, h.next = l, l.next
	l.next.prev = h
	l.next = h
}

// victim returns the heap to shed: the least recently offered-to heap on
// probation, else the least recently offered-to protected one.
func (s *TailSampler) victim() *topHeap {
	if s.probation.prev != &s.probation {
		return s.probation.prev
	}
	return s.protected.prev
}

func (s *TailSampler) unlink(h *topHeap) {
	if h.next == nil {
		return
	}
	h.prev.next, h.next.prev = h.next, h.prev
	h.prev, h.next = nil, nil
}

func (s *TailSampler) newEntry(id span.TraceID, dur time.Duration) *entry {
	if n := len(s.free); n > 0 {
		e := s.free[n-1]
		s.free = s.free[:n-1]
		*e = entry{id: id, dur: dur}
		return e
	}
	return &entry{id: id, dur: dur}
}

// freeEntry recycles e, keeping at most one heap's worth of spares per
// live heap so the free list never outgrows the bound on held traces.
func (s *TailSampler) freeEntry(e *entry) {
	if len(s.free) < s.cfg.TopN*s.cfg.MaxKeys && len(s.free) < 1<<16 {
		*e = entry{}
		s.free = append(s.free, e)
	}
}

func (s *TailSampler) updateGauges() {
	s.m.held.Set(float64(len(s.held)))
	s.m.keys.Set(float64(s.nheaps))
}

// windowOf returns the index of t's window.
func (s *TailSampler) windowOf(t time.Time) int64 {
	return floorDiv(nanos(t), int64(s.cfg.Window))
}

// sortedDesc returns the entries slowest first.
func sortedDesc(es []*entry) []*entry {
	out := slices.Clone(es)
	slices.SortFunc(out, func(a, b *entry) int {
		if below(a, b) {
			return 1
		}
		if below(b, a) {
			return -1
		}
		return 0
	})
	return out
}

// nanos is t in Unix nanoseconds, saturating instead of overflowing for times
// outside 1678–2262 (a zero time.Time from a span without a start, say).
func nanos(t time.Time) int64 { return int64(t.Sub(time.Unix(0, 0))) }

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}
