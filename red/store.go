package red

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/threadline/threadline/span"
)

// maxLinkSlots bounds the (bucket, series) top-K link lists remembered to
// cap the trace IDs written per slot; a forgotten slot can gain up to K more
// link keys, which queries cap again.
const maxLinkSlots = 20000

// maxRowsKnown bounds the cache of rows known to be stored; past it the
// cache starts over, costing one read per row linked again.
const maxRowsKnown = 1 << 16

// maxBucketCounts bounds the cached per-bucket series counts; a dropped
// count is recounted from Badger (a key-only scan of one bucket).
const maxBucketCounts = 4096

// Store counts RED metrics from every observed span and persists them in its
// own Badger database. Its methods are safe for concurrent use.
type Store struct {
	db     *badger.DB
	opts   Options
	width  int64
	logger *slog.Logger
	m      *metrics

	mu       sync.Mutex
	cond     *sync.Cond // signalled when pending spans drop or the store closes
	pending  []observation
	nPending int // spans in pending
	links    []pendingLink
	awaiting map[span.TraceID]memo
	ring     []ringEntry
	ringNext int
	gen      uint64
	closed   bool

	// flushMu serialises flushes and guards the caches below, which only
	// flushes touch.
	flushMu     sync.Mutex
	seriesCount map[int64]int         // bucket → series rows stored
	rowsKnown   map[rowID]struct{}    // rows known to be stored, so linking needs no read
	slots       map[slotKey][]linkRef // (bucket, series) → links stored
	slotRing    []slotKey             // FIFO bound on slots
	slotNext    int
	counted     map[topicPartition]*countedSet // per partition, as last committed to Badger
	spareObs    []observation                  // emptied buffers for pending and links
	spareLinks  []pendingLink

	commitMu sync.Mutex
	commits  map[topicPartition]int64 // the offset last committed to Kafka (Committed)

	// names interns service and operation names: decoded spans' strings
	// share their record's buffer, and a memo or row that kept one would
	// keep the whole record alive.
	names names

	cumMu    sync.Mutex
	cum      map[Series]*SeriesTotals
	cumNamed int // series in cum other than __other__ ones
	started  time.Time

	wake      chan struct{}
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// observation is one Observe call: a trace's spans reduced to what counting
// needs, and the record parts they came from.
type observation struct {
	trace span.TraceID
	spans []spanObs
	parts []Part
	done  func()
}

// spanObs is one span as counting and linking need it. Whether the span
// failed is not a field of its own but its series' status (see failed),
// which keeps it at 64 bytes rather than 72.
type spanObs struct {
	series Series
	bucket int64
	dur    int64
	end    int64 // for the exemplar, should the trace be linked
}

func (so *spanObs) failed() bool { return so.series.Status == tracepb.Status_STATUS_CODE_ERROR }

// memo remembers the spans of a trace awaiting Link. A small trace's memo
// shares them with the pending observation rather than reducing them to
// memo entries up front: most traces are dropped, never linked, so the flush
// that links the few kept ones reduces them (see memoEntries), off the
// indexer's path. A bigger trace's memo keeps only the slowest span per
// (series, bucket) (see slowestPerRow), which memoEntries reduces the same,
// so that the memos of traces awaiting Link hold no more memory than
// reduced entries would.
type memo struct {
	gen   uint64
	spans []spanObs
	more  [][]spanObs // the spans of later observations of the trace (late spans), rare
}

// maxSharedMemo is the most spans a memo shares with its observation: no
// more bytes than the entries it stands for would take, as long as a trace
// this small touches one series and bucket per span.
const maxSharedMemo = 8

// memoEntry is, per (series, bucket) a linked trace touched, its slowest
// span, which Link attaches the trace to the bucket and to exemplars by.
type memoEntry struct {
	series Series
	bucket int64
	dur    int64
	end    int64
	err    bool
}

type ringEntry struct {
	id  span.TraceID
	gen uint64
}

type pendingLink struct {
	trace span.TraceID
	memo  memo
}

type slotKey struct {
	bucket int64
	series Series
}

type rowID = slotKey

type metrics struct {
	spans         *prometheus.CounterVec
	overflow      prometheus.Counter
	links         *prometheus.CounterVec
	flushLatency  prometheus.Histogram
	flushErrors   prometheus.Counter
	pendingSpans  prometheus.GaugeFunc
	forgotten     prometheus.Counter
	corruptValues prometheus.Counter
	offsetResets  prometheus.Counter
}

// Open opens (or creates) the RED store in dir and starts its flusher. reg
// may be nil to skip metrics registration. A failed open closes what it opened.
func Open(dir string, logger *slog.Logger, reg prometheus.Registerer, opts Options) (st *Store, err error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("open RED store: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	db, err := badger.Open(opts.badgerOptions(dir, badgerLogger{logger.With("component", "red-badger")}))
	if err != nil {
		return nil, fmt.Errorf("open RED store %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			if cerr := db.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("close RED store after failed open: %w", cerr))
			}
		}
	}()
	s := &Store{
		db:          db,
		opts:        opts,
		width:       int64(opts.BucketWidth),
		logger:      logger,
		awaiting:    map[span.TraceID]memo{},
		ring:        make([]ringEntry, opts.MaxTracesAwaitingLink),
		seriesCount: map[int64]int{},
		rowsKnown:   map[rowID]struct{}{},
		slots:       map[slotKey][]linkRef{},
		slotRing:    make([]slotKey, maxLinkSlots),
		counted:     map[topicPartition]*countedSet{},
		commits:     map[topicPartition]int64{},
		cum:         map[Series]*SeriesTotals{},
		started:     time.Now(),
		wake:        make(chan struct{}, 1),
		stop:        make(chan struct{}),
	}
	s.cond = sync.NewCond(&s.mu)
	if err := s.checkWidth(); err != nil {
		return nil, fmt.Errorf("open RED store %s: %w", dir, err)
	}
	if err := s.registerMetrics(reg); err != nil {
		return nil, fmt.Errorf("open RED store %s: %w", dir, err)
	}
	s.wg.Add(1)
	go s.loop()
	return s, nil
}

// checkWidth records the bucket width on first open and refuses another one
// later: rows of different widths cannot be told apart.
func (s *Store) checkWidth() error {
	return s.db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(metaWidthKey)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return txn.Set(metaWidthKey, binary.BigEndian.AppendUint64(nil, uint64(s.width)))
		}
		if err != nil {
			return fmt.Errorf("read bucket width: %w", err)
		}
		return item.Value(func(v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("bucket width record: %w", errCorrupt)
			}
			if got := time.Duration(binary.BigEndian.Uint64(v)); got != s.opts.BucketWidth {
				return fmt.Errorf("store was created with bucket width %s, not %s; use the original width or a new directory", got, s.opts.BucketWidth)
			}
			return nil
		})
	})
}

