package bus

import (
	"context"
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

	"github.com/threadline/threadline/span"
)

func exemplar(id span.TraceID, v float64) *metricspb.Exemplar {
	return &metricspb.Exemplar{TraceId: id[:], SpanId: []byte{1, 2, 3, 4, 5, 6, 7, 8}, TimeUnixNano: 1, Value: &metricspb.Exemplar_AsDouble{AsDouble: v}}
}

func strAttr(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

// testMetrics: two resources; a histogram point with exemplars of traces a
// and b, another with a only; a sum with a; a gauge whose exemplar has a
// broken trace ID; a summary.
func testMetrics(a, b span.TraceID) *metricspb.MetricsData {
	hist := &metricspb.Metric{Name: "http.duration", Unit: "ms", Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{
		AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
		DataPoints: []*metricspb.HistogramDataPoint{
			{Attributes: []*commonpb.KeyValue{strAttr("route", "/a")}, Count: 3, Sum: proto.Float64(30), ExplicitBounds: []float64{10}, BucketCounts: []uint64{1, 2},
				Exemplars: []*metricspb.Exemplar{exemplar(a, 5), exemplar(b, 20), exemplar(a, 25)}},
			{Attributes: []*commonpb.KeyValue{strAttr("route", "/b")}, Count: 1, Sum: proto.Float64(1), Exemplars: []*metricspb.Exemplar{exemplar(a, 1)}},
			{Attributes: []*commonpb.KeyValue{strAttr("route", "/c")}, Count: 1, Sum: proto.Float64(1)},
		},
	}}}
	sum := &metricspb.Metric{Name: "http.requests", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{
		AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, IsMonotonic: true,
		DataPoints: []*metricspb.NumberDataPoint{{Value: &metricspb.NumberDataPoint_AsInt{AsInt: 7}, Exemplars: []*metricspb.Exemplar{exemplar(a, 1)}}},
	}}}
	gauge := &metricspb.Metric{Name: "queue.depth", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{
		DataPoints: []*metricspb.NumberDataPoint{{Exemplars: []*metricspb.Exemplar{{TraceId: []byte{1, 2}}}}},
	}}}
	summary := &metricspb.Metric{Name: "rpc.latency", Data: &metricspb.Metric_Summary{Summary: &metricspb.Summary{
		DataPoints: []*metricspb.SummaryDataPoint{{Count: 1}},
	}}}
	res := func(svc string) *resourcepb.Resource {
		return &resourcepb.Resource{Attributes: []*commonpb.KeyValue{strAttr("service.name", svc)}}
	}
	return &metricspb.MetricsData{ResourceMetrics: []*metricspb.ResourceMetrics{
		{Resource: res("api"), ScopeMetrics: []*metricspb.ScopeMetrics{{Scope: &commonpb.InstrumentationScope{Name: "s"}, Metrics: []*metricspb.Metric{hist, gauge, summary}}}},
		{Resource: res("db"), ScopeMetrics: []*metricspb.ScopeMetrics{{Metrics: []*metricspb.Metric{sum}}}},
	}}
}

