package receiver

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// recordingPublisher is a TracePublisher that records what it was given, or
// fails with err, or runs fn. It stands in for the Kafka bus, which is tested
// against a real broker in its own package.
type recordingPublisher struct {
	mu      sync.Mutex
	batches []span.TraceBatch
	err     error
	fn      func(ctx context.Context, batches []span.TraceBatch) error
}

func (p *recordingPublisher) PublishTraces(ctx context.Context, batches []span.TraceBatch) error {
	p.mu.Lock()
	err, fn := p.err, p.fn
	p.mu.Unlock()
	if fn != nil {
		if err := fn(ctx, batches); err != nil {
			return err
		}
	}
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range batches {
		// Copy: a publisher must not rely on the batches outliving the call.
		p.batches = append(p.batches, span.TraceBatch{ID: b.ID, Spans: b.Spans, Data: bytes.Clone(b.Data)})
	}
	return nil
}

func (p *recordingPublisher) set(err error, fn func(context.Context, []span.TraceBatch) error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err, p.fn = err, fn
}

func (p *recordingPublisher) take() []span.TraceBatch {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.batches
	p.batches = nil
	return b
}

var _ TracePublisher = (*recordingPublisher)(nil)

type testReceiver struct {
	*Receiver
	pub      *recordingPublisher
	reg      *prometheus.Registry
	grpcAddr string
	httpURL  string
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.ShutdownTimeout = 5 * time.Second
	return cfg
}

// startReceiver runs a receiver on loopback until the test ends.
func startReceiver(t testing.TB, cfg Config) *testReceiver {
	t.Helper()
	pub := &recordingPublisher{}
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := New(cfg, pub, logger, reg)
	require.NoError(t, err)
	runUntilCleanup(t, r)
	g, h := r.Addrs()
	return &testReceiver{Receiver: r, pub: pub, reg: reg, grpcAddr: g.String(), httpURL: "http://" + h.String()}
}

// runUntilCleanup runs r until the test ends, then checks it stopped cleanly.
func runUntilCleanup(t testing.TB, r *Receiver) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}

func dialGRPC(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// newHTTPClient has its own transport so the test can close its idle
// connections (goleak).
func newHTTPClient(t testing.TB) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// exportRaw sends raw bytes as an Export request, bypassing client-side
// marshaling, so malformed requests can be sent.
func exportRaw(ctx context.Context, conn *grpc.ClientConn, body []byte, opts ...grpc.CallOption) (*coltracepb.ExportTraceServiceResponse, error) {
	resp := &coltracepb.ExportTraceServiceResponse{}
	opts = append(opts, grpc.ForceCodecV2(rawCodec{}))
	err := conn.Invoke(ctx, "/"+traceServiceName+"/Export", &rawRequest{buf: mem.SliceBuffer(body)}, resp, opts...)
	return resp, err
}

// testTraceID and testSpanID make distinct non-zero IDs.
func testTraceID(i int) []byte {
	id := make([]byte, 16)
	id[0], id[15] = 0xab, byte(i+1)
	id[14] = byte((i + 1) >> 8)
	return id
}

func testSpanID(i int) []byte {
	id := make([]byte, 8)
	id[0], id[7], id[6] = 0xcd, byte(i+1), byte((i+1)>>8)
	return id
}

// buildRequest makes an ExportTraceServiceRequest with spansPerTrace spans
// for each of traces trace IDs, interleaved as a real batch would be.
func buildRequest(traces, spansPerTrace int) *coltracepb.ExportTraceServiceRequest {
	ss := &tracepb.ScopeSpans{Scope: &commonpb.InstrumentationScope{Name: "test", Version: "1.0"}}
	n := 0
	for s := range spansPerTrace {
		for tr := range traces {
			ss.Spans = append(ss.Spans, &tracepb.Span{
				TraceId:           testTraceID(tr),
				SpanId:            testSpanID(n),
				Name:              fmt.Sprintf("op-%d", s%7),
				Kind:              tracepb.Span_SPAN_KIND_SERVER,
				StartTimeUnixNano: uint64(1_700_000_000_000_000_000 + n*1000),
				EndTimeUnixNano:   uint64(1_700_000_000_000_000_000 + n*1000 + 500),
				Attributes: []*commonpb.KeyValue{
					{Key: "http.method", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "GET"}}},
					{Key: "http.route", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "/api/v1/items/{id}"}}},
					{Key: "http.status_code", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: 200}}},
				},
				Status: &tracepb.Status{Code: tracepb.Status_STATUS_CODE_OK},
			})
			n++
		}
	}
	return &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{
			{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "checkout"}}},
		}},
		ScopeSpans: []*tracepb.ScopeSpans{ss},
	}}}
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	require.NoError(t, err)
	return b
}

func gzipBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, err := zw.Write(b)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	return buf.Bytes()
}

// checkBatches asserts every batch holds only spans of its own trace ID,
// that its span count is right, and returns span ID → trace ID for all spans.
func checkBatches(t testing.TB, batches []span.TraceBatch) map[string]string {
	t.Helper()
	seen := map[string]string{}
	for _, b := range batches {
		var td tracepb.TracesData
		require.NoError(t, proto.Unmarshal(b.Data, &td))
		n := 0
		for _, sp := range span.FromTracesData(&td) {
			require.Equal(t, b.ID[:], sp.TraceId, "span in the wrong batch")
			sid := hex.EncodeToString(sp.SpanId)
			_, dup := seen[sid]
			require.False(t, dup, "span %s delivered twice", sid)
			seen[sid] = b.ID.String()
			n++
		}
		require.Equal(t, b.Spans, n)
	}
	return seen
}

