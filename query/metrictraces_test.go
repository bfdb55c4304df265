package query

import (
	"encoding/json"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	otlpmetrics "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/threadline/threadline/alerting"
	"github.com/threadline/threadline/metricstore"
	metricspb "github.com/threadline/threadline/proto/metrics/v1"
	"github.com/threadline/threadline/readapi"
	"github.com/threadline/threadline/span"
)

const traceCHex = "cccccccccccccccccccccccccccccccc" // linked, but never kept

var traceC = mustTraceID(traceCHex)

// startMetricReaders serves each MetricsData on its own indexer: a real
// metric store behind the real read API on 127.0.0.1:0.
func startMetricReaders(t *testing.T, shards ...*otlpmetrics.MetricsData) []metricspb.MetricReaderClient {
	t.Helper()
	var out []metricspb.MetricReaderClient
	for _, md := range shards {
		opts := metricstore.DefaultOptions()
		opts.Retention = 20 * 365 * 24 * time.Hour // the fixtures are dated t0
		st, err := metricstore.Open(t.TempDir(), nil, nil, opts)
		require.NoError(t, err)
		require.NoError(t, st.Write(t.Context(), md))
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		srv := grpc.NewServer()
		metricspb.RegisterMetricReaderServer(srv, readapi.NewMetrics(st, nil))
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(lis) }()
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() {
			_ = conn.Close()
			srv.Stop()
			<-done
			require.NoError(t, st.Close())
		})
		out = append(out, metricspb.NewMetricReaderClient(conn))
	}
	return out
}

func deadMetricReader(t *testing.T) metricspb.MetricReaderClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return metricspb.NewMetricReaderClient(conn)
}

func ex(at time.Duration, v float64, tid span.TraceID, spanID byte) *otlpmetrics.Exemplar {
	return &otlpmetrics.Exemplar{TimeUnixNano: ns(at), Value: &otlpmetrics.Exemplar_AsDouble{AsDouble: v}, TraceId: tid[:], SpanId: sid(spanID)}
}

// histPoint is a cumulative histogram point over bounds 0.1, 0.5, 1 (s).
func histPoint(at time.Duration, counts [4]uint64, exemplars ...*otlpmetrics.Exemplar) *otlpmetrics.HistogramDataPoint {
	total := counts[0] + counts[1] + counts[2] + counts[3]
	return &otlpmetrics.HistogramDataPoint{
		Attributes:        []*commonpb.KeyValue{strAttr("http.route", "/pay")},
		StartTimeUnixNano: ns(0), TimeUnixNano: ns(at), Count: total, Sum: new(float64(total) * 0.3),
		ExplicitBounds: []float64{0.1, 0.5, 1}, BucketCounts: counts[:], Exemplars: exemplars,
	}
}

func metricsOf(service string, ms ...*otlpmetrics.Metric) *otlpmetrics.MetricsData {
	return &otlpmetrics.MetricsData{ResourceMetrics: []*otlpmetrics.ResourceMetrics{{
		Resource:     &resourcepb.Resource{Attributes: []*commonpb.KeyValue{strAttr("service.name", service)}},
		ScopeMetrics: []*otlpmetrics.ScopeMetrics{{Metrics: ms}},
	}}}
}

func histogram(points ...*otlpmetrics.HistogramDataPoint) *otlpmetrics.Metric {
	return &otlpmetrics.Metric{Name: "http.server.duration", Unit: "s", Data: &otlpmetrics.Metric_Histogram{Histogram: &otlpmetrics.Histogram{
		AggregationTemporality: otlpmetrics.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, DataPoints: points}}}
}

