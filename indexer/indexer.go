package indexer

import (
	"container/list"
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/index"
	"github.com/threadline/threadline/sampling"
	"github.com/threadline/threadline/span"
)

// TraceWriter stores kept traces. Writes must be idempotent: a replay after a
// crash rewrites the same spans.
type TraceWriter interface {
	WriteTraces(ctx context.Context, traces []index.KeptTrace) error
}

// Stage transforms a complete trace before sampling, e.g. clock-skew repair.
// It returns warnings to store with the trace.
type Stage interface {
	Process(t *span.Trace) []string
}

// Decider is the tail-sampling engine: it decides complete traces now or
// holds them (the top-N latency heaps) until their event-time window closes.
// It is driven from one goroutine and must be deterministic, so that a replay
// from the last committed offset decides the same way.
type Decider interface {
	// Offer takes a complete trace and returns the decisions made now: this
	// trace's, and any held trace it displaced.
	Offer(t sampling.TraceInfo) []sampling.Decision
	// Advance closes windows that ended at or before watermark and returns the
	// decisions for the traces held in them.
	Advance(watermark time.Time) []sampling.Decision
	// Flush decides everything held (graceful shutdown).
	Flush() []sampling.Decision
}

// Indexer assembles, decides and writes traces. It implements bus.RecordHandler.
type Indexer struct {
	cfg     Config
	store   TraceWriter
	stages  []Stage
	decider Decider
	log     *slog.Logger
	m       *metrics

	mu        sync.Mutex
	traces    map[span.TraceID]*pending
	byQuiet   *list.List // *pending, least recently updated first
	byAge     *list.List // *pending, oldest first
	spans     int        // spans buffered across traces
	full      []*pending // traces that reached MaxSpansPerTrace
	held      map[span.TraceID]*heldTrace
	heldSpans int

	// Event-time watermark for the decider: the newest root start offered,
	// less the time a trace of that age may still be assembling. Only the
	// decide goroutine touches these.
	maxStart  time.Time
	lastOffer time.Time
	decisions *decisionCache

	writes chan writeJob
	wake   chan struct{}
}

type pending struct {
	id        span.TraceID
	part      partKey
	spans     []span.Span
	tickets   []*bus.Ticket
	first     time.Time
	last      time.Time
	quietElem *list.Element
	ageElem   *list.Element
}

type partKey struct {
	topic string
	part  int32
}

// heldTrace is a complete trace the decider has not decided yet.
type heldTrace struct {
	trace    span.Trace
	warnings []string
	tickets  []*bus.Ticket
}

type writeJob struct {
	trace   index.KeptTrace
	tickets []*bus.Ticket
}

// New returns an indexer writing kept traces to store.
func New(cfg Config, store TraceWriter, stages []Stage, decider Decider, logger *slog.Logger, reg prometheus.Registerer) (*Indexer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ix := &Indexer{
		cfg: cfg, store: store, stages: stages, decider: decider, log: logger,
		traces:    map[span.TraceID]*pending{},
		held:      map[span.TraceID]*heldTrace{},
		byQuiet:   list.New(),
		byAge:     list.New(),
		decisions: newDecisionCache(cfg.DecisionCacheSize),
		writes:    make(chan writeJob, 1024),
		wake:      make(chan struct{}, 1),
	}
	m, err := newMetrics(reg, ix)
	if err != nil {
		return nil, err
	}
	ix.m = m
	return ix, nil
}

// HandleRecords decodes records and buffers their spans by trace.
// When the buffer is over its bounds it waits for the decider to shed the
// oldest traces before taking the next record, so the bounds hold however
// fast records arrive.
func (ix *Indexer) HandleRecords(ctx context.Context, recs []*kgo.Record, tickets []*bus.Ticket) {
	for i, r := range recs {
		ix.handleRecord(r, tickets[i])
		tickets[i].Release()
		for ix.overBounds() && ctx.Err() == nil {
			ix.poke()
			time.Sleep(time.Millisecond)
		}
	}
}