func TestSplitExemplars(t *testing.T) {
	a, b := span.TraceID{0xa, 1}, span.TraceID{0xb, 1}
	data, err := proto.Marshal(testMetrics(a, b))
	require.NoError(t, err)
	batches, err := SplitExemplars(data)
	require.NoError(t, err)
	require.Len(t, batches, 2, "one per valid trace ID; the broken one is left out")
	got := map[span.TraceID]*metricspb.MetricsData{}
	for _, bt := range batches {
		md := &metricspb.MetricsData{}
		require.NoError(t, proto.Unmarshal(bt.Data, md))
		got[bt.ID] = md
	}

	ma := got[a]
	require.Len(t, ma.ResourceMetrics, 2)
	require.Equal(t, "api", ma.ResourceMetrics[0].Resource.Attributes[0].Value.GetStringValue())
	require.Equal(t, "s", ma.ResourceMetrics[0].ScopeMetrics[0].Scope.GetName())
	ms := ma.ResourceMetrics[0].ScopeMetrics[0].Metrics
	require.Len(t, ms, 1, "only the histogram has points with a's exemplars")
	h := ms[0].GetHistogram()
	require.Equal(t, "ms", ms[0].Unit)
	require.Equal(t, metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA, h.AggregationTemporality)
	require.Len(t, h.DataPoints, 2, "both points of one metric under one output metric")
	require.Equal(t, uint64(3), h.DataPoints[0].Count, "the point keeps its values")
	require.Equal(t, []uint64{1, 2}, h.DataPoints[0].BucketCounts)
	require.Len(t, h.DataPoints[0].Exemplars, 2, "only a's exemplars")
	for _, e := range h.DataPoints[0].Exemplars {
		require.Equal(t, a[:], e.TraceId)
	}
	s := ma.ResourceMetrics[1].ScopeMetrics[0].Metrics[0]
	require.Equal(t, "http.requests", s.Name)
	require.True(t, s.GetSum().IsMonotonic)
	require.Equal(t, metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, s.GetSum().AggregationTemporality)

	mb := got[b]
	require.Len(t, mb.ResourceMetrics, 1)
	hb := mb.ResourceMetrics[0].ScopeMetrics[0].Metrics[0].GetHistogram()
	require.Len(t, hb.DataPoints, 1)
	require.Len(t, hb.DataPoints[0].Exemplars, 1)
	require.Equal(t, 20.0, hb.DataPoints[0].Exemplars[0].GetAsDouble())

	none, err := SplitExemplars(nil)
	require.NoError(t, err)
	require.Empty(t, none)
	_, err = SplitExemplars([]byte{0xff})
	require.Error(t, err)
}

func startBrokerTopics(t *testing.T, partitions int) *Embedded {
	t.Helper()
	cfg := DefaultEmbeddedConfig()
	cfg.Addr, cfg.DataDir, cfg.SyncWrites, cfg.Partitions = "127.0.0.1:0", t.TempDir(), false, partitions
	kc := DefaultConfig()
	e, err := StartEmbedded(context.Background(), cfg, kc.Topics(), discard())
	require.NoError(t, err)
	t.Cleanup(e.Close)
	return e
}

// readAll reads want records of topics from the start, then checks for a
// moment that no more arrive.
func readAll(t *testing.T, addr string, want int, topics ...string) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics(topics...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	require.NoError(t, err)
	defer cl.Close()
	var out []*kgo.Record
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for len(out) < want {
		f := cl.PollFetches(ctx)
		require.NoError(t, ctx.Err(), "read %d of %d records", len(out), want)
		out = append(out, f.Records()...)
	}
	extra, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	out = append(out, cl.PollFetches(extra).Records()...)
	return out
}