// metricShards: indexer 0 links traces A, B and C from checkout; indexer 1
// holds more points of the same series (a rebalance) linking B again,
// older, and a worker series linking A.
func metricShards() (*otlpmetrics.MetricsData, *otlpmetrics.MetricsData) {
	s0 := metricsOf("checkout",
		histogram(
			histPoint(time.Minute, [4]uint64{10, 0, 0, 0}),
			histPoint(2*time.Minute, [4]uint64{10, 80, 10, 0}, ex(90*time.Second, 0.25, traceA, 1), ex(100*time.Second, 0.05, traceB, 9), ex(110*time.Second, 0.7, traceC, 3)),
		),
		&otlpmetrics.Metric{Name: "queue_depth", Data: &otlpmetrics.Metric_Gauge{Gauge: &otlpmetrics.Gauge{DataPoints: []*otlpmetrics.NumberDataPoint{
			{TimeUnixNano: ns(time.Minute), Value: &otlpmetrics.NumberDataPoint_AsDouble{AsDouble: 10}},
			{TimeUnixNano: ns(2 * time.Minute), Value: &otlpmetrics.NumberDataPoint_AsDouble{AsDouble: 1500}},
		}}}},
	)
	s1 := metricsOf("checkout", histogram(
		histPoint(2*time.Minute, [4]uint64{10, 80, 10, 0}), // the same point on both indexers
		histPoint(3*time.Minute, [4]uint64{10, 80, 10, 100}, ex(95*time.Second, 0.04, traceB, 9)),
	))
	s1.ResourceMetrics = append(s1.ResourceMetrics, metricsOf("worker", histogram(histPoint(time.Minute, [4]uint64{1, 0, 0, 0}, ex(time.Minute, 0.01, traceA, 4)))).ResourceMetrics...)
	return s0, s1
}

func metricEnv(t *testing.T, metricReaders []metricspb.MetricReaderClient) *env {
	t.Helper()
	s0, s1 := fixture()
	reg := prometheus.NewRegistry()
	cfg := DefaultConfig()
	cfg.ReaderTimeout = 2 * time.Second
	var opts []Option
	if metricReaders != nil {
		opts = append(opts, WithMetricReaders(metricReaders))
	}
	api := New(cfg, startReaders(t, s0, s1), slog.New(slog.DiscardHandler), reg, opts...)
	api.now = func() time.Time { return t0.Add(time.Hour) }
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	return &env{srv: srv, api: api, reg: reg}
}

type metricTracesJSON struct {
	Traces []struct {
		TraceID         string   `json:"traceID"`
		Found           bool     `json:"found"`
		RootServiceName string   `json:"rootServiceName"`
		RootTraceName   string   `json:"rootTraceName"`
		DurationMs      float64  `json:"durationMs"`
		Error           bool     `json:"error"`
		KeptReasons     []string `json:"keptReasons"`
		Exemplar        struct {
			Metric       string            `json:"metric"`
			Labels       map[string]string `json:"labels"`
			Value        float64           `json:"value"`
			Time         string            `json:"time"`
			TimeUnixNano string            `json:"timeUnixNano"`
			SpanID       string            `json:"spanID"`
		} `json:"exemplar"`
	} `json:"traces"`
	Warnings []string `json:"warnings"`
}

func (m metricTracesJSON) ids() []string {
	var out []string
	for _, t := range m.Traces {
		out = append(out, t.TraceID)
	}
	return out
}

func getMetricTraces(t *testing.T, e *env, params url.Values) (int, metricTracesJSON, string) {
	t.Helper()
	code, _, body := e.grafana(t, "/api/v1/metrics/traces?"+params.Encode(), "")
	var out metricTracesJSON
	if code == http.StatusOK {
		require.NoError(t, json.Unmarshal(body, &out), string(body))
	}
	return code, out, string(body)
}

func unixParam(d time.Duration) string { return strconv.FormatInt(t0.Add(d).Unix(), 10) }