func (ix *Indexer) overBounds() bool {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return len(ix.traces) > ix.cfg.MaxTraces || ix.spans > ix.cfg.MaxBufferedSpans
}

func (ix *Indexer) handleRecord(r *kgo.Record, t *bus.Ticket) {
	spans, err := span.DecodeTraces(r.Value)
	if err != nil {
		// A record that cannot be decoded never will be: skip it rather than
		// block the partition, and count it so it is seen.
		ix.m.badRecords.Inc()
		ix.log.Warn("skipping undecodable record", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "err", err)
		return
	}
	now := time.Now()
	// Records written by us carry one trace; others may mix several.
	for len(spans) > 0 {
		id, ok := traceIDOf(spans[0])
		n := 1
		for n < len(spans) && sameTrace(spans[n], id) {
			n++
		}
		group := spans[:n]
		spans = spans[n:]
		if !ok {
			ix.m.badSpans.Add(float64(len(group)))
			continue
		}
		ix.add(id, partKey{r.Topic, r.Partition}, group, t, now)
	}
}

func traceIDOf(s span.Span) (span.TraceID, bool) {
	id, err := span.TraceIDFromBytes(s.GetTraceId())
	return id, err == nil
}

func sameTrace(s span.Span, id span.TraceID) bool {
	b := s.GetTraceId()
	return len(b) == 16 && span.TraceID(b) == id
}

// add buffers spans of one trace, or routes them by an earlier decision.
func (ix *Indexer) add(id span.TraceID, pk partKey, spans []span.Span, t *bus.Ticket, now time.Time) {
	ix.mu.Lock()
	if h := ix.held[id]; h != nil {
		// Complete but undecided: the spans join it and follow its decision,
		// up to the per-trace cap; past it they are shed (counted) so a
		// runaway trace held in a top-N heap cannot grow memory without bound.
		if room := ix.cfg.MaxSpansPerTrace - len(h.trace.Spans); room < len(spans) {
			ix.m.shedSpans.Add(float64(len(spans) - max(room, 0)))
			spans = spans[:max(room, 0)]
		}
		h.trace.Spans = append(h.trace.Spans, spans...)
		ix.heldSpans += len(spans)
		if h.tickets[len(h.tickets)-1] != t {
			t.Acquire()
			h.tickets = append(h.tickets, t)
		}
		ix.mu.Unlock()
		ix.m.lateSpans.WithLabelValues("held").Add(float64(len(spans)))
		return
	}
	if d, ok := ix.decisions.get(id); ok && ix.traces[id] == nil {
		ix.mu.Unlock()
		if d == nil {
			ix.m.lateSpans.WithLabelValues("dropped").Add(float64(len(spans)))
			return
		}
		ix.m.lateSpans.WithLabelValues("written").Add(float64(len(spans)))
		t.Acquire()
		ix.writes <- writeJob{trace: index.KeptTrace{Trace: span.Trace{ID: id, Spans: spans}, Reasons: d}, tickets: []*bus.Ticket{t}}
		return
	}
	p := ix.traces[id]
	if p == nil {
		p = &pending{id: id, part: pk, first: now}
		p.ageElem = ix.byAge.PushBack(p)
		p.quietElem = ix.byQuiet.PushBack(p)
		ix.traces[id] = p
	} else {
		ix.byQuiet.MoveToBack(p.quietElem)
	}
	p.last = now
	p.spans = append(p.spans, spans...)
	ix.spans += len(spans)
	if len(p.tickets) == 0 || p.tickets[len(p.tickets)-1] != t {
		t.Acquire()
		p.tickets = append(p.tickets, t)
	}
	full := len(p.spans) >= ix.cfg.MaxSpansPerTrace && len(p.spans)-len(spans) < ix.cfg.MaxSpansPerTrace
	if full {
		ix.full = append(ix.full, p)
	}
	ix.mu.Unlock()
	if full {
		ix.poke()
	}
}

func (ix *Indexer) poke() {
	select {
	case ix.wake <- struct{}{}:
	default:
	}
}

