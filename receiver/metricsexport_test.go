package receiver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	otlpmetrics "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// recordingMetricsPublisher keeps copies of what it was asked to publish.
type recordingMetricsPublisher struct {
	mu     sync.Mutex
	data   [][]byte
	points []int
	err    error
}

func (p *recordingMetricsPublisher) PublishMetrics(_ context.Context, data []byte, points int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.data = append(p.data, bytes.Clone(data)) // data need not outlive the call
	p.points = append(p.points, points)
	return nil
}

func (p *recordingMetricsPublisher) setErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err = err
}

// take returns the published requests decoded, and their point counts.
func (p *recordingMetricsPublisher) take(t testing.TB) ([]*colmetricspb.ExportMetricsServiceRequest, []int) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*colmetricspb.ExportMetricsServiceRequest
	for _, d := range p.data {
		var req colmetricspb.ExportMetricsServiceRequest
		require.NoError(t, proto.Unmarshal(d, &req))
		out = append(out, &req)
	}
	pts := p.points
	p.data, p.points = nil, nil
	return out, pts
}

var _ MetricsPublisher = (*recordingMetricsPublisher)(nil)

type metricsTestReceiver struct {
	*Receiver
	pub      *recordingMetricsPublisher
	reg      *prometheus.Registry
	grpcAddr string
	httpURL  string
}

func startMetricsReceiver(t testing.TB) *metricsTestReceiver {
	t.Helper()
	pub := &recordingMetricsPublisher{}
	reg := prometheus.NewRegistry()
	r, err := New(testConfig(), &recordingPublisher{}, slog.New(slog.NewTextHandler(io.Discard, nil)), reg, WithMetrics(pub))
	require.NoError(t, err)
	runUntilCleanup(t, r)
	g, h := r.Addrs()
	return &metricsTestReceiver{Receiver: r, pub: pub, reg: reg, grpcAddr: g.String(), httpURL: "http://" + h.String()}
}

// TestMetricsSDKExporterExemplars records a histogram inside sampled spans
// with the real SDK (trace-based exemplar filter) and exports it with the
// real OTLP/gRPC metric exporter: the published request carries exemplars
// whose trace and span IDs are the spans'.
func TestMetricsSDKExporterExemplars(t *testing.T) {
	r := startMetricsReceiver(t)
	exp, err := otlpmetricgrpc.New(t.Context(), otlpmetricgrpc.WithEndpoint(r.grpcAddr), otlpmetricgrpc.WithInsecure(),
		otlpmetricgrpc.WithRetry(otlpmetricgrpc.RetryConfig{Enabled: false}))
	require.NoError(t, err)
	res := resource.NewSchemaless(semconv.ServiceName("checkout"))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res),
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(time.Hour))),
		sdkmetric.WithExemplarFilter(exemplar.TraceBasedFilter))
	tp := sdktrace.NewTracerProvider()
	hist, err := mp.Meter("receiver-test").Float64Histogram("http.server.duration", metric.WithUnit("s"))
	require.NoError(t, err)

	ctx, sp := tp.Tracer("receiver-test").Start(context.Background(), "GET /pay")
	hist.Record(ctx, 0.42, metric.WithAttributes(attribute.String("http.route", "/pay")))
	sp.End()
	// Outside a span: counted, but no exemplar with a trace.
	hist.Record(context.Background(), 0.01, metric.WithAttributes(attribute.String("http.route", "/pay")))

	// Shutdown flushes once.
	require.NoError(t, mp.Shutdown(t.Context()))
	require.NoError(t, tp.Shutdown(t.Context()))

	reqs, points := r.pub.take(t)
	require.Len(t, reqs, 1)
	require.Equal(t, []int{1}, points)
	var found []*otlpmetrics.Exemplar
	for _, rm := range reqs[0].GetResourceMetrics() {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				require.Equal(t, "http.server.duration", m.GetName())
				dp := m.GetHistogram().GetDataPoints()
				require.Len(t, dp, 1)
				require.Equal(t, uint64(2), dp[0].GetCount())
				for _, e := range dp[0].GetExemplars() {
					if len(e.GetTraceId()) > 0 {
						found = append(found, e)
					}
				}
			}
		}
	}
	require.Len(t, found, 1)
	sc := sp.SpanContext()
	tid, sid := sc.TraceID(), sc.SpanID()
	require.Equal(t, tid[:], found[0].GetTraceId())
	require.Equal(t, sid[:], found[0].GetSpanId())
	require.Equal(t, 0.42, found[0].GetAsDouble())
}

func hexIDs(trace, spanID string) string {
	return `"traceId":"` + trace + `","spanId":"` + spanID + `"`
}