func (s *Store) registerMetrics(reg prometheus.Registerer) error {
	s.m = &metrics{
		spans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_red_spans_total",
			Help: "Spans seen by RED counting: counted, or duplicate (already counted, e.g. replayed after a crash).",
		}, []string{"result"}),
		overflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_red_overflow_spans_total",
			Help: "Spans counted under operation __other__ because their bucket reached the series limit.",
		}),
		links: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_red_links_total",
			Help: "Kept traces linked to RED buckets (linked), or whose Link came after they were forgotten (missed).",
		}, []string{"result"}),
		flushLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "threadline_red_flush_duration_seconds",
			Help:    "Time to make observed spans durable.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		flushErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_red_flush_errors_total",
			Help: "Failed RED flushes; their spans stay pending and are retried.",
		}),
		pendingSpans: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "threadline_red_pending_spans",
			Help: "Spans observed but not yet durable.",
		}, func() float64 {
			s.mu.Lock()
			defer s.mu.Unlock()
			return float64(s.nPending)
		}),
		forgotten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_red_traces_forgotten_total",
			Help: "Traces forgotten before a keep decision linked them (dropped traces mostly).",
		}),
		corruptValues: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_red_corrupt_records_total",
			Help: "Stored RED records that did not decode and were skipped or replaced.",
		}),
		offsetResets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_red_offset_resets_total",
			Help: "Partitions whose committed offset went back (topic recreated, offsets reset), so which of their records were counted was forgotten.",
		}),
	}
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{s.m.spans, s.m.overflow, s.m.links, s.m.flushLatency, s.m.flushErrors, s.m.pendingSpans, s.m.forgotten, s.m.corruptValues, s.m.offsetResets} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register RED metrics: %w", err)
		}
	}
	return nil
}

// Observe counts every span of t, with no record to de-duplicate a replay
// by (see ObserveDurable).
func (s *Store) Observe(t *span.Trace) { s.ObserveDurable(t, nil, nil) }

