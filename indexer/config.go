// Package indexer turns the Kafka stream of spans into stored traces: it
// assembles each trace's spans until the trace is quiet, runs the trace through
// the pipeline stages (clock-skew repair, sampling), writes what is kept, and
// releases each Kafka record only once every trace it carried is written or
// dropped — so offsets are committed only below work that is finished.
package indexer

import (
	"errors"
	"flag"
	"fmt"
	"time"
)

// Config bounds the assembly buffer and paces decisions.
type Config struct {
	// DecisionWait: a trace is decided once no span arrived for this long. Default 5s.
	DecisionWait time.Duration
	// DecisionMaxWait: a trace is decided at this age even if spans keep coming. Default 60s.
	DecisionMaxWait time.Duration
	// MaxTraces bounds traces buffered awaiting a decision; past it the oldest
	// are decided early. Default 200000.
	MaxTraces int
	// MaxSpansPerTrace: a trace reaching this many buffered spans is decided at
	// once; its later spans follow the decision. Default 10000.
	MaxSpansPerTrace int
	// MaxBufferedSpans bounds spans (and log lines) buffered across all traces.
	// They are held encoded, about their OTLP wire size (≈0.7 KB for a span
	// with 10 attributes), so the default bounds the buffer near 140 MB; it
	// must exceed throughput × decision-wait or traces are decided early.
	// Default 200000: five seconds of what one indexer decides and writes
	// on two cores (about 40k spans/s). A bigger buffer does not decide
	// faster; under a backlog it only fills, and Kafka holds the backlog.
	// Below it, the consumer reads ahead of the decider only as far as the
	// decider's measured rate needs (readahead.go).
	MaxBufferedSpans int
	// DecisionCacheSize is how many decisions are remembered so late spans
	// follow their trace's decision instead of starting a new trace. Default 200000.
	DecisionCacheSize int
	// WriteBatchSpans is how many spans are written in one store batch. Default 4096.
	WriteBatchSpans int
	// WriteWorkers is how many batches are written to the store at once.
	// A batch is prepared (postings, compression) in parallel and committed
	// one at a time, so a second writer prepares while the first commits;
	// one writer alone was busy all the time under full load and held the
	// pipeline back. Traces are assigned to writers by ID, so a trace's
	// writes stay in order. Default 2.
	WriteWorkers int
	// LogsTopic is the topic whose records are OTLP LogsData; the indexer
	// consumes it beside the spans topic. Default "otlp_logs".
	LogsTopic string
	// MetricsTopic carries OTLP MetricsData. Default "otlp_metrics".
	MetricsTopic string
	// TracesTopic is the spans topic: the indexer remembers where dropped
	// traces' records are in it, to fetch them again for an exemplar pin.
	// Default "otlp_spans".
	TracesTopic string
	// ExemplarsTopic carries exemplar links keyed by trace ID; empty: none.
	// Default "otlp_exemplars".
	ExemplarsTopic string
	// ExemplarLookback is how long the spans-topic offsets of a dropped
	// trace are remembered, so an alerting metric's exemplar that names it
	// later (SDKs export metrics every 10–60 s) can still keep it: the
	// trace is fetched from Kafka again. Without alert rules only traces
	// dropped before their root arrived are remembered, for when it does
	// (see Indexer.rescue). 0 disables the refetch. Default 10m.
	ExemplarLookback time.Duration
	// ExemplarLookbackMaxTraces caps the dropped traces remembered (about
	// 130 bytes each); the oldest go first, counted. Default 262144.
	ExemplarLookbackMaxTraces int
	// ExemplarPinTTL is how long a pin for a trace with no spans yet (its
	// exemplar came first) waits for them. Default 2m.
	ExemplarPinTTL time.Duration
	// ExemplarMaxPins caps pins waiting for their trace; past it the oldest
	// are shed, counted. Default 65536.
	ExemplarMaxPins int
	// WatermarkSlack is added to DecisionMaxWait when deriving the sampler's
	// event-time watermark, for pipeline delay. Default 10s.
	WatermarkSlack time.Duration
	// IdleAdvance: when no trace was decided for this long, the watermark
	// follows wall time so held top-N traces are written although traffic
	// stopped. Default 15s.
	IdleAdvance time.Duration
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{
		DecisionWait:              5 * time.Second,
		DecisionMaxWait:           60 * time.Second,
		MaxTraces:                 200000,
		MaxSpansPerTrace:          10000,
		MaxBufferedSpans:          200000,
		DecisionCacheSize:         200000,
		WriteBatchSpans:           4096,
		WriteWorkers:              2,
		LogsTopic:                 "otlp_logs",
		MetricsTopic:              "otlp_metrics",
		TracesTopic:               "otlp_spans",
		ExemplarsTopic:            "otlp_exemplars",
		ExemplarLookback:          10 * time.Minute,
		ExemplarLookbackMaxTraces: 262144,
		ExemplarPinTTL:            2 * time.Minute,
		ExemplarMaxPins:           65536,
		WatermarkSlack:            10 * time.Second,
		IdleAdvance:               15 * time.Second,
	}
}