func TestMetricsHTTPAndValidation(t *testing.T) {
	r := startMetricsReceiver(t)
	client := newHTTPClient(t)
	goodTrace := []byte{1, 15: 1}
	goodSpan := []byte{7: 2}
	req := func(name string, exemplars ...*otlpmetrics.Exemplar) *colmetricspb.ExportMetricsServiceRequest {
		return &colmetricspb.ExportMetricsServiceRequest{ResourceMetrics: []*otlpmetrics.ResourceMetrics{{ScopeMetrics: []*otlpmetrics.ScopeMetrics{{
			Metrics: []*otlpmetrics.Metric{
				{Name: "queue_depth", Data: &otlpmetrics.Metric_Gauge{Gauge: &otlpmetrics.Gauge{DataPoints: []*otlpmetrics.NumberDataPoint{
					{TimeUnixNano: 1, Value: &otlpmetrics.NumberDataPoint_AsInt{AsInt: 3}, Exemplars: exemplars},
					{TimeUnixNano: 2, Value: &otlpmetrics.NumberDataPoint_AsInt{AsInt: 4},
						Attributes: []*commonpb.KeyValue{{Key: "q", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "x"}}}}},
				}}}},
				{Name: name, Data: &otlpmetrics.Metric_Sum{Sum: &otlpmetrics.Sum{DataPoints: []*otlpmetrics.NumberDataPoint{{TimeUnixNano: 1}}}}},
			},
		}}}}}
	}
	post := func(contentType string, body []byte) (int, []byte) {
		hreq, err := http.NewRequest(http.MethodPost, r.httpURL+"/v1/metrics", bytes.NewReader(body))
		require.NoError(t, err)
		hreq.Header.Set("Content-Type", contentType)
		resp, err := client.Do(hreq)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, b
	}
	decode := func(b []byte) *colmetricspb.ExportMetricsServiceResponse {
		var out colmetricspb.ExportMetricsServiceResponse
		require.NoError(t, proto.Unmarshal(b, &out))
		return &out
	}

	cases := []struct {
		name          string
		req           *colmetricspb.ExportMetricsServiceRequest
		wantPoints    int
		wantRejected  int64
		wantMsg       string
		wantExemplars int
	}{
		{"all good", req("orders", &otlpmetrics.Exemplar{TraceId: goodTrace, SpanId: goodSpan}), 3, 0, "", 1},
		{"nameless metric rejected", req(""), 2, 1, "1 data points rejected", 0},
		{"bad trace ID drops the exemplar only", req("orders",
			&otlpmetrics.Exemplar{TraceId: []byte{1, 2, 3}}, &otlpmetrics.Exemplar{TraceId: goodTrace}), 3, 0, "dropped 1 exemplars", 1},
		{"bad span ID and zero trace ID", req("orders",
			&otlpmetrics.Exemplar{TraceId: goodTrace, SpanId: []byte{1}}, &otlpmetrics.Exemplar{TraceId: make([]byte, 16)}), 3, 0, "dropped 2 exemplars", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := post(contentTypeProto, marshal(t, tc.req))
			require.Equal(t, http.StatusOK, code, string(body))
			resp := decode(body)
			require.Equal(t, tc.wantRejected, resp.GetPartialSuccess().GetRejectedDataPoints())
			if tc.wantMsg == "" {
				require.Nil(t, resp.GetPartialSuccess())
			} else {
				require.Contains(t, resp.GetPartialSuccess().GetErrorMessage(), tc.wantMsg)
			}
			reqs, points := r.pub.take(t)
			require.Equal(t, []int{tc.wantPoints}, points)
			n := 0
			for _, m := range reqs[0].GetResourceMetrics()[0].GetScopeMetrics()[0].GetMetrics() {
				require.NotEmpty(t, m.GetName())
				for _, dp := range m.GetGauge().GetDataPoints() {
					n += len(dp.GetExemplars())
				}
			}
			require.Equal(t, tc.wantExemplars, n)
		})
	}

	t.Run("json with hex exemplar IDs", func(t *testing.T) {
		body := `{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"w"}}]},
			"scopeMetrics":[{"metrics":[{"name":"queue_depth","gauge":{"dataPoints":[{"timeUnixNano":"5","asDouble":2.5,
			"exemplars":[{"timeUnixNano":"5","asDouble":2.5,` + hexIDs("0102030405060708090a0b0c0d0e0f10", "0102030405060708") + `}]}]}}]}]}],"unknownField":1}`
		code, b := post(contentTypeJSON, []byte(body))
		require.Equal(t, http.StatusOK, code, string(b))
		var resp colmetricspb.ExportMetricsServiceResponse
		require.NoError(t, protojson.Unmarshal(b, &resp))
		reqs, points := r.pub.take(t)
		require.Equal(t, []int{1}, points)
		ex := reqs[0].GetResourceMetrics()[0].GetScopeMetrics()[0].GetMetrics()[0].GetGauge().GetDataPoints()[0].GetExemplars()[0]
		require.Equal(t, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, ex.GetTraceId())
		require.Equal(t, []byte{1, 2, 3, 4, 5, 6, 7, 8}, ex.GetSpanId())
	})

	t.Run("malformed", func(t *testing.T) {
		code, _ := post(contentTypeProto, []byte{0xff, 0xff, 0xff})
		require.Equal(t, http.StatusBadRequest, code)
		code, _ = post(contentTypeJSON, []byte(`{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"x","gauge":{"dataPoints":[{"exemplars":[{`+hexIDs("zz", "01")+`}]}]}}]}]}]}`))
		require.Equal(t, http.StatusBadRequest, code)
		reqs, _ := r.pub.take(t)
		require.Empty(t, reqs)
	})

	t.Run("empty request publishes nothing", func(t *testing.T) {
		code, _ := post(contentTypeProto, nil)
		require.Equal(t, http.StatusOK, code)
		reqs, _ := r.pub.take(t)
		require.Empty(t, reqs)
	})

	t.Run("publish failures are retryable", func(t *testing.T) {
		r.pub.setErr(errors.New("broker down"))
		code, _ := post(contentTypeProto, marshal(t, req("orders")))
		require.Equal(t, http.StatusServiceUnavailable, code)
		r.pub.setErr(errors.Join(ErrBackpressure))
		code, _ = post(contentTypeProto, marshal(t, req("orders")))
		require.Equal(t, http.StatusTooManyRequests, code)

		conn := dialGRPC(t, r.grpcAddr)
		_, err := colmetricspb.NewMetricsServiceClient(conn).Export(t.Context(), req("orders"))
		require.Equal(t, codes.ResourceExhausted, status.Code(err))
		r.pub.setErr(nil)
		resp, err := colmetricspb.NewMetricsServiceClient(conn).Export(t.Context(), req(""))
		require.NoError(t, err)
		require.Equal(t, int64(1), resp.GetPartialSuccess().GetRejectedDataPoints())
	})

	mfs, err := r.reg.Gather()
	require.NoError(t, err)
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	require.True(t, got["threadline_receiver_metric_points_received_total"])
	require.True(t, got["threadline_receiver_exemplars_dropped_total"])
}

