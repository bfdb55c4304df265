package indexer

// Exemplar pinning: an exemplar of an alerting metric keeps the trace it
// names, with reason "exemplar", whatever state the trace is in when the
// exemplar arrives:
//
//   - assembling, or being decided: the pin waits in pins and is taken into
//     the trace's TraceInfo.Pinned at Offer (or merged into its decision in
//     finish, when it arrived while the decider was already at work);
//   - held by the decider in a top-N heap: the decide goroutine asks the
//     decider to Pin it, which decides it at once;
//   - kept and written (or queued for writing): the reason is added in the
//     store, and to the cached decision so later spans carry it;
//   - not seen yet (the exemplar came first): the pin waits in pins, bounded
//     by ExemplarMaxPins and ExemplarPinTTL, until the trace assembles;
//   - dropped (the common case: SDKs export metrics every 10–60 s, traces
//     are decided after decision-wait): the spans-topic offsets of recently
//     dropped traces are remembered (ExemplarLookback, capped), so the
//     trace's records are fetched again from Kafka, skew-repaired and written.
//
// Every pin holds its exemplar record's ticket until the pinned trace is
// written (or the pin is shed), so the record's offset is not committed
// before the pin took effect: a crash replays it. The refetch does not
// observe the spans again: RED metrics counted them the first time.

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/index"
	"github.com/threadline/threadline/metricstore"
	"github.com/threadline/threadline/sampling"
	"github.com/threadline/threadline/span"
)

// AlertingMetrics says whether a metric series (name, and labels: the
// resource's service.name plus the point's attributes) is evaluated by an
// alert rule. Only exemplars of such series pin their traces.
type AlertingMetrics interface {
	Alerting(metric string, labels map[string]string) bool
}

// SpanFetcher reads records of a partition again by offset (bus.Fetcher).
// It fails wrapping bus.ErrRecordsGone when retention removed them.
type SpanFetcher interface {
	Fetch(ctx context.Context, topic string, partition int32, offsets []int64) ([]*kgo.Record, error)
}

// ReasonAdder is the optional store capability to add reasons to a stored
// trace; it reports false when the store does not hold the trace.
type ReasonAdder interface {
	AddReasons(ctx context.Context, id span.TraceID, reasons []string) (bool, error)
}

// Pin outcomes (threadline_indexer_exemplar_pins_total{outcome}).
const (
	pinAssembling    = "assembling"     // trace assembling or being decided: kept at Offer
	pinHeld          = "held"           // trace held in a top-N heap: decided now
	pinAlreadyKept   = "already_kept"   // trace already kept: reason added
	pinEarly         = "early"          // no span yet: waits for the trace
	pinRefetched     = "refetched"      // trace dropped: fetched again and written
	pinRefetchFailed = "refetch_failed" // trace dropped and its records unknown or gone
	pinShed          = "shed"           // a waiting pin dropped past the cap or TTL
)

// refetchTimeout bounds one refetch (fetch and write).
const refetchTimeout = 30 * time.Second

// exemplarState is the indexer's pin bookkeeping. mu nests inside ix.mu.
type exemplarState struct {
	alerting AlertingMetrics // nil: exemplar records are consumed and ignored
	fetcher  SpanFetcher     // nil: dropped traces cannot be kept any more
	adder    ReasonAdder     // nil: an already kept trace gets no new reason

	mu       sync.Mutex
	pins     map[span.TraceID]*pin
	pinAge   *list.List     // *pin, oldest first
	heldPins []span.TraceID // pins of decider-held traces, for the decide goroutine
	dropped  map[span.TraceID]*droppedTrace
	dropAge  []droppedRef // FIFO of dropped; entries may be stale (see evict)
	dropHead int

	jobs chan exemplarJob

	pinsTotal      *prometheus.CounterVec
	evicted        prometheus.Counter
	refetchLatency prometheus.Histogram
}

// pin is a wait for a trace to be decided, with the exemplar records that
// asked for it.
type pin struct {
	id      span.TraceID
	added   time.Time
	tickets []*bus.Ticket
	elem    *list.Element
}

// droppedTrace locates a dropped trace's span records. Kept small: a trace's
// records are on one partition (keyed by trace ID), usually one or two.
type droppedTrace struct {
	at        int64 // Unix nanoseconds when dropped
	partition int32
	offsets   []int64
}

type droppedRef struct {
	id span.TraceID
	at int64
}

