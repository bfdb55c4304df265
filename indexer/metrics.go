package indexer

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Late-root outcomes (threadline_indexer_late_roots_total{outcome}); see
// Indexer.rescue.
const (
	lateRootReopened      = "reopened"
	lateRootReranked      = "reranked"
	lateRootKept          = "kept"
	lateRootRefetched     = "refetched"
	lateRootRefetchFailed = "refetch_failed"
)

type metrics struct {
	decided      *prometheus.CounterVec
	traces       *prometheus.CounterVec
	lateSpans    *prometheus.CounterVec
	badRecords   prometheus.Counter
	badSpans     prometheus.Counter
	shedSpans    prometheus.Counter
	futureTraces prometheus.Counter
	lateRoots    *prometheus.CounterVec
	logLines     *prometheus.CounterVec
	spansWritten prometheus.Counter
	writeErrors  prometheus.Counter
	writeLatency prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, ix *Indexer) (*metrics, error) {
	m := &metrics{
		decided: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_indexer_traces_decided_total",
			Help: "Traces decided, by trigger: quiet (decision-wait), max_wait, max_spans, buffer_full (shed early), shutdown.",
		}, []string{"trigger"}),
		traces: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_indexer_traces_total",
			Help: "Traces by decision: kept or dropped; unwritable: kept, but refused by the store for what it holds (logged), and dropped.",
		}, []string{"decision"}),
		lateSpans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_indexer_late_spans_total",
			Help: "Spans that arrived after their trace was decided: written (trace kept) or dropped.",
		}, []string{"outcome"}),
		badRecords: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_indexer_undecodable_records_total",
			Help: "Kafka records skipped because they are not OTLP TracesData.",
		}),
		badSpans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_indexer_invalid_spans_total",
			Help: "Spans skipped because their trace or span ID is invalid (wrong length, all zero, or another trace's ID in a record keyed by this one).",
		}),
		shedSpans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_indexer_shed_spans_total",
			Help: "Spans dropped because their trace, held awaiting its sampling window, already had max-spans-per-trace spans.",
		}),
		futureTraces: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_indexer_future_dated_traces_total",
			Help: "Traces whose root ended after the trace reached Kafka (a client clock running fast): ranked for sampling as of their arrival.",
		}),
		lateRoots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_indexer_late_roots_total",
			Help: "Roots that arrived after their trace was decided without them, by outcome: reranked (the trace, held in a top-N heap, ranked again by the root), reopened (the trace had been dropped: decided again, ranked by the root), kept (by that decision), refetched (the spans dropped before were fetched again from Kafka and written), refetch_failed (kept without them).",
		}, []string{"outcome"}),
		logLines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_indexer_log_lines_total",
			Help: "Log lines by outcome: stored, or dropped_by_level (level policy for their trace's decision).",
		}, []string{"outcome"}),
		spansWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_indexer_spans_written_total",
			Help: "Spans written to the store.",
		}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_indexer_write_errors_total",
			Help: "Failed store writes (retried).",
		}),
		writeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "threadline_indexer_write_duration_seconds",
			Help:    "Store write latency per batch, including retries.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	for _, o := range []string{lateRootReopened, lateRootReranked, lateRootKept, lateRootRefetched, lateRootRefetchFailed} {
		m.lateRoots.WithLabelValues(o)
	}
	cols := []prometheus.Collector{m.decided, m.traces, m.lateSpans, m.badRecords, m.badSpans, m.shedSpans, m.futureTraces, m.lateRoots, m.logLines, m.spansWritten, m.writeErrors, m.writeLatency,
		gauge("threadline_indexer_buffered_traces", "Traces buffered awaiting a decision.", func() float64 { t, _ := ix.Buffered(); return float64(t) }),
		gauge("threadline_indexer_buffered_spans", "Spans buffered awaiting a decision.", func() float64 { _, s := ix.Buffered(); return float64(s) }),
		gauge("threadline_indexer_read_ahead_limit_spans", "Spans the consumer may buffer before it waits for the decider: 1.25 × the decider's measured rate × the decision wait, within --max-buffered-spans.", func() float64 { return float64(ix.ahead.Limit()) }),
		gauge("threadline_indexer_write_queue", "Kept traces queued for the store.", func() float64 { return float64(ix.writesQueued()) }),
		gauge("threadline_indexer_decision_cache_entries", "Decisions remembered for late spans.", func() float64 {
			ix.mu.Lock()
			defer ix.mu.Unlock()
			return float64(ix.decisions.len())
		}),
	}
	for _, c := range cols {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register indexer metrics: %w", err)
		}
	}
	return m, nil
}
