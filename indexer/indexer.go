package indexer

import (
	"container/list"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/clockskew"
	"github.com/threadline/threadline/index"
	"github.com/threadline/threadline/red"
	"github.com/threadline/threadline/sampling"
	"github.com/threadline/threadline/span"
)

// TraceWriter stores kept traces. Writes must be idempotent: a replay after a
// crash rewrites the same spans. A write may become durable after
// WriteTracesThen returns (the span store writes posting lists for several
// batches at once): durable runs then, and the traces' Kafka records are
// held until it has. Flush makes every write so far durable.
//
// WriteTracesThen must keep nothing of the traces' spans once it returns
// nil — not a span, nor a string, slice or Resource from one — as the
// indexer then recycles the memory they are decoded into (see
// span.Lease); anything it keeps longer, it copies.
type TraceWriter interface {
	WriteTracesThen(ctx context.Context, traces []index.KeptTrace, durable func()) error
	Flush(ctx context.Context) error
}

// Stage transforms a complete trace before sampling, e.g. clock-skew repair.
// It returns warnings to store with the trace. It must not add, remove or
// reorder spans: the Observer is told which records they came from by
// position. It must keep nothing of the trace once Process returns (see
// TraceWriter).
type Stage interface {
	Process(t *span.Trace) []string
}

// SkewRepair is the clock-skew repair stage: it repairs each trace with adj
// (see clockskew) and stores adj's warnings with it.
func SkewRepair(adj clockskew.Adjuster) Stage { return skewStage{adj} }

type skewStage struct{ adj clockskew.Adjuster }

func (s skewStage) Process(t *span.Trace) []string { return s.adj.Adjust(t).Warnings }

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
	// Pin decides a held trace now, kept for reason, when an exemplar of an
	// alerting metric names it; false when the trace is not held.
	Pin(id span.TraceID, reason string) (sampling.Decision, bool)
}

// Observer derives metrics from every span before sampling (RED metrics).
// Each span must be observed exactly once: parts name the Kafka records the
// spans came from, in span order, so that a replay of a record already
// counted is not counted again. done runs once the counts are durable, and
// the indexer holds the spans' Kafka records until then; Committed is told
// the offsets committed after that. ObserveDurable must keep nothing of the
// trace once it returns (see TraceWriter): names it counts by, it copies.
type Observer interface {
	ObserveDurable(t *span.Trace, parts []red.Part, done func())
	Committed(topic string, partition int32, offset int64)
	// Link records that a trace was kept, so metric buckets point at it.
	Link(id span.TraceID, reasons []string)
}

// chunk is part of one trace as it arrived: an encoded OTLP TracesData.
// Buffers hold chunks rather than decoded spans because a decoded span costs
// several times its wire size in memory; spans are decoded once, when the
// trace is decided (or, for late spans, when they are written).
//
// Records buffered as they came from Kafka are held packed (see packer):
// the decision buffer holds decision-wait's worth of traffic, and is most of
// the indexer's memory under load.
type chunk struct {
	data     []byte
	spans    int
	observed bool     // its spans were already given to the Observer
	packed   bool     // data is the TracesData packed (see packer)
	gen      *packGen // what a packed chunk refers to: its dictionary and heads
	// rec is the record the chunk came from, part its place among the
	// record's parts (one per trace it held), so RED counting knows a
	// replayed record; nil for chunks made otherwise.
	rec         *bus.Ticket
	part, parts int32
}

// releaseLeases releases the leases of a trace's spans, once nothing reads
// the spans any more (see span.Lease).
func releaseLeases(leases []span.Lease) {
	for i := range leases {
		leases[i].Release()
	}
}

// Parts are what the indexer drives. Store and Decider are required.
type Parts struct {
	Store    TraceWriter
	Stages   []Stage
	Decider  Decider
	Observer Observer   // optional: metrics from every span
	Logs     LogSink    // optional: without it, log records are consumed and dropped
	Metrics  MetricSink // optional: without it, metric records are consumed and dropped
	// Alerting names the alerting metrics whose exemplars keep their traces
	// (see exemplars.go); optional: without it, exemplar links pin nothing.
	Alerting AlertingMetrics
	// Fetcher reads dropped traces' records again when an exemplar pins
	// them after the decision; optional: without it they stay dropped.
	Fetcher SpanFetcher
}

// Indexer assembles, decides and writes traces and their log lines. It
// implements bus.RecordHandler.
type Indexer struct {
	cfg     Config
	store   TraceWriter
	stages  []Stage
	decider Decider
	obs     Observer
	logs    LogSink
	metrics MetricSink
	log     *slog.Logger
	bad     *badLog // bad input's lines, rate-limited
	m       *metrics
	ex      *exemplarState
	decoder span.Decoder // shares resources and scopes between decoded records
	packer  packer       // compresses buffered records; HandleRecords only

	mu        sync.Mutex
	traces    map[span.TraceID]*pending // assembling
	byQuiet   *list.List                // *pending, least recently updated first
	byAge     *list.List                // *pending, oldest first
	spans     int                       // spans of assembling traces
	full      []*pending                // traces that reached MaxSpansPerTrace
	held      map[span.TraceID]*heldTrace
	heldSpans int
	regrown   []regrownTrace // held orphans whose root arrived (see regrow)
	decisions *decisionCache
	ahead     *readAhead // how many spans the consumer may buffer

	// Event-time watermark for the decider: the newest root end offered,
	// less the time a trace of that age may still be assembling. Only the
	// decide goroutine touches these.
	maxEnd    time.Time
	lastOffer time.Time

	writes    []chan writeJob // one per write worker; a trace always goes to the same one
	logWrites chan logJob
	wake      chan struct{}
}

