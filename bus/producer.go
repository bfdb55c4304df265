package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/threadline/threadline/span"
)

// ErrBufferFull is returned when the producer's buffer is at its cap: the
// caller should tell its client to retry later rather than wait.
var ErrBufferFull = errors.New("kafka producer buffer full")

// ErrNotAcknowledged is returned when Kafka did not acknowledge a request's
// records within the produce timeout (broker down or partitioned away).
var ErrNotAcknowledged = errors.New("kafka did not acknowledge the records")

// Producer writes records keyed by trace ID with the idempotent producer and
// acks=all, and reports success only once Kafka acknowledged every record.
type Producer struct {
	cl      *kgo.Client
	cfg     Config
	log     *slog.Logger
	records *prometheus.CounterVec
	latency prometheus.Histogram
	states  sync.Pool // *produceState
}

// NewProducer connects a producer. It does not wait for the brokers: Kafka
// being down is a per-request retryable error, not a start-up failure.
func NewProducer(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Producer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts, err := cfg.clientOpts()
	if err != nil {
		return nil, err
	}
	codec, _ := cfg.codec() // checked by Validate
	opts = append(opts,
		kgo.RecordPartitioner(Partitioner()),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordDeliveryTimeout(cfg.ProduceTimeout),
		kgo.MaxBufferedBytes(cfg.MaxBufferedBytes),
		// OTLP batches are already large; a short linger lets concurrent
		// requests share produce requests without adding visible latency.
		kgo.ProducerLinger(2*time.Millisecond),
		kgo.ProducerBatchMaxBytes(16<<20),
		kgo.ProducerBatchCompression(codec, kgo.NoCompression()),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("create kafka producer: %w", err)
	}
	p := &Producer{
		cl:  cl,
		cfg: cfg,
		log: logger,
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_kafka_produced_records_total",
			Help: "Records produced to Kafka, by topic and result (ok, buffer_full, timeout, error).",
		}, []string{"topic", "result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "threadline_kafka_produce_duration_seconds",
			Help:    "Time from handing a request's records to the producer until Kafka acknowledged all of them.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
	}
	buffered := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "threadline_kafka_producer_buffered_bytes",
		Help: "Bytes buffered in the producer awaiting acknowledgement (saturation).",
	}, func() float64 { return float64(cl.BufferedProduceBytes()) })
	for _, c := range []prometheus.Collector{p.records, p.latency, buffered} {
		if err := reg.Register(c); err != nil {
			cl.Close()
			return nil, fmt.Errorf("register producer metrics: %w", err)
		}
	}
	return p, nil
}

// PublishTraces produces one record per trace batch to the traces topic, key
// the hex trace ID, value the batch's OTLP TracesData encoding. When it
// returns nil, Kafka acknowledged every record and the producer holds no
// reference to any batch's Data (see ReleasesData).
func (p *Producer) PublishTraces(ctx context.Context, batches []span.TraceBatch) error {
	if len(batches) == 0 {
		return nil
	}
	st := p.getState(len(batches))
	// One key slab per request instead of one 32-byte allocation per record.
	keys := st.keys[:0]
	for i := range batches {
		keys = batches[i].ID.AppendHex(keys)
	}
	st.keys = keys
	for i := range batches {
		st.recs[i] = kgo.Record{
			Topic: p.cfg.TracesTopic,
			Key:   keys[i*32 : (i+1)*32 : (i+1)*32],
			Value: batches[i].Data,
		}
	}
	return p.produceAll(ctx, p.cfg.TracesTopic, st)
}

// PublishLogs produces one record per log batch to the logs topic: key the hex
// trace ID, so a trace's logs meet its spans on one partition, or no key for
// records without a trace, which the partitioner spreads.
func (p *Producer) PublishLogs(ctx context.Context, batches []span.LogBatch) error {
	recs := make([]kgo.Record, len(batches))
	for i := range batches {
		recs[i] = kgo.Record{Topic: p.cfg.LogsTopic, Value: batches[i].Data}
		if batches[i].HasTrace {
			recs[i].Key = batches[i].ID.AppendHex(make([]byte, 0, 32))
		}
	}
	return p.produce(ctx, p.cfg.LogsTopic, recs)
}

// PublishMetrics produces an OTLP MetricsData request as one record, unkeyed
// (a request mixes series and exemplars of many traces), and, unless the
// exemplars topic is disabled, one exemplar-link record per trace its
// exemplars name, keyed by the hex trace ID like the trace's spans so they
// reach the same partition and indexer. All of them are acknowledged before
// it returns, so an accepted request's links are never lost.
func (p *Producer) PublishMetrics(ctx context.Context, data []byte, _ int) error {
	recs := []kgo.Record{{Topic: p.cfg.MetricsTopic, Value: data}}
	if p.cfg.ExemplarsTopic != "" {
		batches, err := SplitExemplars(data)
		if err != nil {
			return err
		}
		for _, b := range batches {
			recs = append(recs, kgo.Record{Topic: p.cfg.ExemplarsTopic, Key: b.ID.AppendHex(make([]byte, 0, 32)), Value: b.Data})
		}
	}
	return p.produce(ctx, p.cfg.MetricsTopic, recs)
}