// ObserveDurable counts every span of t into its (service, operation, kind,
// status) series and the bucket of its start time, and remembers the trace
// until Link. parts name the Kafka records the spans came from, in span
// order; the spans of a part counted before (a replay) are skipped, so
// observing a record again is harmless. Spans after those of the parts are
// always counted. done, when not nil, is called once the counts are durable
// (after the flush that persisted them); the indexer holds the trace's Kafka
// offsets until then. Observe blocks while MaxPendingSpans spans await a
// flush. It keeps nothing of t once it returns (the names it counts by are
// interned copies): the indexer recycles the spans' memory then.
func (s *Store) ObserveDurable(t *span.Trace, parts []Part, done func()) {
	n := 0
	for _, p := range parts {
		n += p.Spans
	}
	if n > len(t.Spans) || slices.ContainsFunc(parts, func(p Part) bool { return p.Spans < 0 || p.Index < 0 || p.Index >= max(p.Of, 1) }) {
		s.logger.Error("RED observe: parts do not fit the trace; counting without de-duplication", "trace", t.ID.String(), "spans", len(t.Spans), "part_spans", n)
		parts = nil
	}
	o := observation{trace: t.ID, spans: make([]spanObs, len(t.Spans)), parts: parts, done: done}
	s.reduce(o.spans, t.Spans)
	kept := o.spans // what the memo keeps
	if len(kept) > maxSharedMemo {
		kept = slowestPerRow(kept)
	}
	s.mu.Lock()
	for s.nPending >= s.opts.MaxPendingSpans && !s.closed {
		s.poke()
		s.cond.Wait()
	}
	if s.closed {
		s.mu.Unlock()
		s.logger.Error("RED observe after close; spans not counted", "trace", t.ID.String(), "spans", len(t.Spans))
		return
	}
	s.pending = append(s.pending, o)
	s.nPending += len(o.spans)
	if m, ok := s.awaiting[t.ID]; ok {
		m.more = append(m.more, kept)
		s.awaiting[t.ID] = m
	} else {
		s.remember(t.ID, kept)
	}
	s.mu.Unlock()
}

// remember stores a trace's memo, forgetting the oldest beyond the bound.
// Called with mu held.
func (s *Store) remember(id span.TraceID, spans []spanObs) {
	old := s.ring[s.ringNext]
	if m, ok := s.awaiting[old.id]; ok && m.gen == old.gen {
		delete(s.awaiting, old.id)
		s.m.forgotten.Inc()
	}
	s.gen++
	s.awaiting[id] = memo{gen: s.gen, spans: spans}
	s.ring[s.ringNext] = ringEntry{id: id, gen: s.gen}
	s.ringNext = (s.ringNext + 1) % len(s.ring)
}

// memoEntries appends to dst one entry per (series, bucket) that m's spans
// fell into, holding the slowest of those spans (the first of equals) and
// whether any of them failed, in the order the pairs first occur.
func memoEntries(dst []memoEntry, m memo) []memoEntry {
	add := func(spans []spanObs) {
		for i := range spans {
			so := &spans[i]
			dst = mergeMemo(dst, memoEntry{series: so.series, bucket: so.bucket, dur: so.dur, end: so.end, err: so.failed()})
		}
	}
	add(m.spans)
	for _, spans := range m.more {
		add(spans)
	}
	return dst
}

// slowestPerRow returns, per (series, bucket) of spans, the slowest span
// (the first of equals), in the order the pairs first occur. The result is
// gathered on the stack and copied out at its size, being kept long.
func slowestPerRow(spans []spanObs) []spanObs {
	var buf [maxSharedMemo]spanObs
	out := buf[:0]
next:
	for i := range spans {
		so := &spans[i]
		for j := range out {
			x := &out[j]
			if x.series == so.series && x.bucket == so.bucket {
				if so.dur > x.dur {
					*x = *so
				}
				continue next
			}
		}
		out = append(out, *so)
	}
	return slices.Clone(out)
}

func mergeMemo(entries []memoEntry, e memoEntry) []memoEntry {
	for i := range entries {
		x := &entries[i]
		if x.series == e.series && x.bucket == e.bucket {
			x.err = x.err || e.err
			if e.dur > x.dur {
				x.dur, x.end = e.dur, e.end
			}
			return entries
		}
	}
	return append(entries, e)
}

// reduce fills obs[i] with what counting and linking need from spans[i].
// It locks the name table once for the whole trace rather than twice per
// span, and looks a service name up once per run of spans sharing a
// resource (decoded spans share their ResourceSpans' resource), which also
// saves scanning its attributes again.
func (s *Store) reduce(obs []spanObs, spans []span.Span) {
	s.names.mu.Lock()
	defer s.names.mu.Unlock()
	var (
		res *span.Resource
		svc string
	)
	for i, sp := range spans {
		if i == 0 || sp.Resource != res {
			res, svc = sp.Resource, s.names.get(sp.ServiceName())
		}
		start, end := clampTime(sp.GetStartTimeUnixNano()), clampTime(sp.GetEndTimeUnixNano())
		obs[i] = spanObs{
			series: Series{
				Service:   svc,
				Operation: s.names.get(sp.GetName()),
				Kind:      sp.GetKind(),
				Status:    sp.GetStatus().GetCode(),
			},
			bucket: start - start%s.width,
			dur:    max(end-start, 0),
			end:    end,
		}
	}
}

