package metricstore

import (
	"context"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	otlpmetrics "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"go.uber.org/goleak"

	metricspb "github.com/threadline/threadline/proto/metrics/v1"
	"github.com/threadline/threadline/span"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func openStore(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	st, err := Open(dir, nil, nil, opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	return st
}

func str(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func tid(b byte) []byte {
	id := make([]byte, 16)
	id[0], id[15] = b, b
	return id
}

func sid(b byte) []byte {
	id := make([]byte, 8)
	id[7] = b
	return id
}

func ns(t time.Time) uint64 { return uint64(t.UnixNano()) }

// fixture is two services' worth of metrics: a latency histogram with
// exemplars, a cumulative counter and a gauge.
func fixture(at time.Time) *otlpmetrics.MetricsData {
	hist := func(route string, t time.Time, count uint64, ex ...*otlpmetrics.Exemplar) *otlpmetrics.HistogramDataPoint {
		return &otlpmetrics.HistogramDataPoint{
			Attributes:        []*commonpb.KeyValue{str("http.route", route)},
			StartTimeUnixNano: ns(at.Add(-time.Minute)), TimeUnixNano: ns(t),
			Count: count, Sum: new(float64(count) * 0.1),
			ExplicitBounds: []float64{0.05, 0.1, 0.5}, BucketCounts: []uint64{0, count / 2, count - count/2, 0},
			Exemplars: ex,
		}
	}
	ex := func(t time.Time, v float64, trace, spanB byte) *otlpmetrics.Exemplar {
		return &otlpmetrics.Exemplar{TimeUnixNano: ns(t), Value: &otlpmetrics.Exemplar_AsDouble{AsDouble: v}, TraceId: tid(trace), SpanId: sid(spanB)}
	}
	return &otlpmetrics.MetricsData{ResourceMetrics: []*otlpmetrics.ResourceMetrics{
		{
			Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("service.name", "checkout"), str("host.name", "a")}},
			ScopeMetrics: []*otlpmetrics.ScopeMetrics{{Metrics: []*otlpmetrics.Metric{
				{Name: "http.server.duration", Unit: "s", Data: &otlpmetrics.Metric_Histogram{Histogram: &otlpmetrics.Histogram{
					AggregationTemporality: otlpmetrics.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE,
					DataPoints: []*otlpmetrics.HistogramDataPoint{
						hist("/pay", at, 10, ex(at.Add(-2*time.Second), 0.3, 1, 1), ex(at.Add(-time.Second), 0.4, 2, 2)),
						hist("/cart", at, 4, ex(at.Add(-3*time.Second), 0.2, 3, 3),
							// No trace ID, and a trace ID of the wrong length: no link.
							&otlpmetrics.Exemplar{TimeUnixNano: ns(at), Value: &otlpmetrics.Exemplar_AsDouble{AsDouble: 1}},
							&otlpmetrics.Exemplar{TimeUnixNano: ns(at), TraceId: []byte{1, 2, 3}}),
					},
				}}},
				{Name: "orders", Data: &otlpmetrics.Metric_Sum{Sum: &otlpmetrics.Sum{
					AggregationTemporality: otlpmetrics.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, IsMonotonic: true,
					DataPoints: []*otlpmetrics.NumberDataPoint{
						{TimeUnixNano: ns(at.Add(-10 * time.Second)), Value: &otlpmetrics.NumberDataPoint_AsInt{AsInt: 5}},
						{TimeUnixNano: ns(at), Value: &otlpmetrics.NumberDataPoint_AsInt{AsInt: 9},
							Exemplars: []*otlpmetrics.Exemplar{{Value: &otlpmetrics.Exemplar_AsInt{AsInt: 1}, TraceId: tid(4)}}},
						// Stale marker: not stored.
						{TimeUnixNano: ns(at.Add(time.Second)), Flags: uint32(otlpmetrics.DataPointFlags_DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK)},
					},
				}}},
				{Name: "", Data: &otlpmetrics.Metric_Gauge{Gauge: &otlpmetrics.Gauge{DataPoints: []*otlpmetrics.NumberDataPoint{{TimeUnixNano: ns(at)}}}}},
			}}},
		},
		{
			Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("service.name", "worker")}},
			ScopeMetrics: []*otlpmetrics.ScopeMetrics{{Metrics: []*otlpmetrics.Metric{
				{Name: "queue_depth", Data: &otlpmetrics.Metric_Gauge{Gauge: &otlpmetrics.Gauge{DataPoints: []*otlpmetrics.NumberDataPoint{
					{Attributes: []*commonpb.KeyValue{str("queue", "orders")}, TimeUnixNano: ns(at), Value: &otlpmetrics.NumberDataPoint_AsDouble{AsDouble: 1500}},
				}}}},
				{Name: "http.server.duration", Data: &otlpmetrics.Metric_Histogram{Histogram: &otlpmetrics.Histogram{
					AggregationTemporality: otlpmetrics.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
					DataPoints:             []*otlpmetrics.HistogramDataPoint{hist("/pay", at, 2, ex(at, 0.9, 5, 5))},
				}}},
			}}},
		},
	}}
}