// produceState is one call's records and the bookkeeping of their
// acknowledgements. PublishTraces pools them (records, key slab and promise
// closure are then allocated once, not per request): a state goes back to
// the pool only after every promise fired, since until then the client holds
// pointers into recs.
type produceState struct {
	recs    []kgo.Record
	keys    []byte
	pending atomic.Int64
	mu      sync.Mutex
	err     error         // first failure
	done    chan struct{} // the last promise sends once (buffered)
	promise func(*kgo.Record, error)
	pooled  bool
}

func newProduceState() *produceState {
	st := &produceState{done: make(chan struct{}, 1)}
	st.promise = func(_ *kgo.Record, err error) {
		if err != nil {
			st.mu.Lock()
			if st.err == nil {
				st.err = err
			}
			st.mu.Unlock()
		}
		if st.pending.Add(-1) == 0 {
			st.done <- struct{}{}
		}
	}
	return st
}

// maxPooledRecords bounds the record slice a pooled state keeps, so one huge
// request does not pin its capacity for good.
const maxPooledRecords = 1 << 14

// getState returns a pooled state with n zero records and an empty key slab.
func (p *Producer) getState(n int) *produceState {
	st, _ := p.states.Get().(*produceState)
	if st == nil {
		st = newProduceState()
		st.pooled = true
	}
	if cap(st.recs) < n {
		st.recs = make([]kgo.Record, n)
	}
	st.recs = st.recs[:n]
	if cap(st.keys) < 32*n {
		st.keys = make([]byte, 0, 32*n)
	}
	return st
}

func (p *Producer) putState(st *produceState) {
	if !st.pooled || cap(st.recs) > maxPooledRecords {
		return
	}
	clear(st.recs) // drop the references to the request's values
	st.recs = st.recs[:0]
	st.keys = st.keys[:0]
	st.err = nil
	p.states.Put(st)
}

// produce hands recs to the client and waits for all acknowledgements.
func (p *Producer) produce(ctx context.Context, topic string, recs []kgo.Record) error {
	if len(recs) == 0 {
		return nil
	}
	st := newProduceState()
	st.recs = recs
	return p.produceAll(ctx, topic, st)
}

// produceAll hands every record of st to the client without blocking
// (TryProduce) and waits for all acknowledgements. The first failure decides
// the error kind. It recycles st once every promise fired; it returns nil
// only then, so on nil the client no longer references any record value.
func (p *Producer) produceAll(ctx context.Context, topic string, st *produceState) error {
	start := time.Now()
	recs := st.recs
	st.pending.Store(int64(len(recs)))
	for i := range recs {
		p.cl.TryProduce(ctx, &recs[i], st.promise)
	}
	// kgo enforces the delivery timeout only where it is safe for the
	// idempotent producer's sequence numbers, so a request stuck on an
	// unreachable broker can outlive it: bound the wait here too. A record
	// delivered after we gave up is a harmless duplicate — the client retries
	// and the indexer's writes are idempotent by span key. An abandoned state
	// is left to the garbage collector, never reused.
	timer := time.NewTimer(p.cfg.ProduceTimeout + time.Second)
	defer timer.Stop()
	select {
	case <-st.done:
	case <-ctx.Done():
		return fmt.Errorf("produce to %s: %w", topic, ctx.Err())
	case <-timer.C:
		p.count(recs, "timeout")
		return fmt.Errorf("produce to %s: %w after %s", topic, ErrNotAcknowledged, p.cfg.ProduceTimeout)
	}
	err := st.err
	switch {
	case err == nil:
		p.count(recs, "ok")
		p.latency.Observe(time.Since(start).Seconds())
	case errors.Is(err, kgo.ErrMaxBuffered):
		p.count(recs, "buffer_full")
		err = fmt.Errorf("produce to %s: %w", topic, ErrBufferFull)
	default:
		p.count(recs, "error")
		p.log.Warn("kafka produce failed", "topic", topic, "records", len(recs), "err", err)
		err = fmt.Errorf("produce to %s: %w", topic, err)
	}
	p.putState(st) // after count: it clears recs
	return err
}

// ReleasesData reports that PublishTraces, once it returned nil, holds no
// reference to the batches' Data: the caller may reuse the buffers.
func (p *Producer) ReleasesData() bool { return true }

// count adds recs to the produced-records counter under each record's topic
// (a metrics request produces to two topics).
func (p *Producer) count(recs []kgo.Record, result string) {
	n, topic := 0, ""
	for i := range recs {
		if recs[i].Topic != topic && n > 0 {
			p.records.WithLabelValues(topic, result).Add(float64(n))
			n = 0
		}
		topic = recs[i].Topic
		n++
	}
	if n > 0 {
		p.records.WithLabelValues(topic, result).Add(float64(n))
	}
}

// Ping reports whether a broker answers, for dependency health.
func (p *Producer) Ping(ctx context.Context) error { return p.cl.Ping(ctx) }

// Close flushes buffered records (bounded by ctx) and closes the client.
func (p *Producer) Close(ctx context.Context) error {
	err := p.cl.Flush(ctx)
	p.cl.Close()
	if err != nil {
		return fmt.Errorf("flush kafka producer: %w", err)
	}
	return nil
}