// names is a bounded string intern table; mu guards it.
type names struct {
	mu sync.Mutex
	m  map[string]string
}

// maxNames bounds names; past it, names are copied rather than shared.
const maxNames = 1 << 16

// get returns a copy of v that shares no memory with v's buffer. Called with
// mu held.
func (n *names) get(v string) string {
	if c, ok := n.m[v]; ok {
		return c
	}
	c := strings.Clone(v)
	if n.m == nil {
		n.m = map[string]string{}
	}
	if len(n.m) < maxNames {
		n.m[c] = c
	}
	return c
}

func clampTime(ns uint64) int64 { return int64(min(ns, math.MaxInt64)) }

// Link attaches a kept trace to the buckets its observed spans fell into
// (errors first, then slowest, at most MaxTraceIDsPerSeries per bucket and
// series) and makes it the exemplar of its latency buckets in the
// Prometheus exposition. Call it after Observe; a trace observed more than
// MaxTracesAwaitingLink traces ago is forgotten and its Link counted as
// missed. The reasons are not stored: the span store records them.
func (s *Store) Link(id span.TraceID, _ []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.awaiting[id]
	if !ok {
		s.m.links.WithLabelValues("missed").Inc()
		return
	}
	delete(s.awaiting, id)
	s.links = append(s.links, pendingLink{trace: id, memo: m})
	s.m.links.WithLabelValues("linked").Inc()
}

// poke asks the flusher for an early flush.
func (s *Store) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Store) loop() {
	defer s.wg.Done()
	tick := time.NewTicker(s.opts.FlushInterval)
	defer tick.Stop()
	gc := time.NewTicker(5 * time.Minute)
	defer gc.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		case <-s.wake:
		case <-gc.C:
			// Values live in the LSM; this only reclaims the rare large
			// counted-record set that went to the value log.
			for s.db.RunValueLogGC(0.5) == nil {
			}
			continue
		}
		if err := s.flush(); err != nil {
			s.logger.Error("RED flush failed; retrying", "err", err)
		}
	}
}

// Flush makes everything observed and linked before the call durable.
func (s *Store) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("flush RED store: %w", err)
	}
	if err := s.flush(); err != nil {
		return fmt.Errorf("flush RED store: %w", err)
	}
	return nil
}

func (s *Store) flush() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	s.mu.Lock()
	batch, links := s.pending, s.links
	if len(batch) == 0 && len(links) == 0 {
		s.mu.Unlock()
		return nil
	}
	// Observe and Link append to the buffers an earlier flush emptied
	// rather than grow new ones from nothing every flush.
	s.pending, s.links = s.spareObs, s.spareLinks
	s.spareObs, s.spareLinks = nil, nil
	s.mu.Unlock()
	start := time.Now()
	rest, err := s.flushObservations(batch)
	retryLinks := links
	if err == nil {
		err = s.flushLinks(links)
		retryLinks = nil // links are not retried once attempted
	}
	if err != nil {
		// The batch buffers are not recycled: rest and links may share them.
		s.m.flushErrors.Inc()
		s.mu.Lock()
		s.pending = append(rest, s.pending...)
		s.links = append(retryLinks, s.links...)
		s.mu.Unlock()
		return err
	}
	s.m.flushLatency.Observe(time.Since(start).Seconds())
	s.spareObs, s.spareLinks = spare(batch), spare(links)
	return nil
}

// maxSpare bounds the capacity of the buffers flush keeps for reuse, so that
// a burst does not pin its memory.
const maxSpare = 1 << 15

// spare returns buf emptied for reuse, with nothing left for the garbage
// collector to trace, or nil when it is too big to keep.
func spare[T any](buf []T) []T {
	if cap(buf) > maxSpare {
		return nil
	}
	clear(buf)
	return buf[:0]
}