type pending struct {
	id        span.TraceID
	part      partKey
	chunks    []chunk
	nspans    int
	logs      []chunk // log records of this trace, encoded LogsData
	nlogs     int
	tickets   []*bus.Ticket
	first     time.Time
	last      time.Time
	ingested  time.Time // the newest Kafka timestamp of its span records
	rescued   bool      // reopened by a late root after it was dropped (see rescue)
	quietElem *list.Element
	ageElem   *list.Element
}

type partKey struct {
	topic string
	part  int32
}

// heldTrace is a complete trace being decided, or held by the decider until
// its window closes. Spans arriving meanwhile join its chunks.
type heldTrace struct {
	deciding bool // popped, not yet offered: spans join up to twice the cap
	chunks   []chunk
	nspans   int
	logs     []chunk
	skew     map[clockskew.Instance]time.Duration
	warnings []string
	tickets  []*bus.Ticket
	ingested time.Time // see pending; with the spans that joined it
	rescued  bool      // see pending
	orphan   bool      // offered without its root (sampling.TraceInfo.Orphan)
}

// regrownTrace is a trace held without its root when the root arrived: the
// decide goroutine ranks it again by info (the root's).
type regrownTrace struct {
	id       span.TraceID
	info     sampling.TraceInfo
	ingested time.Time
}

// writeJob is a kept trace for the writer: spans already decoded, with the
// leases they were decoded into, plus chunks still encoded (late spans),
// decoded by the writer.
type writeJob struct {
	id       span.TraceID
	spans    []span.Span
	leases   []span.Lease
	chunks   []chunk
	reasons  []string
	warnings []string
	tickets  []*bus.Ticket
}

// New returns an indexer over parts.
func New(cfg Config, parts Parts, logger *slog.Logger, reg prometheus.Registerer) (*Indexer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if parts.Store == nil || parts.Decider == nil {
		return nil, errors.New("indexer: a store and a decider are required")
	}
	ix := &Indexer{
		cfg: cfg, store: parts.Store, stages: parts.Stages, decider: parts.Decider, obs: parts.Observer, logs: parts.Logs, metrics: parts.Metrics, log: logger, bad: newBadLog(logger),
		logWrites: make(chan logJob, 1024),
		traces:    map[span.TraceID]*pending{},
		held:      map[span.TraceID]*heldTrace{},
		byQuiet:   list.New(),
		byAge:     list.New(),
		decisions: newDecisionCache(cfg.DecisionCacheSize),
		ahead:     newReadAhead(cfg.DecisionWait, cfg.MaxBufferedSpans),
		wake:      make(chan struct{}, 1),
	}
	ix.writes = make([]chan writeJob, cfg.WriteWorkers)
	for i := range ix.writes {
		ix.writes[i] = make(chan writeJob, max(64, 1024/cfg.WriteWorkers))
	}
	m, err := newMetrics(reg, ix)
	if err != nil {
		return nil, err
	}
	ix.m = m
	if err := ix.initExemplars(parts, reg); err != nil {
		return nil, err
	}
	return ix, nil
}

// HandleRecords buffers records by trace. It waits before taking the next
// record while the buffer is over its bounds or runs too far ahead of the
// decider (mustWait), so the bounds hold however fast records arrive and a
// backlog waits in Kafka rather than in memory.
func (ix *Indexer) HandleRecords(ctx context.Context, recs []*kgo.Record, tickets []*bus.Ticket) {
	for i, r := range recs {
		ix.handleRecord(r, tickets[i])
		tickets[i].Release()
		for ix.mustWait() && ctx.Err() == nil {
			ix.poke()
			time.Sleep(time.Millisecond)
		}
	}
}

// mustWait reports whether the consumer should wait for the decider: the
// buffer is over its bounds, or over the read-ahead limit (readahead.go).
// It also has the packer pack dense while the buffer holds more than half
// of MaxBufferedSpans: below that, memory is cheaper than the CPU.
func (ix *Indexer) mustWait() bool {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.packer.dense = ix.spans > ix.cfg.MaxBufferedSpans/2
	return len(ix.traces) > ix.cfg.MaxTraces || ix.spans > ix.ahead.Limit()
}