func traceIDs(links []Link) []span.TraceID {
	var out []span.TraceID
	for _, l := range links {
		out = append(out, l.TraceID)
	}
	return out
}

func mustTID(b byte) span.TraceID {
	id, err := span.TraceIDFromBytes(tid(b))
	if err != nil {
		panic(err)
	}
	return id
}

func TestExemplarQueries(t *testing.T) {
	at := time.Now().Truncate(time.Second)
	st := openStore(t, t.TempDir(), DefaultOptions())
	require.NoError(t, st.Write(t.Context(), fixture(at)))

	cases := []struct {
		name       string
		metric     string
		matchers   map[string]string
		start, end time.Time
		limit      int
		want       []span.TraceID
	}{
		{"all services newest first", "http.server.duration", nil, at.Add(-time.Hour), at.Add(time.Second), 0,
			[]span.TraceID{mustTID(5), mustTID(2), mustTID(1), mustTID(3)}},
		{"service matcher", "http.server.duration", map[string]string{"service.name": "checkout"}, time.Time{}, time.Time{}, 0,
			[]span.TraceID{mustTID(2), mustTID(1), mustTID(3)}},
		{"attribute matcher", "http.server.duration", map[string]string{"http.route": "/pay"}, time.Time{}, time.Time{}, 0,
			[]span.TraceID{mustTID(5), mustTID(2), mustTID(1)}},
		{"both matchers", "http.server.duration", map[string]string{"http.route": "/cart", "service.name": "checkout"}, time.Time{}, time.Time{}, 0,
			[]span.TraceID{mustTID(3)}},
		{"limit keeps newest", "http.server.duration", nil, time.Time{}, time.Time{}, 2,
			[]span.TraceID{mustTID(5), mustTID(2)}},
		{"end is exclusive", "http.server.duration", nil, time.Time{}, at, 0,
			[]span.TraceID{mustTID(2), mustTID(1), mustTID(3)}},
		{"start is inclusive", "http.server.duration", nil, at.Add(-2 * time.Second), at, 0,
			[]span.TraceID{mustTID(2), mustTID(1)}},
		{"exemplar without time takes the point's", "orders", nil, at, at.Add(time.Nanosecond), 0,
			[]span.TraceID{mustTID(4)}},
		{"absent label matches empty", "orders", map[string]string{"queue": ""}, time.Time{}, time.Time{}, 0,
			[]span.TraceID{mustTID(4)}},
		{"no such value", "http.server.duration", map[string]string{"service.name": "nobody"}, time.Time{}, time.Time{}, 0, nil},
		{"no such metric", "nope", nil, time.Time{}, time.Time{}, 0, nil},
		{"metric name prefix is not a match", "http.server", nil, time.Time{}, time.Time{}, 0, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			links, err := st.Exemplars(t.Context(), tc.metric, tc.matchers, tc.start, tc.end, tc.limit)
			require.NoError(t, err)
			require.Equal(t, tc.want, traceIDs(links))
		})
	}

	links, err := st.Exemplars(t.Context(), "http.server.duration", map[string]string{"service.name": "worker"}, time.Time{}, time.Time{}, 0)
	require.NoError(t, err)
	require.Len(t, links, 1)
	require.Equal(t, Link{Metric: "http.server.duration", Labels: []Label{{"http.route", "/pay"}, {"service.name", "worker"}},
		Time: at, Value: 0.9, TraceID: mustTID(5), SpanID: span.SpanID(sid(5))}, links[0])
}

