// Package red derives RED metrics (rate, errors, duration) from every span
// the indexer assembles, before tail sampling drops most traces, so that an
// error-rate or latency number is true even for traffic whose traces were
// not kept. Counts are per series — (service.name, span name, span kind,
// status code) — and per bucket of span start time (default 10 s), with a
// fixed exponential latency histogram (see Quantile for the error bound).
// Each bucket is linked to the kept trace IDs that fell into it (errors
// first, then the slowest), and cumulative per-series counters carry the
// latest kept trace per latency bucket as an exemplar for Prometheus.
//
// # Exactly-once counting across crashes
//
// The indexer commits a Kafka partition's offset only below its oldest
// record not yet decided and written, so after a crash it replays records
// whose spans were already counted (records after that point that had
// completed), together with records whose spans were not. Counting must
// therefore be idempotent at span granularity: a replay reassembles traces
// differently (a trace decided in two parts may come back whole, or only its
// tail may come back).
//
// Scheme: Observe only reduces spans to (series, bucket, duration, error)
// in memory, each group of spans labelled with the Kafka record (Part) it
// came from. A flush, every FlushInterval, writes in ONE Badger transaction
// both the bucket rows' new totals and, per partition, the records counted
// so far ('p' keys, TTL ReplayWindow). Inside that transaction the spans of
// every record already in the set are skipped. Counts and "these records are
// counted" are committed atomically, so a span is counted at most once; it
// is counted at least once if the indexer follows the rule below.
//
// Records rather than span IDs: a replay delivers the same records, and a
// record's spans are one group however the replay assembles traces, so a
// record is the natural unit. The set per partition is small: a floor (the
// offset the consumer last committed, see Committed, below which nothing is
// replayed; or the end of a run of counted records starting there) and
// ranges of counted offsets above it, whose gaps are the records of traces
// still undecided. A committed offset below the one before means the
// partition's offsets started over (topic recreated, offsets reset): the set
// is forgotten, so new records under old offsets are counted
// (threadline_red_offset_resets_total); records consumed before that first
// commit (one commit interval of consumption) are skipped.
//
// The earlier scheme kept the counted span IDs per trace, a Badger key read
// and written per trace, which cost about a tenth of the all-in-one's CPU.
// What it also caught and this does not: the same span sent twice by a
// client (an exporter retry after a lost response) is counted twice, as the
// OpenTelemetry Collector's spanmetrics connector and Tempo's metrics
// generator count it; the span store still stores it once.
//
// Indexer rule (what makes it exact):
//  1. Call ObserveDurable for every assembled trace before sampling, with
//     the parts its spans came from, and also for late spans of an already
//     decided trace (as a trace of just those spans). Acquire one more
//     reference on each of the trace's record tickets before the call and
//     release them in done: done runs after the flush that made the counts
//     durable, so no offset is committed past a span whose count could
//     still be lost. Call Committed after each offset commit.
//  2. Call Link(traceID, reasons) after the sampler keeps a trace.
//  3. On shutdown, decide every buffered trace, then Close the store (it
//     flushes) before the final offset commit.
//
// Replay is then exact as long as the crash-time commit lag plus downtime
// stays under ReplayWindow. A rebalance that moves a partition to another
// indexer is exact only if the old owner drained it before committing:
// completed records replayed by the new owner are counted again there.
//
// # Bounds
//
// At most MaxSeriesPerBucket series per bucket (more go to operation
// "__other__", counted by threadline_red_overflow_spans_total), at most
// MaxTracesAwaitingLink traces remembered between Observe and Link, at most
// MaxPendingSpans spans awaiting a flush (Observe blocks beyond), at most
// MaxTraceIDsPerSeries links per bucket and series.
package red