func TestMetricTracesRoute(t *testing.T) {
	s0, s1 := metricShards()
	e := metricEnv(t, startMetricReaders(t, s0, s1))
	base := func(kv ...string) url.Values {
		v := url.Values{"metric": {"http.server.duration"}, "start": {unixParam(0)}, "end": {unixParam(time.Hour)}}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}

	code, got, body := getMetricTraces(t, e, base("match", `service.name=checkout http.route="/pay"`))
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, []string{traceAHex, traceBHex, traceCHex}, got.ids(), "errors first, then slowest, then not found")
	a := got.Traces[0]
	require.True(t, a.Found)
	require.True(t, a.Error)
	require.Equal(t, "checkout", a.RootServiceName)
	require.Equal(t, "POST /pay", a.RootTraceName)
	require.InDelta(t, 250, a.DurationMs, 0.001)
	require.ElementsMatch(t, []string{"error", "latency_topn"}, a.KeptReasons)
	require.Equal(t, "http.server.duration", a.Exemplar.Metric)
	require.Equal(t, 0.25, a.Exemplar.Value)
	require.Equal(t, map[string]string{"service.name": "checkout", "http.route": "/pay"}, a.Exemplar.Labels)
	require.Equal(t, strconv.FormatUint(ns(90*time.Second), 10), a.Exemplar.TimeUnixNano)
	require.Equal(t, t0.Add(90*time.Second).Format(time.RFC3339Nano), a.Exemplar.Time)
	require.Equal(t, "000000000000a001", a.Exemplar.SpanID)
	b := got.Traces[1]
	require.True(t, b.Found)
	require.False(t, b.Error)
	require.Equal(t, strconv.FormatUint(ns(100*time.Second), 10), b.Exemplar.TimeUnixNano, "the newest exemplar of a trace linked twice")
	c := got.Traces[2]
	require.False(t, c.Found, "linked but not kept")
	require.Equal(t, 0.7, c.Exemplar.Value)
	require.NotNil(t, c.KeptReasons)
	require.Empty(t, got.Warnings)

	t.Run("json matchers and the worker series", func(t *testing.T) {
		code, got, body := getMetricTraces(t, e, base("match", `{"service.name":"worker"}`))
		require.Equal(t, http.StatusOK, code, body)
		require.Equal(t, []string{traceAHex}, got.ids())
		require.Equal(t, 0.01, got.Traces[0].Exemplar.Value)
	})
	t.Run("no matchers: every series", func(t *testing.T) {
		_, got, _ := getMetricTraces(t, e, base())
		require.Equal(t, []string{traceAHex, traceBHex, traceCHex}, got.ids())
	})
	t.Run("limit", func(t *testing.T) {
		_, got, _ := getMetricTraces(t, e, base("limit", "1", "match", "service.name=checkout"))
		require.Equal(t, []string{traceAHex}, got.ids())
	})
	t.Run("time range", func(t *testing.T) {
		_, got, _ := getMetricTraces(t, e, base("match", "service.name=checkout", "start", unixParam(0), "end", unixParam(95*time.Second)))
		require.Equal(t, []string{traceAHex, traceBHex}, got.ids(), "end is inclusive to the second")
		require.Equal(t, 0.04, got.Traces[1].Exemplar.Value, "only the exemplar in range")
	})
	t.Run("unknown metric", func(t *testing.T) {
		code, got, _ := getMetricTraces(t, e, base("metric", "nope"))
		require.Equal(t, http.StatusOK, code)
		require.NotNil(t, got.Traces)
		require.Empty(t, got.Traces)
	})
	t.Run("bad parameters", func(t *testing.T) {
		for name, params := range map[string]url.Values{
			"no metric":      {"match": {"a=b"}},
			"bad logfmt":     base("match", `a="unterminated`),
			"bad json":       base("match", `{"a":1}`),
			"bad limit":      base("limit", "0"),
			"limit not int":  base("limit", "x"),
			"bad start":      base("start", "yesterday"),
			"end before":     base("start", unixParam(time.Hour), "end", unixParam(0)),
			"negative start": base("start", "-5"),
		} {
			code, _, body := getMetricTraces(t, e, params)
			require.Equal(t, http.StatusBadRequest, code, "%s: %s", name, body)
		}
	})
	t.Run("POST is refused", func(t *testing.T) {
		resp, err := http.Post(e.srv.URL+"/api/v1/metrics/traces?metric=x", "text/plain", nil)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	})
}

func TestMetricTracesPartialAndDisabled(t *testing.T) {
	s0, _ := metricShards()
	e := metricEnv(t, append(startMetricReaders(t, s0), deadMetricReader(t)))
	code, got, body := getMetricTraces(t, e, url.Values{"metric": {"http.server.duration"}, "start": {unixParam(0)}})
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, []string{traceAHex, traceBHex, traceCHex}, got.ids())
	require.Len(t, got.Warnings, 1)
	require.Contains(t, got.Warnings[0], "1 of 2 indexers failed")

	dead := metricEnv(t, []metricspb.MetricReaderClient{deadMetricReader(t)})
	code, _, _ = getMetricTraces(t, dead, url.Values{"metric": {"x"}})
	require.Equal(t, http.StatusServiceUnavailable, code)

	off := metricEnv(t, nil)
	code, _, body = getMetricTraces(t, off, url.Values{"metric": {"x"}})
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "metric readers")
	_, err := off.api.MetricSource().QueryMetric(t.Context(), "x", nil, t0, t0.Add(time.Hour))
	require.Error(t, err)
}