// PartitionsGone drops buffered traces of partitions this member no longer
// owns; the new owner replays them from the last commit.
func (ix *Indexer) PartitionsGone(parts map[string][]int32) {
	gone := map[partKey]bool{}
	for t, ps := range parts {
		for _, p := range ps {
			gone[partKey{t, p}] = true
		}
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for id, p := range ix.traces {
		if gone[p.part] {
			ix.removeLocked(id, p)
		}
	}
	ix.full = ix.full[:0]
	for _, p := range ix.traces {
		if len(p.spans) >= ix.cfg.MaxSpansPerTrace {
			ix.full = append(ix.full, p)
		}
	}
}

func (ix *Indexer) removeLocked(id span.TraceID, p *pending) {
	delete(ix.traces, id)
	ix.byAge.Remove(p.ageElem)
	ix.byQuiet.Remove(p.quietElem)
	ix.spans -= len(p.spans)
}

// Run decides and writes traces until ctx is done, then decides every trace
// still buffered and writes it (graceful shutdown flushes what it holds).
// Call it before the consumer starts; it returns once everything is written.
func (ix *Indexer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	writeErr := make(chan error, 1)
	go func() {
		defer wg.Done()
		writeErr <- ix.writeLoop()
	}()
	tick := time.NewTicker(tickFor(ix.cfg.DecisionWait))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			ix.decide(time.Now(), true)
			ix.apply(ix.decider.Flush())
			close(ix.writes)
			wg.Wait()
			return <-writeErr
		case now := <-tick.C:
			ix.decide(now, false)
			ix.advance(now)
		case <-ix.wake:
			ix.decide(time.Now(), false)
		}
	}
}

func tickFor(wait time.Duration) time.Duration {
	return min(max(wait/20, 10*time.Millisecond), 250*time.Millisecond)
}

// decide pops the traces that are due (or all, at shutdown) and sends them
// through the stages and the sampler.
func (ix *Indexer) decide(now time.Time, all bool) {
	for {
		due := ix.popDue(now, all, 256)
		if len(due) == 0 {
			return
		}
		for _, p := range due {
			ix.decideOne(p)
		}
	}
}

func (ix *Indexer) popDue(now time.Time, all bool, maxN int) []*pending {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	var due []*pending
	take := func(p *pending, why string) {
		ix.removeLocked(p.id, p)
		ix.m.decided.WithLabelValues(why).Inc()
		due = append(due, p)
	}
	for len(due) < maxN {
		if e := ix.byQuiet.Front(); e != nil && (all || now.Sub(e.Value.(*pending).last) >= ix.cfg.DecisionWait) {
			why := "quiet"
			if all {
				why = "shutdown"
			}
			take(e.Value.(*pending), why)
			continue
		}
		if e := ix.byAge.Front(); e != nil && now.Sub(e.Value.(*pending).first) >= ix.cfg.DecisionMaxWait {
			take(e.Value.(*pending), "max_wait")
			continue
		}
		if e := ix.byAge.Front(); e != nil && (len(ix.traces) > ix.cfg.MaxTraces || ix.spans > ix.cfg.MaxBufferedSpans) {
			take(e.Value.(*pending), "buffer_full")
			continue
		}
		break
	}
	// Traces at the span cap are decided now; their later spans are late spans.
	for len(due) < maxN && len(ix.full) > 0 {
		p := ix.full[len(ix.full)-1]
		ix.full = ix.full[:len(ix.full)-1]
		if ix.traces[p.id] == p { // not already decided for another reason
			take(p, "max_spans")
		}
	}
	return due
}

func (ix *Indexer) decideOne(p *pending) {
	t := span.Trace{ID: p.id, Spans: p.spans}
	var warnings []string
	for _, s := range ix.stages {
		warnings = append(warnings, s.Process(&t)...)
	}
	info := sampling.Info(&t)
	ix.mu.Lock()
	ix.held[p.id] = &heldTrace{trace: t, warnings: warnings, tickets: p.tickets}
	ix.heldSpans += len(t.Spans)
	ix.mu.Unlock()
	if info.Start.After(ix.maxStart) {
		ix.maxStart = info.Start
	}
	ix.lastOffer = time.Now()
	ix.apply(ix.decider.Offer(info))
}