// exemplarJob is work for the exemplar worker: refetch a dropped trace, or
// add the reason to a kept one; or, for a rescued trace (reasons set), write
// the spans it had before its root arrived. ticket is released when it is
// done.
type exemplarJob struct {
	id        span.TraceID
	refetch   bool // an exemplar's: the trace was dropped (else it is kept: add the reason)
	partition int32
	offsets   []int64
	reasons   []string // a rescued trace's; nil for an exemplar's job
	ticket    *bus.Ticket
	queued    time.Time
}

func (ix *Indexer) initExemplars(parts Parts, reg prometheus.Registerer) error {
	ex := &exemplarState{
		alerting: parts.Alerting,
		fetcher:  parts.Fetcher,
		pins:     map[span.TraceID]*pin{},
		pinAge:   list.New(),
		dropped:  map[span.TraceID]*droppedTrace{},
		jobs:     make(chan exemplarJob, 256),
		pinsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_indexer_exemplar_pins_total",
			Help: "Exemplars of alerting metrics that pinned their trace (reason exemplar), by the trace's state: assembling, held (in a top-N heap), already_kept, early (no span yet), refetched (dropped, fetched again from Kafka), refetch_failed (dropped, records unknown or gone), shed (a waiting pin dropped past exemplar-max-pins or exemplar-pin-ttl).",
		}, []string{"outcome"}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_indexer_exemplar_lookback_evicted_total",
			Help: "Dropped traces forgotten before exemplar-lookback ended because exemplar-lookback-max-traces was reached; an exemplar naming one later cannot keep it.",
		}),
		refetchLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "threadline_indexer_exemplar_refetch_duration_seconds",
			Help:    "Time to fetch a dropped trace again from Kafka and write it, from the exemplar's arrival.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
	}
	if a, ok := parts.Store.(ReasonAdder); ok {
		ex.adder = a
	}
	for _, o := range []string{pinAssembling, pinHeld, pinAlreadyKept, pinEarly, pinRefetched, pinRefetchFailed, pinShed} {
		ex.pinsTotal.WithLabelValues(o)
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	for _, c := range []prometheus.Collector{ex.pinsTotal, ex.evicted, ex.refetchLatency,
		gauge("threadline_indexer_exemplar_pins_waiting", "Exemplar pins waiting for their trace to be decided.", func() float64 {
			ex.mu.Lock()
			defer ex.mu.Unlock()
			return float64(len(ex.pins))
		}),
		gauge("threadline_indexer_exemplar_lookback_traces", "Dropped traces whose Kafka offsets are remembered for exemplar refetch.", func() float64 {
			ex.mu.Lock()
			defer ex.mu.Unlock()
			return float64(len(ex.dropped))
		}),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register exemplar metrics: %w", err)
		}
	}
	ix.ex = ex
	return nil
}

// handleExemplarRecord pins the traces that the record's alerting exemplars
// name. t is the record's ticket; every pin that takes effect later holds a
// reference on it.
func (ix *Indexer) handleExemplarRecord(r *kgo.Record, t *bus.Ticket) error {
	if ix.ex.alerting == nil {
		return nil
	}
	md := &metricspb.MetricsData{}
	if err := proto.Unmarshal(r.Value, md); err != nil {
		return fmt.Errorf("decode exemplar links: %w", err)
	}
	var ids []span.TraceID
	for _, l := range metricstore.Links(md) {
		if slices.Contains(ids, l.TraceID) {
			continue
		}
		labels := make(map[string]string, len(l.Labels))
		for _, lb := range l.Labels {
			labels[lb.Name] = lb.Value
		}
		if ix.ex.alerting.Alerting(l.Metric, labels) {
			ids = append(ids, l.TraceID)
		}
	}
	now := time.Now()
	for _, id := range ids {
		ix.pin(id, t, now)
	}
	return nil
}