func (ix *Indexer) handleRecord(r *kgo.Record, t *bus.Ticket) {
	now := time.Now()
	pk := partKey{r.Topic, r.Partition}
	// When the record reached Kafka, by its producer's clock (the record's
	// timestamp, the same on every replay); now for a record without one.
	ingested := r.Timestamp
	if ingested.UnixMilli() <= 0 {
		ingested = now
	}
	switch r.Topic {
	case ix.cfg.LogsTopic:
		if err := ix.handleLogRecord(pk, r.Key, r.Value, t, now); err != nil {
			ix.badRecord(r, err)
		}
		return
	case ix.cfg.MetricsTopic:
		if err := ix.handleMetricRecord(r.Value); err != nil {
			ix.badRecord(r, err)
		}
		return
	case ix.cfg.ExemplarsTopic:
		if err := ix.handleExemplarRecord(r, t); err != nil {
			ix.badRecord(r, err)
		}
		return
	}
	// Records keyed by the hex trace ID (ours, and the OTel Collector's with
	// partition_traces_by_id) hold one trace: buffer them as they are.
	if id, ok := keyTraceID(r.Key); ok {
		c, err := ix.packer.pack(r.Value, now)
		if err != nil {
			ix.badRecord(r, err)
			return
		}
		c.rec, c.parts = t, 1
		// The chunk holds a packed copy: the client may reuse the
		// buffer the record's batch was decompressed into.
		r.Recycle()
		ix.add(id, pk, c, t, now, ingested, true)
		return
	}
	// Other records may mix traces: decode, regroup, re-encode.
	spans, err := ix.decoder.DecodeTraces(r.Value)
	if err != nil {
		ix.badRecord(r, err)
		return
	}
	groups := map[span.TraceID][]span.Span{}
	var order []span.TraceID
	for _, s := range spans {
		id, err := span.TraceIDFromBytes(s.GetTraceId())
		if err != nil {
			ix.m.badSpans.Inc()
			continue
		}
		if _, ok := groups[id]; !ok {
			order = append(order, id)
		}
		groups[id] = append(groups[id], s)
	}
	for i, id := range order {
		data, err := proto.Marshal(span.ToTracesData(groups[id]))
		if err != nil {
			ix.badRecord(r, err)
			return
		}
		ix.add(id, pk, chunk{data: data, spans: len(groups[id]), rec: t, part: int32(i), parts: int32(len(order))}, t, now, ingested, true)
	}
}

func (ix *Indexer) badRecord(r *kgo.Record, err error) {
	// A record that cannot be decoded never will be: skip it rather than
	// block the partition, and count it so it is seen.
	ix.m.badRecords.Inc()
	ix.bad.warn("skipping undecodable record", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "err", err)
}

// keyTraceID reads a record key that is a 32-digit hex trace ID.
func keyTraceID(key []byte) (span.TraceID, bool) {
	var id span.TraceID
	if len(key) != 32 {
		return id, false
	}
	if _, err := hex.Decode(id[:], key); err != nil || id.IsZero() {
		return id, false
	}
	return id, true
}

// decodeChunks decodes a trace's chunks, keeping only spans of that trace (a
// record keyed by one trace ID that carries others is counted, not trusted),
// and names the record of each chunk not yet observed, in span order.
// Packed chunks are decoded into leases, returned for the caller to
// release once nothing reads the spans any more; left unreleased, they are
// garbage-collected.
func (ix *Indexer) decodeChunks(id span.TraceID, chunks []chunk) ([]span.Span, []red.Part, []span.Lease) {
	n := 0
	for _, c := range chunks {
		n += c.spans
	}
	into := make([]span.Span, 0, n)
	var (
		parts  []red.Part
		leases []span.Lease
	)
	for _, c := range chunks {
		before := len(into)
		var (
			spans []span.Span
			err   error
		)
		if c.packed {
			var l span.Lease
			if l, err = c.lease(); err == nil {
				if spans, err = ix.decoder.DecodeLeased(into, &l); err == nil {
					into = spans
					leases = append(leases, l)
				} else {
					l.Release() // no span of it was kept
				}
			}
		} else if spans, err = ix.decoder.DecodeTraces(c.data); err == nil {
			into = append(into, spans...)
		}
		if err != nil {
			ix.m.badRecords.Inc()
			ix.bad.warn("skipping undecodable spans", "trace_id", id.String(), "err", err)
			continue
		}
		kept := into[:before]
		for _, s := range into[before:] {
			if b := s.GetTraceId(); len(b) != 16 || span.TraceID(b) != id {
				ix.m.badSpans.Inc()
				continue
			}
			// The collector refuses these, but Kafka holds whatever any
			// producer wrote, and the store refuses them too.
			if _, err := span.SpanIDFromBytes(s.GetSpanId()); err != nil {
				ix.m.badSpans.Inc()
				continue
			}
			kept = append(kept, s)
		}
		clear(into[len(kept):])
		into = kept
		if c.rec != nil && !c.observed {
			parts = append(parts, red.Part{Topic: c.rec.Topic(), Partition: c.rec.Partition(), Offset: c.rec.Offset(), Index: int(c.part), Of: int(c.parts), Spans: len(into) - before})
		}
	}
	return into, parts, leases
}