// advance moves the decider's watermark. It follows event time — the newest
// root start seen, less how long a trace may still be assembling — so a replay
// closes windows exactly where the first run did. When no trace has arrived for
// a while (traffic stopped), wall time moves it instead, or the last window's
// top-N traces would wait for the next request to be written.
func (ix *Indexer) advance(now time.Time) {
	if ix.maxStart.IsZero() {
		return // nothing offered yet
	}
	lag := ix.cfg.DecisionMaxWait + ix.cfg.WatermarkSlack
	wm := ix.maxStart.Add(-lag)
	if idle := now.Add(-lag); now.Sub(ix.lastOffer) > ix.cfg.IdleAdvance && idle.After(wm) {
		wm = idle
	}
	ix.apply(ix.decider.Advance(wm))
}

// apply carries out decisions: kept traces go to the writer, dropped ones
// release their records.
func (ix *Indexer) apply(ds []sampling.Decision) {
	for _, d := range ds {
		ix.mu.Lock()
		h := ix.held[d.ID]
		delete(ix.held, d.ID)
		if h != nil {
			ix.heldSpans -= len(h.trace.Spans)
			ix.decisions.put(d.ID, d.Reasons)
		}
		ix.mu.Unlock()
		if h == nil {
			ix.log.Warn("decision for a trace that is not held", "trace_id", d.ID.String())
			continue
		}
		if !d.Keep() {
			ix.m.traces.WithLabelValues("dropped").Inc()
			for _, tk := range h.tickets {
				tk.Release()
			}
			continue
		}
		ix.m.traces.WithLabelValues("kept").Inc()
		ix.writes <- writeJob{trace: index.KeptTrace{Trace: h.trace, Reasons: d.Reasons, Warnings: h.warnings}, tickets: h.tickets}
	}
}

// writeLoop batches kept traces into store writes. A failed write is retried
// with backoff until it succeeds: its records stay uncommitted meanwhile, and
// the full write queue pushes back on the consumer.
func (ix *Indexer) writeLoop() error {
	var (
		batch   []index.KeptTrace
		tickets []*bus.Ticket
		nspans  int
	)
	flush := func() {
		if len(batch) == 0 {
			return
		}
		start := time.Now()
		for attempt := 0; ; attempt++ {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := ix.store.WriteTraces(ctx, batch)
			cancel()
			if err == nil {
				break
			}
			ix.m.writeErrors.Inc()
			ix.log.Error("write traces failed; retrying", "traces", len(batch), "attempt", attempt+1, "err", err)
			time.Sleep(min(time.Duration(attempt+1)*200*time.Millisecond, 5*time.Second))
		}
		ix.m.writeLatency.Observe(time.Since(start).Seconds())
		ix.m.spansWritten.Add(float64(nspans))
		for _, tk := range tickets {
			tk.Release()
		}
		batch, tickets, nspans = batch[:0], tickets[:0], 0
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var (
			job writeJob
			ok  bool
		)
		if len(batch) == 0 {
			job, ok = <-ix.writes
		} else {
			select {
			case job, ok = <-ix.writes:
			case <-timer.C:
				flush()
				continue
			}
		}
		if !ok {
			flush()
			return nil
		}
		if len(batch) == 0 {
			timer.Reset(20 * time.Millisecond)
		}
		batch = append(batch, job.trace)
		tickets = append(tickets, job.tickets...)
		nspans += len(job.trace.Trace.Spans)
		if nspans >= ix.cfg.WriteBatchSpans {
			flush()
		}
	}
}

// Buffered reports traces and spans awaiting a decision: assembling, or
// complete and held by the decider.
func (ix *Indexer) Buffered() (traces, spans int) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return len(ix.traces) + len(ix.held), ix.spans + ix.heldSpans
}

var _ bus.RecordHandler = (*Indexer)(nil)