// pin applies one exemplar pin by the trace's state (see the file comment).
func (ix *Indexer) pin(id span.TraceID, t *bus.Ticket, now time.Time) {
	ex := ix.ex
	ix.mu.Lock()
	var (
		outcome string
		job     *exemplarJob
	)
	d, decided := ix.decisions.get(id)
	switch h := ix.held[id]; {
	case h != nil && h.deciding, ix.traces[id] != nil:
		outcome = pinAssembling
		ix.waitPinLocked(id, t, now)
	case h != nil:
		outcome = pinHeld
		ix.waitPinLocked(id, t, now)
		ex.mu.Lock()
		ex.heldPins = append(ex.heldPins, id)
		ex.mu.Unlock()
		ix.poke()
	case decided && d != nil:
		outcome = pinAlreadyKept
		if !slices.Contains(d, sampling.ReasonExemplar) {
			ix.decisions.put(id, append(slices.Clone(d), sampling.ReasonExemplar))
			if ex.adder != nil {
				job = &exemplarJob{id: id}
			}
		}
	default:
		ex.mu.Lock()
		dt := ex.dropped[id]
		delete(ex.dropped, id)
		ex.mu.Unlock()
		switch {
		case dt != nil && ex.fetcher != nil:
			// Counted as refetched or refetch_failed when done. The trace
			// counts as kept from now on: more exemplars of it (SDKs
			// re-export cumulative exemplars) find it kept instead of
			// refetching it again, and late spans are written with it.
			job = &exemplarJob{id: id, refetch: true, partition: dt.partition, offsets: dt.offsets}
			ix.decisions.put(id, []string{sampling.ReasonExemplar})
		case decided:
			outcome = pinRefetchFailed
			ix.log.Warn("exemplar of an alerting metric names a dropped trace whose records are no longer known; raise --exemplar-lookback(-max-traces)", "trace_id", id.String())
		default:
			outcome = pinEarly
			ix.waitPinLocked(id, t, now)
		}
	}
	ix.mu.Unlock()
	if outcome != "" {
		ex.pinsTotal.WithLabelValues(outcome).Inc()
	}
	if job != nil {
		t.Acquire()
		job.ticket, job.queued = t, now
		ex.jobs <- *job
	}
}

// waitPinLocked records a pin waiting for the trace's decision, holding a
// reference on the exemplar record. Caller holds ix.mu.
func (ix *Indexer) waitPinLocked(id span.TraceID, t *bus.Ticket, now time.Time) {
	ex := ix.ex
	ex.mu.Lock()
	defer ex.mu.Unlock()
	p := ex.pins[id]
	if p == nil {
		for len(ex.pins) >= ix.cfg.ExemplarMaxPins {
			ix.shedPinLocked(ex.pinAge.Front().Value.(*pin))
		}
		p = &pin{id: id, added: now}
		p.elem = ex.pinAge.PushBack(p)
		ex.pins[id] = p
	}
	p.tickets = appendTicket(p.tickets, t)
}

// shedPinLocked drops a waiting pin (cap or TTL). Caller holds ex.mu.
func (ix *Indexer) shedPinLocked(p *pin) {
	ex := ix.ex
	ex.pinAge.Remove(p.elem)
	delete(ex.pins, p.id)
	ex.pinsTotal.WithLabelValues(pinShed).Inc()
	for _, tk := range p.tickets {
		tk.Release()
	}
}

// takePinLocked removes id's waiting pin, handing its record references to
// h (released when the trace is written or dropped), and reports whether
// there was one. Caller holds ix.mu.
func (ix *Indexer) takePinLocked(id span.TraceID, h *heldTrace) bool {
	ex := ix.ex
	if ex.alerting == nil {
		return false // no pins without alerting metrics: skip the lock per trace
	}
	ex.mu.Lock()
	defer ex.mu.Unlock()
	p := ex.pins[id]
	if p == nil {
		return false
	}
	ex.pinAge.Remove(p.elem)
	delete(ex.pins, id)
	h.tickets = append(h.tickets, p.tickets...)
	return true
}