// observe hands spans to the Observer, holding their records until the
// counts are durable.
func (ix *Indexer) observe(id span.TraceID, spans []span.Span, parts []red.Part, tickets []*bus.Ticket) {
	if ix.obs == nil || len(spans) == 0 {
		return
	}
	for _, tk := range tickets {
		tk.Acquire()
	}
	ix.obs.ObserveDurable(&span.Trace{ID: id, Spans: spans}, parts, func() {
		for _, tk := range tickets {
			tk.Release()
		}
	})
}

// observeChunks decodes and observes the chunks not yet observed. Nothing
// reads their spans after the Observer, so their leases are released then.
func (ix *Indexer) observeChunks(id span.TraceID, chunks []chunk, tickets []*bus.Ticket) {
	var fresh []chunk
	for _, c := range chunks {
		if !c.observed {
			fresh = append(fresh, c)
		}
	}
	if len(fresh) > 0 {
		spans, parts, leases := ix.decodeChunks(id, fresh)
		ix.observe(id, spans, parts, tickets)
		releaseLeases(leases)
	}
}

// add buffers a chunk of one trace, or routes it by an earlier decision;
// mayRescue lets a root arriving for a dropped trace reopen it (rescue).
func (ix *Indexer) add(id span.TraceID, pk partKey, c chunk, t *bus.Ticket, now, ingested time.Time, mayRescue bool) {
	ix.mu.Lock()
	if h := ix.held[id]; h != nil {
		// Complete but undecided: the spans join it and follow its decision,
		// up to the per-trace cap; past it they are shed (counted) so a
		// runaway trace held in a top-N heap cannot grow memory without bound.
		// While it is being decided the bound is twice the cap: it may have
		// been taken at the cap, and a trace still streaming then has its
		// next records arrive during the decision.
		limit := ix.cfg.MaxSpansPerTrace
		if h.deciding {
			limit *= 2
		}
		if h.nspans+c.spans > limit {
			ix.mu.Unlock()
			ix.m.shedSpans.Add(float64(c.spans))
			ix.observeChunks(id, []chunk{c}, []*bus.Ticket{t}) // metrics still count them
			return
		}
		h.chunks = append(h.chunks, c)
		h.nspans += c.spans
		ix.heldSpans += c.spans
		h.tickets = appendTicket(h.tickets, t)
		if ingested.After(h.ingested) {
			h.ingested = ingested
		}
		orphan := h.orphan && !h.deciding
		ix.mu.Unlock()
		ix.m.lateSpans.WithLabelValues("held").Add(float64(c.spans))
		if orphan {
			ix.regrow(id, h, c, ingested)
		}
		return
	}
	if d, ok := ix.decisions.get(id); ok && ix.traces[id] == nil {
		ix.mu.Unlock()
		if d == nil {
			// Decoded once: to look for a late root (rescue), else to
			// count the dropped spans.
			spans, parts, leases := ix.decodeChunks(id, []chunk{c})
			if mayRescue && hasRoot(spans) {
				releaseLeases(leases)
				ix.rescue(id, pk, c, t, now, ingested)
				return
			}
			ix.m.lateSpans.WithLabelValues("dropped").Add(float64(c.spans))
			ix.rememberDropped(id, []*bus.Ticket{t}, false)
			if !c.observed {
				ix.observe(id, spans, parts, []*bus.Ticket{t})
			}
			releaseLeases(leases)
			return
		}
		ix.m.lateSpans.WithLabelValues("written").Add(float64(c.spans))
		t.Acquire()
		ix.queueWrite(writeJob{id: id, chunks: []chunk{c}, reasons: d, tickets: []*bus.Ticket{t}})
		return
	}
	_, full := ix.bufferLocked(id, pk, c, t, now, ingested)
	ix.mu.Unlock()
	if full {
		ix.poke()
	}
}

// bufferLocked adds a chunk to the trace assembling it (created if new) and
// reports whether the trace just reached the span cap: then the caller,
// once it has unlocked ix.mu, pokes the decider. Caller holds ix.mu.
func (ix *Indexer) bufferLocked(id span.TraceID, pk partKey, c chunk, t *bus.Ticket, now, ingested time.Time) (*pending, bool) {
	p := ix.pendingLocked(id, pk, now)
	p.chunks = append(p.chunks, c)
	p.nspans += c.spans
	ix.spans += c.spans
	p.tickets = appendTicket(p.tickets, t)
	if ingested.After(p.ingested) {
		p.ingested = ingested
	}
	full := p.nspans >= ix.cfg.MaxSpansPerTrace && p.nspans-c.spans < ix.cfg.MaxSpansPerTrace
	if full {
		ix.full = append(ix.full, p)
	}
	return p, full
}

// regrow has a trace the decider holds without its root (ranked by a
// child, see rescue) ranked again when the root arrives in chunk c, which
// has joined it: by the root's name, end and duration. Otherwise the root
// would follow the child's rank, and the trace be dropped with it when a
// slower child of that name pushed it out of its heap.
// It reports whether c held a root.
func (ix *Indexer) regrow(id span.TraceID, h *heldTrace, c chunk, ingested time.Time) bool {
	info, root := ix.lateRoot(id, c)
	if !root {
		return false
	}
	ix.mu.Lock()
	if ix.held[id] == h && h.orphan && !h.deciding {
		h.orphan = false
		ix.regrown = append(ix.regrown, regrownTrace{id: id, info: info, ingested: ingested})
	}
	ix.mu.Unlock()
	ix.poke()
	return true
}