// RegisterFlags registers the indexer's assembly flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.DecisionWait, "decision-wait", c.DecisionWait, "decide a trace once no span arrived for this long")
	fs.DurationVar(&c.DecisionMaxWait, "decision-max-wait", c.DecisionMaxWait, "decide a trace at this age even if spans keep arriving")
	fs.IntVar(&c.MaxTraces, "max-buffered-traces", c.MaxTraces, "traces buffered awaiting a decision; past it the oldest are decided early")
	fs.IntVar(&c.MaxSpansPerTrace, "max-spans-per-trace", c.MaxSpansPerTrace, "a trace with this many buffered spans is decided at once")
	fs.IntVar(&c.MaxBufferedSpans, "max-buffered-spans", c.MaxBufferedSpans, "spans buffered across all traces; past it the oldest traces are decided early")
	fs.IntVar(&c.WriteWorkers, "write-workers", c.WriteWorkers, "store batches written at once (prepared in parallel, committed one at a time)")
	fs.IntVar(&c.DecisionCacheSize, "decision-cache-size", c.DecisionCacheSize, "decisions remembered for late spans")
	fs.DurationVar(&c.ExemplarLookback, "exemplar-lookback", c.ExemplarLookback, "how long a dropped trace can still be kept (fetched again from Kafka) when an alerting metric's exemplar names it, or its root arrives late; 0 disables")
	fs.IntVar(&c.ExemplarLookbackMaxTraces, "exemplar-lookback-max-traces", c.ExemplarLookbackMaxTraces, "dropped traces remembered for exemplar refetch (about 130 bytes each); the oldest are forgotten first")
	fs.DurationVar(&c.ExemplarPinTTL, "exemplar-pin-ttl", c.ExemplarPinTTL, "how long an exemplar pin waits for the spans of its trace when it arrives first")
	fs.IntVar(&c.ExemplarMaxPins, "exemplar-max-pins", c.ExemplarMaxPins, "exemplar pins waiting for their trace; past it the oldest are shed")
	fs.DurationVar(&c.WatermarkSlack, "watermark-slack", c.WatermarkSlack, "extra event-time delay before a sampling window closes, for pipeline lag")
	fs.DurationVar(&c.IdleAdvance, "watermark-idle-advance", c.IdleAdvance, "after this long without new traces, sampling windows close by wall time")
}

// Validate rejects settings that cannot work together.
func (c *Config) Validate() error {
	if c.DecisionWait <= 0 {
		return fmt.Errorf("decision wait must be positive, got %s", c.DecisionWait)
	}
	if c.DecisionMaxWait < c.DecisionWait {
		return fmt.Errorf("decision max wait (%s) must not be shorter than decision wait (%s)", c.DecisionMaxWait, c.DecisionWait)
	}
	if c.WatermarkSlack < 0 || c.IdleAdvance <= 0 {
		return errors.New("watermark slack must not be negative and idle advance must be positive")
	}
	if c.ExemplarLookback < 0 || c.ExemplarPinTTL <= 0 || c.ExemplarMaxPins < 1 || c.ExemplarLookbackMaxTraces < 1 {
		return errors.New("exemplar lookback must not be negative, and the pin TTL, max pins and lookback max traces must be positive")
	}
	if c.ExemplarPinTTL < c.DecisionMaxWait {
		return fmt.Errorf("exemplar pin TTL (%s) must not be shorter than decision max wait (%s): a pin must outlive the assembly of its trace", c.ExemplarPinTTL, c.DecisionMaxWait)
	}
	if c.MaxTraces < 1 || c.MaxSpansPerTrace < 1 || c.MaxBufferedSpans < 1 || c.DecisionCacheSize < 1 || c.WriteBatchSpans < 1 || c.WriteWorkers < 1 {
		return errors.New("buffer bounds (traces, spans per trace, buffered spans, decision cache, write batch) and write workers must be positive")
	}
	return nil
}