// takePins adds ReasonExemplar to pinned when the trace about to be offered
// has a waiting pin.
func (ix *Indexer) takePins(id span.TraceID, pinned []string) []string {
	if ix.ex.alerting == nil {
		return pinned
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if h := ix.held[id]; h != nil && ix.takePinLocked(id, h) && !slices.Contains(pinned, sampling.ReasonExemplar) {
		pinned = append(pinned, sampling.ReasonExemplar)
	}
	return pinned
}

// mergePinLocked adds ReasonExemplar to a decision when a pin arrived while
// the trace was being decided (after takePins). Caller holds ix.mu.
func (ix *Indexer) mergePinLocked(id span.TraceID, h *heldTrace, reasons []string) []string {
	if ix.takePinLocked(id, h) && !slices.Contains(reasons, sampling.ReasonExemplar) {
		reasons = append(slices.Clone(reasons), sampling.ReasonExemplar)
	}
	return reasons
}

// applyPins runs on the decide goroutine (the decider is not safe for
// concurrent use): it decides the decider-held traces that were pinned, and
// sheds pins that waited longer than the TTL.
func (ix *Indexer) applyPins(now time.Time) {
	ex := ix.ex
	ex.mu.Lock()
	ids := ex.heldPins
	ex.heldPins = nil
	for e := ex.pinAge.Front(); e != nil; e = ex.pinAge.Front() {
		if p := e.Value.(*pin); now.Sub(p.added) > ix.cfg.ExemplarPinTTL {
			ix.shedPinLocked(p)
			continue
		}
		break
	}
	ex.mu.Unlock()
	for _, id := range ids {
		ix.mu.Lock()
		h := ix.held[id]
		ix.mu.Unlock()
		if h == nil || h.deciding {
			continue // decided meanwhile; finish merged the pin
		}
		if d, ok := ix.decider.Pin(id, sampling.ReasonExemplar); ok {
			ix.finish(id, nil, nil, d.Reasons, nil)
		}
	}
}

// rememberDropped notes where a dropped trace's span records are, for a
// refetch if an exemplar names it within the lookback, or if its root
// arrives later (rescue). orphan says it was dropped without its root:
// without alert rules only such traces are remembered (and the late spans
// of one already remembered), since no exemplar can ask for the others.
func (ix *Indexer) rememberDropped(id span.TraceID, tickets []*bus.Ticket, orphan bool) {
	if ix.cfg.ExemplarLookback <= 0 || ix.ex.fetcher == nil {
		return
	}
	ex := ix.ex
	now := time.Now().UnixNano()
	ex.mu.Lock()
	defer ex.mu.Unlock()
	dt := ex.dropped[id]
	if dt == nil && ex.alerting == nil && !orphan {
		return
	}
	for _, tk := range tickets {
		if tk.Topic() != ix.cfg.TracesTopic {
			continue
		}
		if dt == nil {
			dt = &droppedTrace{at: now, partition: tk.Partition()}
			ex.dropped[id] = dt
			ex.dropAge = append(ex.dropAge, droppedRef{id: id, at: now})
		}
		if tk.Partition() == dt.partition && !slices.Contains(dt.offsets, tk.Offset()) {
			dt.offsets = append(dt.offsets, tk.Offset())
		}
	}
	ix.evictDroppedLocked(now)
}

// evictDroppedLocked forgets dropped traces past the lookback or the cap,
// oldest first. A FIFO entry is stale when its trace was refetched (gone from
// the map) or dropped again later (newer time). Caller holds ex.mu.
func (ix *Indexer) evictDroppedLocked(now int64) {
	ex := ix.ex
	horizon := now - int64(ix.cfg.ExemplarLookback)
	for ex.dropHead < len(ex.dropAge) {
		ref := ex.dropAge[ex.dropHead]
		dt := ex.dropped[ref.id]
		stale := dt == nil || dt.at != ref.at
		over := len(ex.dropped) > ix.cfg.ExemplarLookbackMaxTraces
		if !stale && ref.at >= horizon && !over {
			break
		}
		if !stale {
			delete(ex.dropped, ref.id)
			if over && ref.at >= horizon {
				ex.evicted.Inc()
			}
		}
		ex.dropAge[ex.dropHead] = droppedRef{}
		ex.dropHead++
	}
	// Reclaim the consumed front once it is half the slice.
	if ex.dropHead > 1024 && ex.dropHead*2 > len(ex.dropAge) {
		ex.dropAge = append(ex.dropAge[:0], ex.dropAge[ex.dropHead:]...)
		ex.dropHead = 0
	}
}

// runExemplarWorker processes refetch and add-reason jobs until stop is
// closed, then finishes the queued ones (bounded by refetchTimeout each), so
// a graceful shutdown commits them. Run closes stop only after its last
// decisions, which may queue jobs (a rescued trace kept by the shutdown
// flush). The returned func waits for it to stop.
func (ix *Indexer) runExemplarWorker(stop <-chan struct{}) func() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case j := <-ix.ex.jobs:
				ix.exemplarJob(j)
			case <-stop:
				for {
					select {
					case j := <-ix.ex.jobs:
						ix.exemplarJob(j)
					default:
						return
					}
				}
			}
		}
	}()
	return func() { <-done }
}