// rescueJoined hands each chunk that joined the dropped orphan h while it
// was decided, and holds a root, to rescue (the root arrived between the
// pop and the offer, too late for this decision), and returns the other
// chunks and their records' tickets: what the drop observes and remembers.
func (ix *Indexer) rescueJoined(id span.TraceID, h *heldTrace) ([]chunk, []*bus.Ticket) {
	var (
		kept    []chunk
		rescued []*bus.Ticket
	)
	for _, c := range h.chunks {
		if c.observed || c.rec == nil {
			kept = append(kept, c)
			continue
		}
		if _, root := ix.lateRoot(id, c); !root {
			kept = append(kept, c)
			continue
		}
		ix.rescue(id, partKey{c.rec.Topic(), c.rec.Partition()}, c, c.rec, time.Now(), h.ingested)
		rescued = append(rescued, c.rec)
	}
	if len(rescued) == 0 {
		return h.chunks, h.tickets
	}
	// A record holds one chunk per trace, so a rescued chunk's ticket is no
	// other chunk's.
	var tickets []*bus.Ticket
	for _, tk := range h.tickets {
		if !slices.Contains(rescued, tk) {
			tickets = append(tickets, tk)
		}
	}
	return kept, tickets
}

// lateRoot reports whether chunk c of trace id holds a root span (one
// without a parent), and what the decider needs of its spans, ranked by
// that root.
func (ix *Indexer) lateRoot(id span.TraceID, c chunk) (sampling.TraceInfo, bool) {
	spans, _, leases := ix.decodeChunks(id, []chunk{c})
	defer releaseLeases(leases)
	if !hasRoot(spans) {
		return sampling.TraceInfo{}, false
	}
	return traceInfo(&span.Trace{ID: id, Spans: spans}), true
}

// traceInfo is what the decider needs of t, the root's names copied: the
// decider may keep them (a top-N heap's key) for longer than the spans'
// leases last.
func traceInfo(t *span.Trace) sampling.TraceInfo {
	info := sampling.Info(t)
	info.RootService, info.RootOperation = strings.Clone(info.RootService), strings.Clone(info.RootOperation)
	return info
}

// hasRoot reports whether some span has no parent.
func hasRoot(spans []span.Span) bool {
	return slices.ContainsFunc(spans, func(s span.Span) bool { return !s.HasParent() })
}

// applyRegrown offers the regrown traces to the decider again (it replaces
// a held trace's entry), on the decide goroutine.
func (ix *Indexer) applyRegrown() {
	ix.mu.Lock()
	rs := ix.regrown
	ix.regrown = nil
	ix.mu.Unlock()
	for _, r := range rs {
		ix.mu.Lock()
		h := ix.held[r.id]
		ix.mu.Unlock()
		if h == nil || h.deciding {
			continue // decided meanwhile, with the root
		}
		ix.rank(&r.info, r.ingested)
		ix.m.lateRoots.WithLabelValues(lateRootReranked).Inc()
		ix.apply(ix.decider.Offer(r.info))
	}
}

// rescue reopens a dropped trace when its root arrives in chunk c. A request that outlasts the
// decision wait has its children exported first (SDKs export each span as
// it ends), so the trace was decided without its root: ranked by a child's
// name and duration, it was most likely dropped — and it may be the slowest
// request of its window. Reopened, the late spans assemble as a trace of
// their own, which is decided and ranked by the root; kept, it is written,
// and the spans dropped before are fetched again from Kafka when their
// records are still known (see rememberDropped) and written with it.
func (ix *Indexer) rescue(id span.TraceID, pk partKey, c chunk, t *bus.Ticket, now, ingested time.Time) {
	ix.mu.Lock()
	if d, ok := ix.decisions.get(id); !ok || d != nil || ix.traces[id] != nil || ix.held[id] != nil {
		// Decided otherwise meanwhile (an exemplar kept it): route by that.
		ix.mu.Unlock()
		ix.add(id, pk, c, t, now, ingested, false)
		return
	}
	p, full := ix.bufferLocked(id, pk, c, t, now, ingested)
	p.rescued = true
	ix.mu.Unlock()
	ix.m.lateRoots.WithLabelValues(lateRootReopened).Inc()
	if full {
		ix.poke()
	}
}

// pendingLocked returns the assembling trace id, created if new, marked as
// just updated.
func (ix *Indexer) pendingLocked(id span.TraceID, pk partKey, now time.Time) *pending {
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
	return p
}

func (ix *Indexer) poke() {
	select {
	case ix.wake <- struct{}{}:
	default:
	}
}

// Committed tells the Observer that nothing below offset is replayed any
// more, so it may forget which records there it counted.
func (ix *Indexer) Committed(topic string, partition int32, offset int64) {
	if ix.obs != nil {
		ix.obs.Committed(topic, partition, offset)
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
		if p.nspans >= ix.cfg.MaxSpansPerTrace {
			ix.full = append(ix.full, p)
		}
	}
}