// flushObservations persists batch in transactions of at most chunk spans,
// halving the chunk when Badger finds a transaction too big. It returns the
// observations not yet durable.
func (s *Store) flushObservations(batch []observation) ([]observation, error) {
	chunk := 20000
	for len(batch) > 0 {
		j, n := 0, 0
		for j < len(batch) && (j == 0 || n+len(batch[j].spans) <= chunk) {
			n += len(batch[j].spans)
			j++
		}
		res, err := s.applyChunk(batch[:j])
		if errors.Is(err, badger.ErrTxnTooBig) {
			if j > 1 {
				chunk = max(n/2, 1)
				continue
			}
			if first, second, ok := batch[0].split(); ok {
				// One huge trace: split it; done runs with the second half.
				batch = append([]observation{first, second}, batch[1:]...)
				continue
			}
		}
		if err != nil {
			return batch, err
		}
		s.afterChunk(res)
		s.mu.Lock()
		s.nPending -= n
		s.cond.Broadcast()
		s.mu.Unlock()
		for _, o := range batch[:j] {
			if o.done != nil {
				o.done()
			}
		}
		batch = batch[j:]
	}
	return nil, nil
}

// split cuts an observation in two, between its parts (a part's spans are
// counted in the transaction that marks the part counted), or between its
// spans when it names no part. A transaction grows with the rows and
// partitions it touches, not with spans, so a trace too big for one is rare;
// one record too big for one (thousands of spans, each in a series and
// bucket of its own) is split too rather than retried forever, its first
// half counted without marking the record, so a crash between the two
// transactions counts that half again.
func (o observation) split() (first, second observation, ok bool) {
	cut := func(h, ph int) (observation, observation, bool) {
		return observation{trace: o.trace, spans: o.spans[:h], parts: o.parts[:ph]},
			observation{trace: o.trace, spans: o.spans[h:], parts: o.parts[ph:], done: o.done}, true
	}
	switch {
	case len(o.parts) > 1:
		ph, h := len(o.parts)/2, 0
		for _, p := range o.parts[:ph] {
			h += p.Spans
		}
		return cut(h, ph)
	case len(o.parts) == 1 && o.parts[0].Spans < len(o.spans):
		return cut(o.parts[0].Spans, 1) // the record, then the spans after it
	case len(o.spans) < 2:
		return o, o, false
	case len(o.parts) == 0:
		return cut(len(o.spans)/2, 0)
	}
	// One record, all of the spans: its first half goes unmarked.
	h := len(o.spans) / 2
	part := o.parts[0]
	part.Spans -= h
	return observation{trace: o.trace, spans: o.spans[:h]},
		observation{trace: o.trace, spans: o.spans[h:], parts: []Part{part}, done: o.done}, true
}

// chunkResult is what one committed transaction added.
type chunkResult struct {
	rows        map[rowID]*agg
	counts      map[int64]int // bucket → series rows after the commit
	counted     int
	duplicates  int
	overflowed  int
	corruptSeen int
	resets      int                            // partitions whose offsets started over
	sets        map[topicPartition]*countedSet // the partitions' counted records after the commit
}

// applyChunk counts observations not counted before, in one transaction
// that also records, per partition, the records counted: the counts and the
// record that they were made commit together, which is what makes replay
// harmless.
func (s *Store) applyChunk(obs []observation) (chunkResult, error) {
	var res chunkResult
	err := s.db.Update(func(txn *badger.Txn) error {
		res = chunkResult{rows: map[rowID]*agg{}, counts: map[int64]int{}, sets: map[topicPartition]*countedSet{}}
		deltas := map[rowID]*agg{}
		count := func(spans []spanObs) {
			res.counted += len(spans)
			for i := range spans {
				sp := &spans[i]
				rid := rowID{sp.bucket, sp.series}
				d := deltas[rid]
				if d == nil {
					d = &agg{}
					deltas[rid] = d
				}
				d.count++
				if sp.failed() {
					d.errors++
				}
				d.sum += uint64(sp.dur)
				d.hist[bucketOf(time.Duration(sp.dur))]++
			}
		}
		for _, o := range obs {
			i := 0
			for _, p := range o.parts {
				spans := o.spans[i : i+p.Spans]
				i += p.Spans
				set, err := s.countedIn(txn, topicPartition{p.Topic, p.Partition}, &res)
				if err != nil {
					return err
				}
				if set.has(p) {
					res.duplicates += len(spans)
					continue
				}
				set.add(p)
				count(spans)
			}
			count(o.spans[i:])
		}
		for tp, set := range res.sets {
			if err := txn.SetEntry(badger.NewEntry(countedKey(tp), set.appendTo(nil)).WithTTL(s.opts.ReplayWindow)); err != nil {
				return fmt.Errorf("record counted records: %w", err)
			}
		}
		for rid, d := range deltas {
			if err := s.addRow(txn, rid, d, &res); err != nil {
				return err
			}
		}
		return nil
	})
	return res, err
}