func TestMetricSource(t *testing.T) {
	s0, s1 := metricShards()
	readers := startMetricReaders(t, s0, s1)
	e := metricEnv(t, readers)
	src := e.api.MetricSource()
	checkout := map[string]string{"service.name": "checkout"}

	values := func(pts []alerting.MetricPoint) []float64 {
		var out []float64
		for _, p := range pts {
			out = append(out, math.Round(p.Value*1e6)/1e6)
		}
		return out
	}
	cases := []struct {
		name       string
		metric     string
		matchers   map[string]string
		start, end time.Duration
		want       []float64
		wantErr    string
	}{
		// Interval 1→2 min: 80 in (0.1, 0.5], 10 in (0.5, 1]; p99 rank 89.1
		// is in the (0.5, 1] bucket: 0.5 + 0.5*(9.1/10).
		{"histogram defaults to p99", "http.server.duration", checkout, 90 * time.Second, 150 * time.Second, []float64{0.955}, ""},
		{"p50", "http.server.duration:p50", checkout, 90 * time.Second, 150 * time.Second, []float64{0.1 + 0.4*45.0/80}, ""},
		{"overflow bucket answers the top bound", "http.server.duration:p99", checkout, 150 * time.Second, 200 * time.Second, []float64{1}, ""},
		{"rate per second", "http.server.duration:rate", checkout, 90 * time.Second, 200 * time.Second, []float64{90.0 / 60, 100.0 / 60}, ""},
		{"count", "http.server.duration:count", checkout, 90 * time.Second, 200 * time.Second, []float64{90, 100}, ""},
		{"avg", "http.server.duration:avg", checkout, 90 * time.Second, 150 * time.Second, []float64{0.3}, ""},
		{"first point of a series counts from its start", "http.server.duration:count", map[string]string{"service.name": "worker"}, 0, 90 * time.Second, []float64{1}, ""},
		{"gauge value", "queue_depth", nil, 0, 150 * time.Second, []float64{10, 1500}, ""},
		{"rate of a gauge", "queue_depth:rate", nil, 0, 150 * time.Second, nil, ":rate applies to sums and histograms"},
		{"avg of a gauge", "queue_depth:avg", nil, 0, 150 * time.Second, nil, "histograms only"},
		{"unknown metric", "nope", nil, 0, time.Hour, nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pts, err := src.QueryMetric(t.Context(), tc.metric, tc.matchers, t0.Add(tc.start), t0.Add(tc.end))
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			var want []float64
			for _, w := range tc.want {
				want = append(want, math.Round(w*1e6)/1e6)
			}
			require.Equal(t, want, values(pts))
		})
	}

	pts, err := src.QueryMetric(t.Context(), "http.server.duration", checkout, t0, t0.Add(150*time.Second))
	require.NoError(t, err)
	require.NotEmpty(t, pts)
	require.ElementsMatch(t, []span.TraceID{traceA, traceB, traceC}, pts[len(pts)-1].Traces, "the window's exemplars ride on the newest point")

	// A partial answer is an error: a missing indexer's points would read
	// as a gap.
	partial := metricEnv(t, append(readers, deadMetricReader(t)))
	_, err = partial.api.MetricSource().QueryMetric(t.Context(), "queue_depth", nil, t0, t0.Add(time.Hour))
	require.ErrorContains(t, err, "partial answer")
}

func TestBucketQuantile(t *testing.T) {
	f := func(q float64, bounds, counts []float64, want float64, wantOK bool) {
		t.Helper()
		got, ok := bucketQuantile(q, bounds, counts)
		require.Equal(t, wantOK, ok)
		require.InDelta(t, want, got, 1e-9)
	}
	f(0.5, []float64{1, 2}, []float64{0, 10, 0}, 1.5, true)
	f(0.99, []float64{1, 2}, []float64{100, 0, 0}, 0.99, true)
	f(0.5, []float64{1, 2}, []float64{0, 0, 5}, 2, true)
	f(0.5, []float64{-1, 2}, []float64{10, 0, 0}, -1, true)
	f(0.5, []float64{1, 2}, []float64{0, 0, 0}, 0, false)
	f(0.5, nil, []float64{3}, 0, false)
	f(0.5, []float64{1}, []float64{3}, 0, false)
}