func TestSeriesQueries(t *testing.T) {
	at := time.Now().Truncate(time.Second)
	st := openStore(t, t.TempDir(), DefaultOptions())
	require.NoError(t, st.Write(t.Context(), fixture(at)))

	got, err := st.Series(t.Context(), "orders", nil, at.Add(-time.Minute), at.Add(time.Minute))
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, metricspb.Kind_KIND_SUM, got[0].Kind)
	require.True(t, got[0].Monotonic)
	require.Equal(t, metricspb.Temporality_TEMPORALITY_CUMULATIVE, got[0].Temporality)
	require.Equal(t, []Label{{"service.name", "checkout"}}, got[0].Labels, "host.name is not a label")
	require.Len(t, got[0].Points, 2, "the no-recorded-value point is not stored")
	require.Equal(t, []float64{5, 9}, []float64{got[0].Points[0].Value, got[0].Points[1].Value})

	got, err = st.Series(t.Context(), "http.server.duration", map[string]string{"service.name": "checkout", "http.route": "/pay"}, time.Time{}, time.Time{})
	require.NoError(t, err)
	require.Len(t, got, 1)
	p := got[0].Points[0]
	require.Equal(t, uint64(10), p.Count)
	require.InDelta(t, 1.0, p.Sum, 1e-9)
	require.Equal(t, []float64{0.05, 0.1, 0.5}, p.Bounds)
	require.Equal(t, []uint64{0, 5, 5, 0}, p.BucketCounts)
	require.Equal(t, at.Add(-time.Minute), p.Start)
	require.Equal(t, "s", got[0].Unit)

	got, err = st.Series(t.Context(), "http.server.duration", map[string]string{"http.route": "/pay"}, time.Time{}, time.Time{})
	require.NoError(t, err)
	require.Len(t, got, 2, "checkout and worker")

	got, err = st.Series(t.Context(), "queue_depth", map[string]string{"queue": "orders"}, at, at.Add(time.Nanosecond))
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, 1500.0, got[0].Points[0].Value)

	got, err = st.Series(t.Context(), "queue_depth", nil, at.Add(time.Nanosecond), time.Time{})
	require.NoError(t, err)
	require.Empty(t, got, "a series without points in range is left out")
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}

func countKeys(t *testing.T, st *Store) int {
	t.Helper()
	n := 0
	require.NoError(t, st.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	}))
	return n
}

func TestWriteIsIdempotentAndSurvivesReopen(t *testing.T) {
	at := time.Now().Truncate(time.Second)
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	st, err := Open(dir, nil, reg, DefaultOptions())
	require.NoError(t, err)
	_, err = Open(t.TempDir(), nil, reg, DefaultOptions())
	require.ErrorContains(t, err, "register metric", "a second store on the same registry fails cleanly")
	require.NoError(t, st.Write(t.Context(), fixture(at)))
	keys := countKeys(t, st)
	// 5 series keys, 1+1+2+1+1 points, 2+1+1+1 links.
	require.Equal(t, 5+6+5, keys)
	require.NoError(t, st.Write(t.Context(), fixture(at)))
	require.Equal(t, keys, countKeys(t, st), "a replay rewrites the same keys")
	require.Equal(t, 12.0, counter(t, st.metrics.points))
	require.Equal(t, 10.0, counter(t, st.metrics.links))
	require.NoError(t, st.Close())
	require.NoError(t, st.Close(), "Close is idempotent")

	st = openStore(t, dir, DefaultOptions())
	links, err := st.Exemplars(t.Context(), "http.server.duration", nil, time.Time{}, time.Time{}, 0)
	require.NoError(t, err)
	require.Len(t, links, 4, "no duplicates after replay and reopen")
}