// addRow adds d to the stored row of rid, admitting a new series only while
// its bucket is under the series limit and redirecting it to the __other__
// operation otherwise.
func (s *Store) addRow(txn *badger.Txn, rid rowID, d *agg, res *chunkResult) error {
	cur, found, err := s.getRow(txn, rid, res)
	if err != nil {
		return err
	}
	if !found {
		n, err := s.bucketSeries(txn, rid.bucket, res)
		if err != nil {
			return err
		}
		if n >= s.opts.MaxSeriesPerBucket && rid.series.Operation != OtherOperation {
			res.overflowed += int(d.count)
			rid.series = rid.series.overflow()
			if cur, found, err = s.getRow(txn, rid, res); err != nil {
				return err
			}
		}
		if !found {
			// Overflow rows are admitted beyond the limit: there is at most
			// one per (service, kind, status).
			res.counts[rid.bucket] = n + 1
		}
	}
	cur.add(d)
	if err := txn.SetEntry(badger.NewEntry(rowKey(rid.bucket, rid.series), cur.appendTo(nil)).WithTTL(s.opts.Retention)); err != nil {
		return fmt.Errorf("write RED row: %w", err)
	}
	r := res.rows[rid]
	if r == nil {
		r = &agg{}
		res.rows[rid] = r
	}
	r.add(d)
	return nil
}

func (s *Store) getRow(txn *badger.Txn, rid rowID, res *chunkResult) (agg, bool, error) {
	var a agg
	item, err := txn.Get(rowKey(rid.bucket, rid.series))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return a, false, nil
	}
	if err != nil {
		return a, false, fmt.Errorf("read RED row: %w", err)
	}
	err = item.Value(func(v []byte) error { return decodeAgg(v, &a) })
	if errors.Is(err, errCorrupt) {
		// A corrupt row cannot be added to; start it again rather than
		// block every later flush on it.
		res.corruptSeen++
		return agg{}, true, nil
	}
	if err != nil {
		return a, false, fmt.Errorf("read RED row: %w", err)
	}
	return a, true, nil
}

// bucketSeries returns how many series rows bucket holds, counting them
// from Badger the first time.
func (s *Store) bucketSeries(txn *badger.Txn, bucket int64, res *chunkResult) (int, error) {
	if n, ok := res.counts[bucket]; ok {
		return n, nil
	}
	if n, ok := s.seriesCount[bucket]; ok {
		return n, nil
	}
	prefix := appendTime([]byte{prefixRow}, bucket)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	n := 0
	for it.Rewind(); it.Valid(); it.Next() {
		n++
	}
	res.counts[bucket] = n
	return n, nil
}

// countedIn returns, for this transaction, the records counted on a
// partition: a copy of what the last commit left (read from Badger the first
// time), above the offset last committed to Kafka.
func (s *Store) countedIn(txn *badger.Txn, tp topicPartition, res *chunkResult) (*countedSet, error) {
	if set := res.sets[tp]; set != nil {
		return set, nil
	}
	set := s.counted[tp]
	if set != nil {
		set = set.clone()
	} else {
		set = &countedSet{}
		item, err := txn.Get(countedKey(tp))
		if err != nil && !errors.Is(err, badger.ErrKeyNotFound) {
			return nil, fmt.Errorf("read counted records: %w", err)
		}
		if err == nil {
			err = item.Value(func(v []byte) error {
				var derr error
				set, derr = decodeCounted(v)
				return derr
			})
			if errors.Is(err, errCorrupt) {
				// Forget it rather than block every flush: a replay of what
				// it named would be counted again.
				res.corruptSeen++
				set, err = &countedSet{}, nil
			}
			if err != nil {
				return nil, fmt.Errorf("read counted records: %w", err)
			}
		}
	}
	s.commitMu.Lock()
	committed, ok := s.commits[tp]
	s.commitMu.Unlock()
	if ok && set.commit(committed) {
		res.resets++
		s.logger.Warn("RED: committed offset went back; forgetting which records were counted, so records replayed from here are counted again", "topic", tp.topic, "partition", tp.partition, "offset", committed)
	}
	res.sets[tp] = set
	return set, nil
}

// Committed tells the store that a consumer committed offset on a
// partition: nothing below it is replayed any more, so the records counted
// there need not be remembered. An offset below the one committed before
// means the partition's offsets started over (topic recreated, offsets
// reset): the store then forgets the records it counted there, or it would
// skip new records under old offsets.
func (s *Store) Committed(topic string, partition int32, offset int64) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	s.commits[topicPartition{topic, partition}] = offset
}

// knowRow remembers that a row is stored. Rows leave the store only by
// expiry, after which nothing links to them.
func (s *Store) knowRow(rid rowID) {
	if len(s.rowsKnown) >= maxRowsKnown {
		clear(s.rowsKnown)
	}
	s.rowsKnown[rid] = struct{}{}
}