func (ix *Indexer) removeLocked(id span.TraceID, p *pending) {
	delete(ix.traces, id)
	ix.byAge.Remove(p.ageElem)
	ix.byQuiet.Remove(p.quietElem)
	ix.spans -= p.nspans + p.nlogs
}

// Run decides and writes traces until ctx is done, then decides every trace
// still buffered and writes it (graceful shutdown flushes what it holds).
// Call it before the consumer starts; it returns once everything is written.
func (ix *Indexer) Run(ctx context.Context) error {
	stopExemplars := make(chan struct{})
	exemplarsDone := ix.runExemplarWorker(stopExemplars)
	writesDone := make(chan struct{})
	go func() { defer close(writesDone); ix.writeLoop() }()
	logsDone := make(chan struct{})
	go func() { defer close(logsDone); ix.logLoop() }()
	tick := time.NewTicker(tickFor(ix.cfg.DecisionWait))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			ix.decide(time.Now(), true)
			ix.apply(ix.decider.Flush())
			for _, w := range ix.writes {
				close(w)
			}
			<-writesDone // failed writes are retried until they succeed
			// After the last decisions, which may have queued refetches.
			close(stopExemplars)
			exemplarsDone()
			close(ix.logWrites)
			<-logsDone
			return nil
		case now := <-tick.C:
			ix.decide(now, false)
			ix.advance(now)
		case <-ix.wake:
			ix.decide(time.Now(), false)
		}
	}
}

// decideBatch is how many traces are moved from assembling to deciding at once.
const decideBatch = 256

func tickFor(wait time.Duration) time.Duration {
	return min(max(wait/20, 10*time.Millisecond), 250*time.Millisecond)
}

// decide pops the traces that are due (or all, at shutdown) and sends them
// through the stages and the sampler.
func (ix *Indexer) decide(now time.Time, all bool) {
	ix.applyPins(now)
	ix.applyRegrown()
	for {
		start := time.Now()
		due, spans := ix.popDue(now, all, decideBatch)
		if len(due) == 0 {
			return
		}
		for _, id := range due {
			ix.decideOne(id)
		}
		end := time.Now()
		ix.ahead.decided(end, end.Sub(start), spans)
	}
}

// popDue moves due traces from assembling to held (being decided), under one
// lock so a span arriving meanwhile joins the held trace.
func (ix *Indexer) popDue(now time.Time, all bool, maxN int) (due []span.TraceID, spans int) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	take := func(p *pending, why string) {
		spans += p.nspans
		ix.removeLocked(p.id, p)
		ix.held[p.id] = &heldTrace{deciding: true, chunks: p.chunks, nspans: p.nspans, logs: p.logs, tickets: p.tickets, ingested: p.ingested, rescued: p.rescued}
		ix.heldSpans += p.nspans
		ix.m.decided.WithLabelValues(why).Inc()
		due = append(due, p.id)
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
	return due, spans
}

// decideOne decodes a trace, runs the stages and offers it to the decider.
// A trace the decider holds is re-encoded (skew-adjusted) until decided.
//
// The spans are decoded into leases (see span.Lease), released once nothing
// reads the spans: the stages and the Observer keep nothing of them, and
// the decider gets copies of the names it may keep; so a trace decided now
// is done with once dropped (finish), or once written (writeWorker). A
// trace held by the decider is re-encoded, and its leases are left to the
// garbage collector: few traces are held (the top-N heaps), and its
// warnings may share their memory.
func (ix *Indexer) decideOne(id span.TraceID) {
	ix.mu.Lock()
	h := ix.held[id]
	chunks := h.chunks
	h.chunks = nil
	// The records of these chunks; spans arriving from now on bring their own.
	tickets := append([]*bus.Ticket(nil), h.tickets...)
	ingested := h.ingested
	ix.mu.Unlock()

	spans, parts, leases := ix.decodeChunks(id, chunks)
	t := span.Trace{ID: id, Spans: spans}
	if len(t.Spans) == 0 {
		// Only log lines arrived: store them by level as lines of an
		// unkept trace, and remember no decision, so spans arriving later
		// still assemble into a trace of their own.
		releaseLeases(leases) // they hold no span of the trace
		ix.mu.Lock()
		delete(ix.held, id)
		ix.heldSpans -= h.nspans
		logs, all := h.logs, h.tickets
		ix.mu.Unlock()
		ix.queueLogs(logJob{chunks: logs, tickets: all})
		for _, tk := range all {
			tk.Release()
		}
		return
	}
	var warnings []string
	for _, s := range ix.stages {
		warnings = append(warnings, s.Process(&t)...)
	}
	if len(t.Spans) != len(spans) {
		parts = nil // a stage broke its contract; count without de-duplication
	}
	ix.observe(id, t.Spans, parts, tickets)
	skew := skewOffsets(t.Spans)
	info := traceInfo(&t)
	ix.mu.Lock()
	h.skew, h.orphan = skew, info.Orphan
	ix.mu.Unlock()
	ix.rank(&info, ingested)
	info.Pinned = ix.takePins(id, info.Pinned)
	ds := ix.decider.Offer(info)
	mine := -1
	for i, d := range ds {
		if d.ID == id {
			mine = i
		}
	}
	if mine < 0 {
		for _, s := range t.Spans {
			s.DecodeAttrs() // proto.Marshal sees only Span.Attributes
		}
		data, err := proto.Marshal(span.ToTracesData(t.Spans))
		ix.mu.Lock()
		joined, lateIngested := h.chunks, h.ingested // spans that arrived during the decision
		if err == nil {
			h.chunks = append([]chunk{{data: data, spans: len(t.Spans), observed: true}}, h.chunks...)
		} else { // cannot happen for decoded spans; keep the originals
			for i := range chunks {
				chunks[i].observed = true
			}
			h.chunks = append(chunks, h.chunks...)
		}
		h.warnings = warnings
		h.deciding = false
		ix.mu.Unlock()
		if info.Orphan {
			for _, c := range joined {
				if ix.regrow(id, h, c, lateIngested) {
					break
				}
			}
		}
	} else {
		ix.finish(id, t.Spans, leases, ds[mine].Reasons, warnings)
		ds = append(ds[:mine], ds[mine+1:]...)
	}
	ix.apply(ds)
}

