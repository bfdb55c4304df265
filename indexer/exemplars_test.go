package indexer

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/alerting"
	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/index"
	"github.com/threadline/threadline/sampling"
	"github.com/threadline/threadline/span"
)

const exemplarRules = `
groups:
  - name: checkout
    rules:
      - alert: CheckoutSlow
        expr: {kind: metric, name: checkout.duration, matchers: {service.name: checkout}, op: ">", threshold: 500}
`

// exHarness runs a real Indexer over real Badger, fed records that were
// really produced to an in-process Kafka broker (kfake), with the real
// alert-rule matcher and bus.Fetcher, as the app wires them.
type exHarness struct {
	ix     *Indexer
	store  *index.Store
	dec    *sampling.TailSampler
	ledger *bus.Ledger
	kafka  *kgo.Client
	reg    *prometheus.Registry
	topics bus.Config
	stop   func()
	dir    string // the store's
}

func newExHarness(t *testing.T, cfg Config, scfg sampling.Config) *exHarness {
	t.Helper()
	groups, err := alerting.ParseRules([]byte(exemplarRules))
	require.NoError(t, err)
	return newKafkaHarness(t, cfg, scfg, alerting.NewMetricRules(groups))
}

// newKafkaHarness is newExHarness with the given alert-rule matcher (nil:
// no alert rules, as an all-in-one started without --alert-rules).
func newKafkaHarness(t *testing.T, cfg Config, scfg sampling.Config, rules AlertingMetrics) *exHarness {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	ecfg := bus.DefaultEmbeddedConfig()
	ecfg.Addr, ecfg.DataDir, ecfg.SyncWrites, ecfg.Partitions = "127.0.0.1:0", t.TempDir(), false, 1
	kcfg := bus.DefaultConfig()
	broker, err := bus.StartEmbedded(context.Background(), ecfg, kcfg.Topics(), logger)
	require.NoError(t, err)
	t.Cleanup(broker.Close)
	kcfg.Brokers = []string{broker.Addr()}
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker.Addr()))
	require.NoError(t, err)
	t.Cleanup(cl.Close)
	fetcher, err := bus.NewFetcher(kcfg)
	require.NoError(t, err)

	dir := t.TempDir()
	store, err := index.Open(dir, logger, prometheus.NewRegistry(), index.DefaultOptions())
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	dec, err := sampling.NewTailSampler(scfg, reg)
	require.NoError(t, err)
	ix, err := New(cfg, Parts{Store: store, Decider: dec, Alerting: rules, Fetcher: fetcher}, logger, reg)
	require.NoError(t, err)
	h := &exHarness{ix: ix, store: store, dec: dec, ledger: bus.NewLedger(), kafka: cl, reg: reg, topics: kcfg, dir: dir}
	h.stop = runIndexer(t, ix, 0, store.Close)
	t.Cleanup(h.stop)
	return h
}

// produce writes records to Kafka and hands them, as consumed, to the indexer.
func (h *exHarness) produce(t *testing.T, recs ...*kgo.Record) {
	t.Helper()
	require.NoError(t, h.kafka.ProduceSync(context.Background(), recs...).FirstErr())
	tickets := make([]*bus.Ticket, len(recs))
	for i, r := range recs {
		tickets[i] = h.ledger.Begin(r)
	}
	h.ix.HandleRecords(context.Background(), recs, tickets)
}

func (h *exHarness) spans(t *testing.T, s traceSpec) {
	t.Helper()
	b, err := proto.Marshal(s.build())
	require.NoError(t, err)
	h.produce(t, &kgo.Record{Topic: h.topics.TracesTopic, Key: s.id.AppendHex(nil), Value: b})
}

// exemplar sends an exemplar-link record for id of metric (service checkout).
func (h *exHarness) exemplar(t *testing.T, metric string, id span.TraceID) {
	t.Helper()
	md := &metricspb.MetricsData{ResourceMetrics: []*metricspb.ResourceMetrics{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "checkout"}}}}},
		ScopeMetrics: []*metricspb.ScopeMetrics{{Metrics: []*metricspb.Metric{{Name: metric, Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{
			DataPoints: []*metricspb.HistogramDataPoint{{TimeUnixNano: uint64(time.Now().UnixNano()), Count: 1, Sum: proto.Float64(900),
				Exemplars: []*metricspb.Exemplar{{TraceId: id[:], TimeUnixNano: uint64(time.Now().UnixNano()), Value: &metricspb.Exemplar_AsDouble{AsDouble: 900}}}}},
		}}}}}},
	}}}
	b, err := proto.Marshal(md)
	require.NoError(t, err)
	h.produce(t, &kgo.Record{Topic: h.topics.ExemplarsTopic, Key: id.AppendHex(nil), Value: b})
}

// settled: nothing buffered, every record released.
func (h *exHarness) settled() bool {
	tr, sp := h.ix.Buffered()
	return tr == 0 && sp == 0 && h.ledger.Pending() == 0
}

