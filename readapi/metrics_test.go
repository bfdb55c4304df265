package readapi

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	sdkresource "go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	otlpmetrics "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/metricstore"
	metricspb "github.com/threadline/threadline/proto/metrics/v1"
	"github.com/threadline/threadline/receiver"
	"github.com/threadline/threadline/span"
)

// kafkaStandIn keeps what the collector would produce, as the indexer would
// consume it: one MetricsData record per request.
type kafkaStandIn struct {
	mu      sync.Mutex
	records [][]byte
}

func (k *kafkaStandIn) PublishMetrics(_ context.Context, data []byte, _ int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.records = append(k.records, bytes.Clone(data))
	return nil
}

// nopTraces is a TracePublisher for a receiver that is only sent metrics.
type nopTraces struct{}

func (nopTraces) PublishTraces(context.Context, []span.TraceBatch) error { return nil }

func serveMetrics(t *testing.T, st MetricStore) metricspb.MetricReaderClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	metricspb.RegisterMetricReaderServer(srv, NewMetrics(st, nil))
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
		<-done
	})
	return metricspb.NewMetricReaderClient(conn)
}

// TestMetricsEndToEnd: the OTel SDK records a histogram inside a sampled
// span and exports it over OTLP/gRPC to the real receiver; the published
// record is decoded and written to a real metric store as the indexer
// does, twice (a Kafka replay); QueryExemplars over gRPC answers the span's
// trace and span IDs, once.
func TestMetricsEndToEnd(t *testing.T) {
	kafka := &kafkaStandIn{}
	cfg := receiver.DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	rcv, err := receiver.New(cfg, nopTraces{}, nil, nil, receiver.WithMetrics(kafka))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rcv.Run(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	grpcAddr, _ := rcv.Addrs()

	exp, err := otlpmetricgrpc.New(t.Context(), otlpmetricgrpc.WithEndpoint(grpcAddr.String()), otlpmetricgrpc.WithInsecure(),
		otlpmetricgrpc.WithRetry(otlpmetricgrpc.RetryConfig{Enabled: false}))
	require.NoError(t, err)
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(sdkresource.NewSchemaless(semconv.ServiceName("checkout"))),
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(time.Hour))),
		sdkmetric.WithExemplarFilter(exemplar.TraceBasedFilter))
	tp := sdktrace.NewTracerProvider()
	hist, err := mp.Meter("readapi-test").Float64Histogram("http.server.duration", metric.WithUnit("s"))
	require.NoError(t, err)
	before := time.Now()
	sctx, sp := tp.Tracer("readapi-test").Start(context.Background(), "POST /pay")
	hist.Record(sctx, 1.5, metric.WithAttributes(attribute.String("http.route", "/pay")))
	sp.End()
	require.NoError(t, mp.Shutdown(t.Context()))
	require.NoError(t, tp.Shutdown(t.Context()))

	st, err := metricstore.Open(t.TempDir(), nil, nil, metricstore.DefaultOptions())
	require.NoError(t, err)
	defer func() { require.NoError(t, st.Close()) }()
	kafka.mu.Lock()
	records := kafka.records
	kafka.mu.Unlock()
	require.Len(t, records, 1)
	for range 2 { // the second write is a replay
		var md otlpmetrics.MetricsData
		require.NoError(t, proto.Unmarshal(records[0], &md))
		require.NoError(t, st.Write(t.Context(), &md))
	}

	client := serveMetrics(t, st)
	resp, err := client.QueryExemplars(t.Context(), &metricspb.QueryExemplarsRequest{
		Metric: "http.server.duration", Matchers: map[string]string{"service.name": "checkout", "http.route": "/pay"},
		StartUnixNano: before.Add(-time.Second).UnixNano(), EndUnixNano: time.Now().Add(time.Second).UnixNano(),
	})
	require.NoError(t, err)
	require.Len(t, resp.GetExemplars(), 1, "a replay does not duplicate the link")
	e := resp.GetExemplars()[0]
	tid, sid := sp.SpanContext().TraceID(), sp.SpanContext().SpanID()
	require.Equal(t, tid[:], e.GetTraceId())
	require.Equal(t, sid[:], e.GetSpanId())
	require.Equal(t, 1.5, e.GetValue())
	require.Equal(t, "http.server.duration", e.GetMetric())
	require.True(t, proto.Equal(&metricspb.Label{Name: "http.route", Value: "/pay"}, e.GetLabels()[0]))

	series, err := client.QuerySeries(t.Context(), &metricspb.QuerySeriesRequest{Metric: "http.server.duration"})
	require.NoError(t, err)
	require.Len(t, series.GetSeries(), 1)
	s := series.GetSeries()[0]
	require.Equal(t, metricspb.Kind_KIND_HISTOGRAM, s.GetKind())
	require.Equal(t, metricspb.Temporality_TEMPORALITY_CUMULATIVE, s.GetTemporality())
	require.Equal(t, "s", s.GetUnit())
	require.Len(t, s.GetPoints(), 1)
	require.Equal(t, uint64(1), s.GetPoints()[0].GetCount())
	require.Len(t, s.GetPoints()[0].GetBucketCounts(), len(s.GetPoints()[0].GetExplicitBounds())+1)

	none, err := client.QueryExemplars(t.Context(), &metricspb.QueryExemplarsRequest{Metric: "http.server.duration",
		Matchers: map[string]string{"service.name": "payments"}})
	require.NoError(t, err)
	require.Empty(t, none.GetExemplars())

	_, err = client.QuerySeries(t.Context(), &metricspb.QuerySeriesRequest{})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	_, err = client.QueryExemplars(t.Context(), &metricspb.QueryExemplarsRequest{})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
}