// rank bounds info's end by when the trace reached Kafka (ingested) and
// moves event time to it, for an offer to the decider. A root that ended
// after its trace reached Kafka comes from a client whose clock runs fast.
// Ranked at that end, it would move event time ahead: every open window
// would close early (later traces late, dropped), and the trace itself
// would wait in a heap until event time caught up, holding Kafka commits.
// So it is ranked, and moves event time, as of its arrival; the spans are
// stored as sent. Record timestamps replay unchanged, and so does this.
// Decide goroutine only.
func (ix *Indexer) rank(info *sampling.TraceInfo, ingested time.Time) {
	if !ingested.IsZero() && info.End.After(ingested) {
		info.End = ingested
		ix.m.futureTraces.Inc()
	}
	if info.End.After(ix.maxEnd) {
		ix.maxEnd = info.End
	}
	ix.lastOffer = time.Now()
}

// advance moves the decider's watermark. It follows event time — the newest
// root end seen, less how long a trace may still be assembling — so a replay
// closes windows exactly where the first run did. When no trace has arrived for
// a while (traffic stopped), wall time moves it instead, or the last window's
// top-N traces would wait for the next request to be written.
func (ix *Indexer) advance(now time.Time) {
	if ix.maxEnd.IsZero() {
		return // nothing offered yet
	}
	lag := ix.cfg.DecisionMaxWait + ix.cfg.WatermarkSlack
	wm := ix.maxEnd.Add(-lag)
	ix.mu.Lock()
	assembling := len(ix.traces)
	ix.mu.Unlock()
	// Idle means nothing is assembling and nothing was decided for a while:
	// a pause in decisions while traces are still arriving (load, GC) must
	// not close windows early.
	if idle := now.Add(-lag); assembling == 0 && now.Sub(ix.lastOffer) > ix.cfg.IdleAdvance && idle.After(wm) {
		wm = idle
	}
	ix.apply(ix.decider.Advance(wm))
}

// apply carries out decisions for held traces.
func (ix *Indexer) apply(ds []sampling.Decision) {
	for _, d := range ds {
		ix.finish(d.ID, nil, nil, d.Reasons, nil)
	}
}

// finish ends a held trace: kept, it goes to the writer with spans (decoded,
// into leases) and whatever chunks it still holds; dropped, its records and
// the spans' leases are released.
func (ix *Indexer) finish(id span.TraceID, spans []span.Span, leases []span.Lease, reasons, warnings []string) {
	ix.mu.Lock()
	h := ix.held[id]
	if h != nil {
		reasons = ix.mergePinLocked(id, h, reasons)
		delete(ix.held, id)
		ix.heldSpans -= h.nspans
		ix.decisions.put(id, reasons)
	}
	ix.mu.Unlock()
	if h == nil {
		ix.log.Warn("decision for a trace that is not held", "trace_id", id.String())
		releaseLeases(leases)
		return
	}
	if len(h.logs) > 0 {
		ix.queueLogs(logJob{chunks: h.logs, traceKept: len(reasons) > 0, skew: h.skew, tickets: h.tickets})
	}
	if len(reasons) == 0 {
		ix.m.traces.WithLabelValues("dropped").Inc()
		chunks, tickets := h.chunks, h.tickets
		if h.orphan {
			chunks, tickets = ix.rescueJoined(id, h)
		}
		ix.rememberDropped(id, tickets, h.orphan)
		ix.observeChunks(id, chunks, tickets)
		for _, tk := range h.tickets {
			tk.Release()
		}
		releaseLeases(leases) // the spans were observed and offered already
		return
	}
	ix.m.traces.WithLabelValues("kept").Inc()
	if ix.obs != nil {
		ix.obs.Link(id, reasons)
	}
	if h.rescued {
		ix.m.lateRoots.WithLabelValues(lateRootKept).Inc()
		ix.refetchDropped(id, reasons, h.tickets[0])
	}
	if warnings == nil {
		warnings = h.warnings
	}
	ix.queueWrite(writeJob{id: id, spans: spans, leases: leases, chunks: h.chunks, reasons: reasons, warnings: warnings, tickets: h.tickets})
}