// afterChunk publishes a committed chunk to the caches, the cumulative
// counters and the metrics.
func (s *Store) afterChunk(res chunkResult) {
	maps.Copy(s.counted, res.sets)
	if len(s.seriesCount)+len(res.counts) > maxBucketCounts {
		clear(s.seriesCount)
	}
	for b, n := range res.counts {
		s.seriesCount[b] = n
	}
	for rid := range res.rows {
		s.knowRow(rid)
	}
	s.cumMu.Lock()
	for rid, d := range res.rows {
		t := s.cumSeries(rid.series)
		t.Count += d.count
		t.Errors += d.errors
		t.Sum += time.Duration(d.sum)
		for i, c := range d.hist {
			t.Hist[i] += c
		}
	}
	s.cumMu.Unlock()
	s.m.spans.WithLabelValues("counted").Add(float64(res.counted))
	s.m.spans.WithLabelValues("duplicate").Add(float64(res.duplicates))
	s.m.overflow.Add(float64(res.overflowed))
	s.m.corruptValues.Add(float64(res.corruptSeen))
	s.m.offsetResets.Add(float64(res.resets))
}

// cumSeries returns the cumulative totals of sr, or of its __other__ series
// once MaxSeriesPerBucket series exist. Called with cumMu held.
func (s *Store) cumSeries(sr Series) *SeriesTotals {
	t := s.cum[sr]
	if t == nil && sr.Operation != OtherOperation {
		if s.cumNamed >= s.opts.MaxSeriesPerBucket {
			sr = sr.overflow()
			t = s.cum[sr]
		} else {
			s.cumNamed++
		}
	}
	if t == nil {
		t = &SeriesTotals{Series: sr}
		s.cum[sr] = t
	}
	return t
}

// linkSlot is one (bucket, series) link list as a flushLinks transaction
// changes it: a private copy of s.slots[key], published once the
// transaction commits.
type linkSlot struct {
	key   slotKey
	top   []linkRef
	worst int // index in top of its worst link, once full; -1 when not known
	// cum is the series' cumulative totals, which carry its exemplars,
	// looked up (cumOK) once per slot after the commit.
	cum   *SeriesTotals
	cumOK bool
}