func TestMetricsDisabledWithoutOption(t *testing.T) {
	r := startReceiver(t, testConfig())
	conn := dialGRPC(t, r.grpcAddr)
	_, err := colmetricspb.NewMetricsServiceClient(conn).Export(t.Context(), &colmetricspb.ExportMetricsServiceRequest{})
	require.Equal(t, codes.Unimplemented, status.Code(err))
	resp, err := newHTTPClient(t).Post(r.httpURL+"/v1/metrics", contentTypeProto, nil)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	_, err = New(testConfig(), &recordingPublisher{}, nil, nil, WithMetrics(nil))
	require.ErrorContains(t, err, "nil MetricsPublisher")
}

func FuzzMetricsExport(f *testing.F) {
	f.Add(marshal(f, &colmetricspb.ExportMetricsServiceRequest{ResourceMetrics: []*otlpmetrics.ResourceMetrics{{ScopeMetrics: []*otlpmetrics.ScopeMetrics{{
		Metrics: []*otlpmetrics.Metric{{Name: "x", Data: &otlpmetrics.Metric_Histogram{Histogram: &otlpmetrics.Histogram{DataPoints: []*otlpmetrics.HistogramDataPoint{
			{Count: 1, Exemplars: []*otlpmetrics.Exemplar{{TraceId: []byte{1, 15: 1}}, {TraceId: []byte{1}}}}}}}}},
	}}}}}))
	f.Add([]byte{0x0a, 0x02, 0x12, 0x00})
	f.Add([]byte{})
	pub := &recordingMetricsPublisher{}
	r, err := New(testConfig(), &recordingPublisher{}, nil, nil, WithMetrics(pub))
	require.NoError(f, err)
	f.Cleanup(r.Close)
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, err := r.exportMetrics(context.Background(), transportHTTP, data)
		if err != nil {
			var ee *exportError
			require.ErrorAs(t, err, &ee)
			return
		}
		require.NotNil(t, resp)
		reqs, points := pub.take(t)
		for i, req := range reqs {
			c := validateMetrics(req)
			require.Equal(t, points[i], c.points, "a published request is valid as is")
			require.Zero(t, c.rejected+c.dropped)
		}
	})
}