func TestConfig(t *testing.T) {
	f := func(name string, mutate func(*Config), wantErr string) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			cfg := DefaultConfig()
			mutate(&cfg)
			err := cfg.Validate()
			if wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, wantErr)
		})
	}
	f("defaults", func(*Config) {}, "")
	f("zero max bytes", func(c *Config) { c.MaxRequestBytes = 0 }, "otlp-max-request-bytes")
	f("zero inflight", func(c *Config) { c.MaxInflightRequests = 0 }, "otlp-max-inflight-requests")
	f("zero retry", func(c *Config) { c.RetryAfter = 0 }, "otlp-retry-after")
	f("same addr", func(c *Config) { c.HTTPAddr = c.GRPCAddr }, "separate ports")
	f("disabled listeners", func(c *Config) { c.GRPCAddr, c.HTTPAddr = "", "" }, "")
}

func TestRegisterFlags(t *testing.T) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("collector", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	require.NoError(t, fs.Parse([]string{
		"-otlp-grpc-addr=0.0.0.0:14317", "-otlp-http-addr=", "-otlp-max-request-bytes=1024",
		"-otlp-max-inflight-requests=8", "-otlp-retry-after=5s", "-otlp-shutdown-timeout=1s",
	}))
	require.Equal(t, Config{GRPCAddr: "0.0.0.0:14317", HTTPAddr: "", MaxRequestBytes: 1024,
		MaxInflightRequests: 8, RetryAfter: 5 * time.Second, ShutdownTimeout: time.Second}, cfg)
	require.NoError(t, cfg.Validate())
}

func TestRetryAfterSeconds(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Millisecond:        "1",
		time.Second:             "1",
		1500 * time.Millisecond: "2",
		30 * time.Second:        "30",
	} {
		require.Equal(t, want, retryAfterSeconds(d), d.String())
	}
}

func TestNewReportsListenConflict(t *testing.T) {
	r := startReceiver(t, testConfig())
	cfg := testConfig()
	cfg.GRPCAddr = r.grpcAddr
	_, err := New(cfg, &recordingPublisher{}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	require.ErrorContains(t, err, "listen otlp grpc")
}

func TestGracefulShutdown(t *testing.T) {
	pub := &recordingPublisher{}
	entered, release := make(chan struct{}), make(chan struct{})
	pub.set(nil, func(ctx context.Context, _ []span.TraceBatch) error {
		close(entered)
		<-release
		return nil
	})
	r, err := New(testConfig(), pub, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(ctx) }()

	g, _ := r.Addrs()
	conn := dialGRPC(t, g.String())
	exportDone := make(chan error, 1)
	go func() {
		_, err := coltracepb.NewTraceServiceClient(conn).Export(context.Background(), buildRequest(2, 2))
		exportDone <- err
	}()
	<-entered
	cancel() // shut down while the request waits on "Kafka"

	select {
	case <-runDone:
		t.Fatal("Run returned before the in-flight request finished")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	require.NoError(t, <-exportDone, "in-flight request must complete during graceful shutdown")
	require.NoError(t, <-runDone)
	require.Len(t, pub.take(), 2)
}

func TestShutdownTimeoutCutsOffStuckRequests(t *testing.T) {
	pub := &recordingPublisher{}
	entered := make(chan struct{})
	pub.set(nil, func(ctx context.Context, _ []span.TraceBatch) error {
		close(entered)
		<-ctx.Done() // a publisher that only gives up with its context
		return ctx.Err()
	})
	cfg := testConfig()
	cfg.ShutdownTimeout = 200 * time.Millisecond
	r, err := New(cfg, pub, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(ctx) }()

	_, h := r.Addrs()
	client := newHTTPClient(t)
	exportDone := make(chan error, 1)
	go func() {
		resp, err := client.Post("http://"+h.String()+"/v1/traces", contentTypeProto, bytes.NewReader(marshal(t, buildRequest(1, 1))))
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				err = fmt.Errorf("stuck request reported success")
			}
		}
		exportDone <- err
	}()
	<-entered
	start := time.Now()
	cancel()
	require.NoError(t, <-runDone)
	require.Less(t, time.Since(start), 3*time.Second)
	// The client sees a failure (connection closed), never a success.
	require.Error(t, <-exportDone)
}

func TestMetricsRegistered(t *testing.T) {
	r := startReceiver(t, testConfig())
	conn := dialGRPC(t, r.grpcAddr)
	_, err := coltracepb.NewTraceServiceClient(conn).Export(context.Background(), buildRequest(3, 4))
	require.NoError(t, err)
	require.Equal(t, 12.0, metricValue(r.metrics.spansReceived.WithLabelValues(transportGRPC)))
	require.Equal(t, 12.0, metricValue(r.metrics.spansAccepted.WithLabelValues(transportGRPC)))
	require.Equal(t, 1.0, metricValue(r.metrics.requests.WithLabelValues(signalTraces, transportGRPC, "OK")))
	families, err := r.reg.Gather()
	require.NoError(t, err)
	var names []string
	for _, mf := range families {
		names = append(names, mf.GetName())
	}
	require.Subset(t, names, []string{
		"threadline_receiver_spans_received_total", "threadline_receiver_spans_accepted_total",
		"threadline_receiver_spans_refused_total", "threadline_receiver_spans_repaired_total",
		"threadline_receiver_requests_total", "threadline_receiver_request_duration_seconds",
		"threadline_receiver_inflight_requests",
	})
	require.Equal(t, 0.0, metricValue(r.metrics.inflight))
}

// metricValue reads a counter or gauge.
func metricValue(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}