func (ix *Indexer) exemplarJob(j exemplarJob) {
	defer j.ticket.Release()
	ctx, cancel := context.WithTimeout(context.Background(), refetchTimeout)
	defer cancel()
	if j.reasons != nil {
		if err := ix.refetch(ctx, j.id, j.partition, j.offsets, j.reasons); err != nil {
			ix.m.lateRoots.WithLabelValues(lateRootRefetchFailed).Inc()
			ix.log.Warn("could not fetch again the spans a trace had before its root arrived; it is kept without them", "trace_id", j.id.String(), "err", err)
			return
		}
		ix.m.lateRoots.WithLabelValues(lateRootRefetched).Inc()
		return
	}
	reasons := []string{sampling.ReasonExemplar}
	if !j.refetch {
		// The trace may still be in the write queue: retry until it is
		// stored (or the timeout: then the reason is lost, logged).
		for attempt := 1; ; attempt++ {
			found, err := ix.ex.adder.AddReasons(ctx, j.id, reasons)
			if err == nil && found {
				return
			}
			if ctx.Err() != nil {
				ix.log.Warn("could not add reason exemplar to a kept trace", "trace_id", j.id.String(), "err", err)
				return
			}
			time.Sleep(min(time.Duration(attempt)*50*time.Millisecond, time.Second))
		}
	}
	if err := ix.refetch(ctx, j.id, j.partition, j.offsets, reasons); err != nil {
		ix.mu.Lock()
		ix.decisions.put(j.id, nil) // dropped after all
		ix.mu.Unlock()
		ix.ex.pinsTotal.WithLabelValues(pinRefetchFailed).Inc()
		ix.log.Warn("could not keep a dropped trace that an alerting metric's exemplar names", "trace_id", j.id.String(), "err", err)
		return
	}
	ix.m.traces.WithLabelValues("kept").Inc()
	if ix.obs != nil {
		ix.obs.Link(j.id, reasons)
	}
	ix.ex.pinsTotal.WithLabelValues(pinRefetched).Inc()
	ix.ex.refetchLatency.Observe(time.Since(j.queued).Seconds())
}

// refetchDropped has the exemplar worker write the spans a rescued trace,
// kept for reasons, had before its root arrived, when their records are
// known. It does not wait: the queue full (or the worker gone at shutdown),
// the trace is kept without them, counted and logged.
func (ix *Indexer) refetchDropped(id span.TraceID, reasons []string, t *bus.Ticket) {
	ex := ix.ex
	ex.mu.Lock()
	dt := ex.dropped[id]
	delete(ex.dropped, id)
	ex.mu.Unlock()
	if dt == nil {
		return // not remembered (no fetcher, or past the lookback): the late spans are what is kept
	}
	t.Acquire()
	select {
	case ex.jobs <- exemplarJob{id: id, partition: dt.partition, offsets: dt.offsets, reasons: reasons, ticket: t, queued: time.Now()}:
	default:
		t.Release()
		ix.m.lateRoots.WithLabelValues(lateRootRefetchFailed).Inc()
		ix.log.Warn("refetch queue full: a rescued trace is kept without the spans it had before its root arrived", "trace_id", id.String())
	}
}

// refetch reads a dropped trace's records again, repairs it with the stages
// and writes it kept for reasons. Its spans are not observed again.
func (ix *Indexer) refetch(ctx context.Context, id span.TraceID, partition int32, offsets []int64, reasons []string) error {
	recs, err := ix.ex.fetcher.Fetch(ctx, ix.cfg.TracesTopic, partition, offsets)
	if err != nil {
		return err
	}
	var chunks []chunk
	for _, r := range recs {
		if kid, ok := keyTraceID(r.Key); ok && kid != id {
			continue // another trace's record at a reused offset: not ours
		}
		chunks = append(chunks, chunk{data: r.Value, observed: true})
	}
	spans, _, _ := ix.decodeChunks(id, chunks) // observed already; not packed, so not leased
	t := span.Trace{ID: id, Spans: spans}
	if len(t.Spans) == 0 {
		return errors.New("no span of the trace at its remembered offsets")
	}
	var warnings []string
	for _, s := range ix.stages {
		warnings = append(warnings, s.Process(&t)...)
	}
	kt := []index.KeptTrace{{Trace: t, Reasons: reasons, Warnings: warnings}}
	for attempt := 1; ; attempt++ {
		// The trace's records were committed when it was dropped, so no
		// replay would rewrite its posting lists: they are flushed now.
		err = ix.store.WriteTracesThen(ctx, kt, nil)
		if err == nil {
			err = ix.store.Flush(ctx)
		}
		if err == nil {
			break
		}
		ix.m.writeErrors.Inc()
		if _, invalid := errors.AsType[*index.InvalidTraceError](err); invalid || ctx.Err() != nil {
			return fmt.Errorf("write refetched trace: %w", err)
		}
		time.Sleep(min(time.Duration(attempt)*200*time.Millisecond, 5*time.Second))
	}
	return nil
}