func (h *exHarness) waitSettled(t *testing.T) {
	t.Helper()
	require.Eventually(t, h.settled, 20*time.Second, 10*time.Millisecond)
}

// reasons returns the stored trace's reasons, nil when not stored.
func (h *exHarness) reasons(t *testing.T, id span.TraceID) []string {
	t.Helper()
	got, found, err := h.store.Trace(context.Background(), id)
	require.NoError(t, err)
	if !found {
		return nil
	}
	return got.Reasons
}

// held reads the sampler's held-traces gauge (the sampler itself belongs to
// the indexer's goroutine).
func (h *exHarness) held(t *testing.T) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == "threadline_sampling_held_traces" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

func (h *exHarness) outcomes(t *testing.T) map[string]float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "threadline_indexer_exemplar_pins_total" {
			for _, m := range mf.GetMetric() {
				if v := m.GetCounter().GetValue(); v > 0 {
					out[m.GetLabel()[0].GetValue()] = v
				}
			}
		}
	}
	return out
}

// fast is a successful, fast trace: with TopN 0 and no baseline it is dropped.
func fast(n int) traceSpec {
	return traceSpec{id: traceID(n), service: "checkout", op: "POST /pay", start: time.Now().Add(-time.Minute), duration: time.Millisecond, spans: 3}
}

func dropAll() sampling.Config {
	s := sampling.DefaultConfig()
	s.TopN = 0
	return s
}

// (a) The exemplar arrives while the trace assembles: kept at Offer.
func TestExemplarPinAssembling(t *testing.T) {
	cfg := testConfig()
	cfg.DecisionWait = 400 * time.Millisecond
	h := newExHarness(t, cfg, dropAll())
	pinned, other := fast(1), fast(2)
	h.spans(t, pinned)
	h.spans(t, other)
	h.exemplar(t, "checkout.duration", pinned.id)
	h.exemplar(t, "other.metric", other.id) // not an alerting metric
	h.waitSettled(t)
	require.Equal(t, []string{sampling.ReasonExemplar}, h.reasons(t, pinned.id))
	require.Nil(t, h.reasons(t, other.id), "exemplars of metrics no rule evaluates pin nothing")
	got, _, err := h.store.Trace(context.Background(), pinned.id)
	require.NoError(t, err)
	require.Len(t, got.Spans, 3)
	require.Equal(t, map[string]float64{pinAssembling: 1}, h.outcomes(t))
}

// (b) The trace waits in a top-N heap: the pin decides it now, and its
// window's close brings no second decision.
func TestExemplarPinHeld(t *testing.T) {
	scfg := sampling.DefaultConfig()
	scfg.TopN = 1
	scfg.Window = time.Hour // the window stays open for the test
	h := newExHarness(t, testConfig(), scfg)
	s := fast(1)
	s.start = time.Now()
	h.spans(t, s)
	require.Eventually(t, func() bool { return h.held(t) == 1 }, 10*time.Second, 5*time.Millisecond)
	h.exemplar(t, "checkout.duration", s.id)
	require.Eventually(t, func() bool { return h.reasons(t, s.id) != nil && h.ledger.Pending() == 0 }, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, []string{sampling.ReasonExemplar}, h.reasons(t, s.id))
	require.Zero(t, h.held(t))
	require.Equal(t, map[string]float64{pinHeld: 1}, h.outcomes(t))
	h.stop() // Flush decides nothing more for it
	require.Zero(t, h.dec.Held())
	require.Zero(t, counterValue(t, h.ix.m.traces.WithLabelValues("dropped")))
	require.Equal(t, 1.0, counterValue(t, h.ix.m.traces.WithLabelValues("kept")))
}

// (c) The trace was kept already: the reason is added in the store.
func TestExemplarPinAlreadyKept(t *testing.T) {
	h := newExHarness(t, testConfig(), dropAll())
	s := fast(1)
	s.err = true
	h.spans(t, s)
	h.waitSettled(t)
	require.Equal(t, []string{sampling.ReasonError}, h.reasons(t, s.id))
	h.exemplar(t, "checkout.duration", s.id)
	h.exemplar(t, "checkout.duration", s.id) // again: nothing more to add
	require.Eventually(t, func() bool { return len(h.reasons(t, s.id)) == 2 && h.ledger.Pending() == 0 }, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, []string{sampling.ReasonError, sampling.ReasonExemplar}, h.reasons(t, s.id))
	require.Equal(t, map[string]float64{pinAlreadyKept: 2}, h.outcomes(t))
}

// (d) The exemplar comes before any span: the pin waits for the trace; pins
// past the cap or the TTL are shed and release their records.
func TestExemplarPinEarly(t *testing.T) {
	cfg := testConfig()
	cfg.ExemplarMaxPins = 2
	cfg.ExemplarPinTTL = 1500 * time.Millisecond
	h := newExHarness(t, cfg, dropAll())
	s := fast(1)
	h.exemplar(t, "checkout.duration", s.id)
	require.Equal(t, 1, h.ledger.Pending(), "the pin holds its record")
	h.spans(t, s)
	h.waitSettled(t)
	require.Equal(t, []string{sampling.ReasonExemplar}, h.reasons(t, s.id))

	// Three waiting pins, cap two: the oldest is shed.
	for n := 10; n < 13; n++ {
		h.exemplar(t, "checkout.duration", traceID(n))
	}
	require.Equal(t, map[string]float64{pinEarly: 4, pinShed: 1}, h.outcomes(t))
	require.Equal(t, 2, h.ledger.Pending())
	// The TTL sheds the others.
	require.Eventually(t, func() bool { return h.ledger.Pending() == 0 }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, map[string]float64{pinEarly: 4, pinShed: 3}, h.outcomes(t))
}