// flushLinks writes the links of kept traces, keeping at most
// MaxTraceIDsPerSeries per (bucket, series): a better link replaces (and
// deletes) the worst one.
func (s *Store) flushLinks(links []pendingLink) error {
	if len(links) == 0 {
		return nil
	}
	type exemplar struct {
		slot     *linkSlot
		trace    span.TraceID
		dur, end int64
	}
	var (
		// rows maps each row the transaction's memo entries name to the
		// slot its links go to: one lookup per entry answers whether the row
		// is stored and finds the slot's links, where looking up rowsKnown,
		// the transaction's overlay and then the cumulative series each
		// hashed the series' strings again. Cleared, not rebuilt, per
		// transaction.
		rows      = map[rowID]*linkSlot{}
		slots     = map[slotKey]*linkSlot{} // the slots the transaction changes
		entries   []memoEntry
		exemplars []exemplar
	)
	for len(links) > 0 {
		n := min(len(links), 2000)
		if exemplars == nil {
			// At most one exemplar per span: sized once, not grown.
			spans := 0
			for _, l := range links[:n] {
				spans += len(l.memo.spans)
				for _, more := range l.memo.more {
					spans += len(more)
				}
			}
			exemplars = make([]exemplar, 0, spans)
		}
		err := s.db.Update(func(txn *badger.Txn) error {
			clear(rows)
			clear(slots)
			exemplars = exemplars[:0]
			for _, l := range links[:n] {
				entries = memoEntries(entries[:0], l.memo)
				for _, e := range entries {
					rid := rowID{e.bucket, e.series}
					ls := rows[rid]
					if ls == nil {
						var err error
						if ls, err = s.slotOf(txn, rid, slots); err != nil {
							return err
						}
						rows[rid] = ls
					}
					exemplars = append(exemplars, exemplar{ls, l.trace, e.dur, e.end})
					if err := s.linkOne(txn, ls, linkRef{id: l.trace, err: e.err, dur: e.dur}); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if errors.Is(err, badger.ErrTxnTooBig) && n > 1 {
			// Retry with fewer links per transaction.
			links = append(links[:0:0], links...)
			err = s.flushLinks(links[:n/2])
			if err == nil {
				err = s.flushLinks(links[n/2:])
			}
			return err
		}
		if err != nil {
			return fmt.Errorf("write RED links: %w", err)
		}
		for k, ls := range slots {
			if _, ok := s.slots[k]; !ok {
				old := s.slotRing[s.slotNext]
				delete(s.slots, old)
				s.slotRing[s.slotNext] = k
				s.slotNext = (s.slotNext + 1) % len(s.slotRing)
			}
			s.slots[k] = ls.top
		}
		s.cumMu.Lock()
		for _, x := range exemplars {
			ls := x.slot
			if !ls.cumOK {
				// Only flushes (holding flushMu) add series to cum.
				ls.cum, ls.cumOK = s.cum[ls.key.series], true
			}
			t := ls.cum
			if t == nil {
				// Counted before this process started (a replay): no
				// cumulative series to carry the exemplar.
				continue
			}
			i, e := bucketOf(time.Duration(x.dur)), Exemplar{TraceID: x.trace, Duration: time.Duration(x.dur), Time: time.Unix(0, x.end)}
			switch cur := t.Exemplars[i]; {
			case cur == nil:
				ex := e
				t.Exemplars[i] = &ex
			case !cur.Time.After(e.Time):
				// Totals hands out copies, so the exemplar is the store's
				// own to overwrite (under cumMu) rather than allocate anew.
				*cur = e
			}
		}
		s.cumMu.Unlock()
		links = links[n:]
	}
	return nil
}

// slotOf returns the slot that links to row rid go to, adding it to slots:
// the row's own, or its __other__ series' when the row is not stored.
func (s *Store) slotOf(txn *badger.Txn, rid rowID, slots map[slotKey]*linkSlot) (*linkSlot, error) {
	k := slotKey(rid)
	if _, known := s.rowsKnown[rid]; !known {
		// Flushes count spans before they link traces, so a row missing here
		// overflowed its bucket's series cap.
		if _, found, err := s.getRow(txn, rid, &chunkResult{}); err != nil {
			return nil, err
		} else if found {
			s.knowRow(rid)
		} else {
			k.series = k.series.overflow()
		}
	}
	ls := slots[k]
	if ls == nil {
		ls = &linkSlot{key: k, top: slices.Clone(s.slots[k]), worst: -1}
		slots[k] = ls
	}
	return ls, nil
}

func (s *Store) linkOne(txn *badger.Txn, ls *linkSlot, ref linkRef) error {
	for _, r := range ls.top {
		if r.id == ref.id {
			return nil
		}
	}
	k := ls.key
	if len(ls.top) >= s.opts.MaxTraceIDsPerSeries {
		// Most links of a full slot lose to its worst: remember which that
		// is rather than search for it per link.
		if ls.worst < 0 {
			ls.worst = 0
			for i := range ls.top {
				if ls.top[ls.worst].better(ls.top[i]) {
					ls.worst = i
				}
			}
		}
		w := ls.worst
		if !ref.better(ls.top[w]) {
			return nil
		}
		if err := txn.Delete(linkKey(k.bucket, k.series, ls.top[w].id)); err != nil {
			return fmt.Errorf("delete RED link: %w", err)
		}
		ls.top[w], ls.worst = ref, -1
	} else {
		ls.top = append(ls.top, ref)
	}
	if err := txn.SetEntry(badger.NewEntry(linkKey(k.bucket, k.series, ref.id), ref.value()).WithTTL(s.opts.Retention)); err != nil {
		return fmt.Errorf("write RED link: %w", err)
	}
	return nil
}

// Close flushes what is pending, stops the flusher and closes Badger.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.wg.Wait()
		ferr := s.flush()
		if ferr != nil {
			ferr = fmt.Errorf("final RED flush: %w", ferr)
		}
		s.mu.Lock()
		s.closed = true
		s.cond.Broadcast()
		s.mu.Unlock()
		var cerr error
		if err := s.db.Close(); err != nil {
			cerr = fmt.Errorf("close RED store: %w", err)
		}
		s.closeErr = errors.Join(ferr, cerr)
	})
	return s.closeErr
}

// badgerLogger routes Badger's log lines to slog; its INFO chatter becomes Debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.log(slog.LevelError, f, a) }
func (b badgerLogger) Warningf(f string, a ...any) { b.log(slog.LevelWarn, f, a) }
func (b badgerLogger) Infof(f string, a ...any)    { b.log(slog.LevelDebug, f, a) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.log(slog.LevelDebug, f, a) }

func (b badgerLogger) log(level slog.Level, f string, a []any) {
	if b.l.Enabled(context.Background(), level) {
		b.l.Log(context.Background(), level, strings.TrimSpace(fmt.Sprintf(f, a...)))
	}
}