// TestPublishMetricsExemplarLinks: a metrics request produces the whole
// request unkeyed to the metrics topic and one record per trace to the
// exemplars topic, on the partition of that trace's spans.
func TestPublishMetricsExemplarLinks(t *testing.T) {
	e := startBrokerTopics(t, 4)
	kcfg := DefaultConfig()
	kcfg.Brokers = []string{e.Addr()}
	reg := prometheus.NewRegistry()
	p, err := NewProducer(kcfg, discard(), reg)
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Close(context.Background())) }()

	var ids []span.TraceID
	var traces []span.TraceBatch
	for i := range 8 {
		id := span.TraceID{byte(i), 0x5e, 7}
		ids = append(ids, id)
		traces = append(traces, span.TraceBatch{ID: id, Spans: 1, Data: []byte{}})
	}
	require.NoError(t, p.PublishTraces(context.Background(), traces))
	md := &metricspb.MetricsData{}
	for i := 0; i+1 < len(ids); i += 2 {
		md.ResourceMetrics = append(md.ResourceMetrics, testMetrics(ids[i], ids[i+1]).ResourceMetrics...)
	}
	data, err := proto.Marshal(md)
	require.NoError(t, err)
	require.NoError(t, p.PublishMetrics(context.Background(), data, 0))

	spanPart := map[string]int32{}
	for _, r := range readAll(t, e.Addr(), len(ids), kcfg.TracesTopic) {
		spanPart[string(r.Key)] = r.Partition
	}
	metrics := readAll(t, e.Addr(), 1, kcfg.MetricsTopic)
	require.Len(t, metrics, 1)
	require.Nil(t, metrics[0].Key)
	require.Equal(t, data, metrics[0].Value)
	links := readAll(t, e.Addr(), len(ids), kcfg.ExemplarsTopic)
	require.Len(t, links, len(ids))
	parts := map[int32]bool{}
	for _, r := range links {
		part, ok := spanPart[string(r.Key)]
		require.True(t, ok, "link keyed by a trace ID: %q", r.Key)
		require.Equal(t, part, r.Partition, "the link lands on its trace's partition")
		parts[r.Partition] = true
		id, err := span.ParseTraceID(string(r.Key))
		require.NoError(t, err)
		md := &metricspb.MetricsData{}
		require.NoError(t, proto.Unmarshal(r.Value, md))
		for _, rm := range md.ResourceMetrics {
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					for _, dp := range m.GetHistogram().GetDataPoints() {
						for _, ex := range dp.Exemplars {
							require.Equal(t, id[:], ex.TraceId)
						}
					}
				}
			}
		}
	}
	require.Greater(t, len(parts), 1, "traces spread over partitions")
	require.Equal(t, 8.0+0, counterOf(t, reg, "threadline_kafka_produced_records_total", kcfg.ExemplarsTopic))
	require.Equal(t, 1.0, counterOf(t, reg, "threadline_kafka_produced_records_total", kcfg.MetricsTopic))

	// Disabled: no links.
	kcfg.ExemplarsTopic = ""
	p2, err := NewProducer(kcfg, discard(), prometheus.NewRegistry())
	require.NoError(t, err)
	defer func() { require.NoError(t, p2.Close(context.Background())) }()
	require.NoError(t, p2.PublishMetrics(context.Background(), data, 0))
	require.Len(t, readAll(t, e.Addr(), len(ids), DefaultConfig().ExemplarsTopic), len(ids))
}

func counterOf(t *testing.T, reg *prometheus.Registry, name, topic string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["topic"] == topic && l["result"] == "ok" {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestFetcher reads records back by offset, jumping gaps, and reports
// records removed by retention as gone.
func TestFetcher(t *testing.T) {
	e := startBrokerTopics(t, 1)
	kcfg := DefaultConfig()
	kcfg.Brokers = []string{e.Addr()}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.Addr()), kgo.DefaultProduceTopic(kcfg.TracesTopic))
	require.NoError(t, err)
	defer cl.Close()
	for i := range 300 {
		rec := &kgo.Record{Key: []byte{byte(i)}, Value: make([]byte, 1024)}
		rec.Value[0] = byte(i)
		require.NoError(t, cl.ProduceSync(context.Background(), rec).FirstErr())
	}
	f, err := NewFetcher(kcfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	recs, err := f.Fetch(ctx, kcfg.TracesTopic, 0, []int64{250, 3, 4, 3, 120})
	require.NoError(t, err)
	t.Logf("fetched 4 offsets in %s", time.Since(start))
	var got []int64
	for _, r := range recs {
		got = append(got, r.Offset)
		require.Equal(t, byte(r.Offset), r.Value[0])
	}
	require.Equal(t, []int64{3, 4, 120, 250}, got)

	// Retention removes the first 200 records.
	req := kmsg.NewPtrDeleteRecordsRequest()
	rt := kmsg.NewDeleteRecordsRequestTopic()
	rt.Topic = kcfg.TracesTopic
	rp := kmsg.NewDeleteRecordsRequestTopicPartition()
	rp.Partition, rp.Offset = 0, 200
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 5000
	resp, err := req.RequestWith(context.Background(), cl)
	require.NoError(t, err)
	require.NoError(t, kerr.ErrorForCode(resp.Topics[0].Partitions[0].ErrorCode))
	_, err = f.Fetch(ctx, kcfg.TracesTopic, 0, []int64{150})
	require.ErrorIs(t, err, ErrRecordsGone)
	recs, err = f.Fetch(ctx, kcfg.TracesTopic, 0, []int64{210})
	require.NoError(t, err)
	require.Len(t, recs, 1)
}