// (e) The trace was dropped before its exemplar came: it is fetched again
// from Kafka and written; the exemplar's record is held until then. Records
// removed by retention, or forgotten past the lookback cap, are counted.
func TestExemplarPinDropped(t *testing.T) {
	cfg := testConfig()
	cfg.ExemplarLookbackMaxTraces = 3
	h := newExHarness(t, cfg, dropAll())
	s := fast(1)
	h.spans(t, s)
	// A late span of the dropped trace, in a record of its own: refetched too.
	late := s
	late.spans = 1
	h.waitSettled(t)
	td := late.build()
	td.ResourceSpans[0].ScopeSpans[0].Spans[0].SpanId = []byte{0, 0, 0, 0, 0, 0, 0, 99}
	td.ResourceSpans[0].ScopeSpans[0].Spans[0].ParentSpanId = []byte{0, 0, 0, 0, 0, 0, 0, 1}
	b, err := proto.Marshal(td)
	require.NoError(t, err)
	h.produce(t, &kgo.Record{Topic: h.topics.TracesTopic, Key: s.id.AppendHex(nil), Value: b})
	h.spans(t, fast(2)) // another trace's record between them
	h.waitSettled(t)
	require.Nil(t, h.reasons(t, s.id), "dropped")

	start := time.Now()
	h.exemplar(t, "checkout.duration", s.id)
	require.Eventually(t, func() bool { return h.ledger.Pending() == 0 }, 20*time.Second, 2*time.Millisecond)
	t.Logf("refetch and write of one dropped trace: %s", time.Since(start))
	require.Equal(t, []string{sampling.ReasonExemplar}, h.reasons(t, s.id))
	got, _, err := h.store.Trace(context.Background(), s.id)
	require.NoError(t, err)
	require.Len(t, got.Spans, 4, "the trace's spans from both records, none of the other trace")
	require.Nil(t, h.reasons(t, traceID(2)))
	require.Equal(t, map[string]float64{pinRefetched: 1}, h.outcomes(t))

	// Lookback cap 3: with trace 2 and four more dropped traces, trace 2
	// and the first of the four are forgotten.
	for n := 20; n < 24; n++ {
		h.spans(t, fast(n))
	}
	h.waitSettled(t)
	require.Equal(t, 2.0, counterValue(t, h.ix.ex.evicted))
	h.exemplar(t, "checkout.duration", traceID(20))
	require.Equal(t, map[string]float64{pinRefetched: 1, pinRefetchFailed: 1}, h.outcomes(t))

	// Retention removes every record so far: the refetch fails, counted.
	req := kmsg.NewPtrDeleteRecordsRequest()
	rt := kmsg.NewDeleteRecordsRequestTopic()
	rt.Topic = h.topics.TracesTopic
	rp := kmsg.NewDeleteRecordsRequestTopicPartition()
	rp.Partition, rp.Offset = 0, -1 // -1: the high watermark
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(context.Background(), h.kafka)
	require.NoError(t, err)
	require.NoError(t, kerr.ErrorForCode(resp.Topics[0].Partitions[0].ErrorCode))
	h.exemplar(t, "checkout.duration", traceID(22))
	require.Eventually(t, func() bool { return h.ledger.Pending() == 0 }, 20*time.Second, 5*time.Millisecond)
	require.Equal(t, map[string]float64{pinRefetched: 1, pinRefetchFailed: 2}, h.outcomes(t))
	require.Nil(t, h.reasons(t, traceID(22)))
}

// TestExemplarIgnoredWithoutRules: without alerting metrics, exemplar
// records are consumed and pin nothing.
func TestExemplarIgnoredWithoutRules(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	store, err := index.Open(t.TempDir(), logger, nil, index.DefaultOptions())
	require.NoError(t, err)
	defer store.Close()
	dec, err := sampling.NewTailSampler(dropAll(), nil)
	require.NoError(t, err)
	ix, err := New(testConfig(), Parts{Store: store, Decider: dec}, logger, prometheus.NewRegistry())
	require.NoError(t, err)
	l := bus.NewLedger()
	r := &kgo.Record{Topic: "otlp_exemplars", Value: []byte{0xff}} // not even decodable: never looked at
	tk := l.Begin(r)
	ix.HandleRecords(context.Background(), []*kgo.Record{r}, []*bus.Ticket{tk})
	require.Zero(t, l.Pending())
	require.Zero(t, counterValue(t, ix.m.badRecords))
}