func TestRetention(t *testing.T) {
	now := time.Now()
	opts := DefaultOptions()
	opts.Retention = time.Hour
	st := openStore(t, t.TempDir(), opts)

	gauge := func(name string, at time.Time) *otlpmetrics.MetricsData {
		return &otlpmetrics.MetricsData{ResourceMetrics: []*otlpmetrics.ResourceMetrics{{ScopeMetrics: []*otlpmetrics.ScopeMetrics{{Metrics: []*otlpmetrics.Metric{
			{Name: name, Data: &otlpmetrics.Metric_Gauge{Gauge: &otlpmetrics.Gauge{DataPoints: []*otlpmetrics.NumberDataPoint{{
				TimeUnixNano: ns(at), Value: &otlpmetrics.NumberDataPoint_AsDouble{AsDouble: 1},
				Exemplars: []*otlpmetrics.Exemplar{{TimeUnixNano: ns(at), TraceId: tid(9)}},
			}}}}},
		}}}}}}
	}
	// Already past retention: nothing is written, not even the series.
	require.NoError(t, st.Write(t.Context(), gauge("old", now.Add(-2*time.Hour))))
	require.Equal(t, 0, countKeys(t, st))
	require.Equal(t, 2.0, counter(t, st.metrics.expired))

	// Expires about one second from now (TTLs are whole seconds).
	require.NoError(t, st.Write(t.Context(), gauge("soon", now.Add(-time.Hour+time.Second))))
	links, err := st.Exemplars(t.Context(), "soon", nil, time.Time{}, time.Time{}, 0)
	require.NoError(t, err)
	require.Len(t, links, 1)
	require.Eventually(t, func() bool {
		links, err := st.Exemplars(t.Context(), "soon", nil, time.Time{}, time.Time{}, 0)
		require.NoError(t, err)
		pts, err := st.Series(t.Context(), "soon", nil, time.Time{}, time.Time{})
		require.NoError(t, err)
		return len(links) == 0 && len(pts) == 0
	}, 5*time.Second, 100*time.Millisecond, "points and links expire at their time + retention")
}

func TestLinks(t *testing.T) {
	at := time.Now().Truncate(time.Second)
	links := Links(fixture(at))
	require.ElementsMatch(t, []span.TraceID{mustTID(1), mustTID(2), mustTID(3), mustTID(4), mustTID(5)}, traceIDs(links))
	for _, l := range links {
		require.NotEmpty(t, l.Metric)
		require.NotEmpty(t, l.Labels)
	}
}

func TestOptionsValidate(t *testing.T) {
	f := func(mut func(*Options), wantErr string) {
		t.Helper()
		o := DefaultOptions()
		mut(&o)
		err := o.Validate()
		if wantErr == "" {
			require.NoError(t, err)
			return
		}
		require.ErrorContains(t, err, wantErr)
	}
	f(func(*Options) {}, "")
	f(func(o *Options) { o.Retention = 0 }, "metrics.retention")
	f(func(o *Options) { o.MemTableSize = 1 }, "memtable")
	_, err := Open(t.TempDir(), nil, nil, Options{})
	require.Error(t, err)
}

func TestWriteCanceled(t *testing.T) {
	st := openStore(t, t.TempDir(), DefaultOptions())
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.ErrorIs(t, st.Write(ctx, fixture(time.Now())), context.Canceled)
}

func BenchmarkWrite(b *testing.B) {
	st := openStore(b, b.TempDir(), DefaultOptions())
	md := fixture(time.Now())
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := st.Write(b.Context(), md); err != nil {
			b.Fatal(err)
		}
	}
	// The fixture holds 6 data points and 5 exemplar links.
	b.ReportMetric(float64(b.N*6)/b.Elapsed().Seconds(), "points/s")
}