// queueWrite hands a kept trace (or late spans of one) to its writer.
func (ix *Indexer) queueWrite(j writeJob) {
	ix.writes[binary.LittleEndian.Uint64(j.id[8:])%uint64(len(ix.writes))] <- j
}

// writesQueued is how many writes wait for a writer.
func (ix *Indexer) writesQueued() int {
	n := 0
	for _, w := range ix.writes {
		n += len(w)
	}
	return n
}

// writeLoop runs the write workers until their queues are closed and drained.
func (ix *Indexer) writeLoop() {
	var wg sync.WaitGroup
	for _, w := range ix.writes {
		wg.Go(func() { ix.writeWorker(w) })
	}
	wg.Wait()
	// The writes' posting lists, so that their records are released; if
	// that fails, the records stay uncommitted and a restart replays them.
	if err := ix.store.Flush(context.Background()); err != nil {
		ix.log.Error("write posting lists", "err", err)
	}
}

// writeLinger is how long a write batch waits to fill. Writers that keep up
// flush some batches part-full (the store writes posting lists for many
// batches at once, so that costs little); 100 ms filled them but held kept
// traces and their Kafka records longer, and cost throughput.
const writeLinger = 20 * time.Millisecond

// writeWorker writes the jobs of one queue in batches of WriteBatchSpans,
// or whatever arrived within writeLinger. A failed write is retried with
// backoff until it succeeds: its records stay uncommitted meanwhile, and the
// full write queue pushes back on the consumer.
func (ix *Indexer) writeWorker(jobs <-chan writeJob) {
	var (
		batch   []index.KeptTrace
		tickets []*bus.Ticket
		leases  []span.Lease // of the batch's spans
		nspans  int
	)
	add := func(job writeJob) bool {
		spans := job.spans
		leases = append(leases, job.leases...)
		for _, c := range job.chunks {
			decoded, parts, ls := ix.decodeChunks(job.id, []chunk{c})
			if !c.observed {
				ix.observe(job.id, decoded, parts, job.tickets)
			}
			spans = append(spans, decoded...)
			leases = append(leases, ls...)
		}
		batch = append(batch, index.KeptTrace{Trace: span.Trace{ID: job.id, Spans: spans}, Reasons: job.reasons, Warnings: job.warnings})
		tickets = append(tickets, job.tickets...)
		nspans += len(spans)
		return nspans >= ix.cfg.WriteBatchSpans
	}
	flush := func() {
		start := time.Now()
		held := slices.Clone(tickets)
		release := func() {
			for _, tk := range held {
				tk.Release()
			}
		}
		ix.retryWrite("traces", "traces", len(batch), func(ctx context.Context) error {
			for {
				err := ix.store.WriteTracesThen(ctx, batch, release)
				inv, ok := errors.AsType[*index.InvalidTraceError](err)
				if !ok {
					return err
				}
				// Retried, it would fail for ever and stall every write
				// behind it: the rest of the batch is written without it.
				var dropped int
				batch, dropped = ix.dropUnwritable(batch, inv)
				nspans -= dropped
				if len(batch) == 0 {
					release()
					return nil
				}
			}
		})
		ix.m.writeLatency.Observe(time.Since(start).Seconds())
		ix.m.spansWritten.Add(float64(nspans))
		// Written (retryWrite returns once a write succeeded), the spans are
		// read no more: the store keeps nothing of them (TraceWriter).
		clear(batch)
		releaseLeases(leases)
		batch, tickets, leases, nspans = batch[:0], tickets[:0], leases[:0], 0
	}
	batchJobs(jobs, writeLinger, add, flush)
}

// dropUnwritable removes the trace the store refused from batch, logged and
// counted, and returns the rest and how many spans it held. The decoder
// lets through only spans the store takes (see decodeChunks), so this is
// the last line: a record from another producer must not stop the indexer.
func (ix *Indexer) dropUnwritable(batch []index.KeptTrace, inv *index.InvalidTraceError) ([]index.KeptTrace, int) {
	ix.m.traces.WithLabelValues("unwritable").Inc()
	ix.log.Error("the store refuses a kept trace; it is dropped", "trace_id", inv.ID.String(), "err", inv.Err)
	spans := 0
	batch = slices.DeleteFunc(batch, func(kt index.KeptTrace) bool {
		if kt.Trace.ID != inv.ID {
			return false
		}
		spans += len(kt.Trace.Spans)
		return true
	})
	return batch, spans
}

// Buffered reports traces and spans awaiting a decision: assembling, or
// complete and held by the decider.
func (ix *Indexer) Buffered() (traces, spans int) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return len(ix.traces) + len(ix.held), ix.spans + ix.heldSpans
}

var _ bus.RecordHandler = (*Indexer)(nil)
