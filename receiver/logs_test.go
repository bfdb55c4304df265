package receiver

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/contrib/bridges/otelslog"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploghttp"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

// recordingLogsPublisher is recordingPublisher for logs.
type recordingLogsPublisher struct {
	mu      sync.Mutex
	batches []span.LogBatch
	err     error
}

func (p *recordingLogsPublisher) PublishLogs(_ context.Context, batches []span.LogBatch) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	for _, b := range batches {
		b.Data = bytes.Clone(b.Data) // batches need not outlive the call
		p.batches = append(p.batches, b)
	}
	return nil
}

func (p *recordingLogsPublisher) setErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err = err
}

func (p *recordingLogsPublisher) take() []span.LogBatch {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.batches
	p.batches = nil
	return b
}

var _ LogsPublisher = (*recordingLogsPublisher)(nil)

type logsTestReceiver struct {
	*Receiver
	logs     *recordingLogsPublisher
	grpcAddr string
	httpURL  string
}

// startLogsReceiver runs a receiver with logs enabled until the test ends.
func startLogsReceiver(t testing.TB, cfg Config) *logsTestReceiver {
	t.Helper()
	logs := &recordingLogsPublisher{}
	r, err := New(cfg, &recordingPublisher{}, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry(), WithLogs(logs))
	require.NoError(t, err)
	runUntilCleanup(t, r)
	g, h := r.Addrs()
	return &logsTestReceiver{Receiver: r, logs: logs, grpcAddr: g.String(), httpURL: "http://" + h.String()}
}

// logRecord is what a test checks of one received log record.
type logRecord struct {
	traceID, spanID string
	severity        string
}

// collectLogs decodes every batch, checks each record sits in the batch of
// its own trace ID (or the no-trace batch) and that no trace ID has two
// batches, and returns body → record.
func collectLogs(t testing.TB, batches []span.LogBatch) map[string]logRecord {
	t.Helper()
	out := map[string]logRecord{}
	seen := map[span.TraceID]bool{}
	for _, b := range batches {
		require.False(t, seen[b.ID], "trace %s (has trace %v) in two batches", b.ID, b.HasTrace)
		seen[b.ID] = true
		ld, err := span.DecodeLogs(b.Data)
		require.NoError(t, err)
		n := 0
		for _, rl := range ld.ResourceLogs {
			for _, sl := range rl.ScopeLogs {
				for _, lr := range sl.LogRecords {
					n++
					if b.HasTrace {
						require.Equal(t, b.ID[:], lr.TraceId, "record in the wrong batch")
					} else {
						require.True(t, len(lr.TraceId) == 0 || bytes.Equal(lr.TraceId, make([]byte, 16)), "traced record in the no-trace batch")
					}
					body := lr.GetBody().GetStringValue()
					_, dup := out[body]
					require.False(t, dup, "record %q delivered twice", body)
					out[body] = logRecord{hex.EncodeToString(lr.TraceId), hex.EncodeToString(lr.SpanId), lr.SeverityText}
				}
			}
		}
		require.Equal(t, b.Records, n)
	}
	return out
}

// TestLogsSDKExporters emits slog records through the OpenTelemetry slog
// bridge and the real OTLP log exporters, inside spans and outside any span,
// and checks they arrive batched by trace ID with their IDs intact.
func TestLogsSDKExporters(t *testing.T) {
	r := startLogsReceiver(t, testConfig())
	u, err := url.Parse(r.httpURL)
	require.NoError(t, err)

	newExporter := map[string]func(t *testing.T) sdklog.Exporter{
		"grpc": func(t *testing.T) sdklog.Exporter {
			exp, err := otlploggrpc.New(context.Background(), otlploggrpc.WithEndpoint(r.grpcAddr),
				otlploggrpc.WithInsecure(), otlploggrpc.WithRetry(otlploggrpc.RetryConfig{Enabled: false}))
			require.NoError(t, err)
			return exp
		},
		"grpc gzip": func(t *testing.T) sdklog.Exporter {
			exp, err := otlploggrpc.New(context.Background(), otlploggrpc.WithEndpoint(r.grpcAddr),
				otlploggrpc.WithInsecure(), otlploggrpc.WithCompressor("gzip"),
				otlploggrpc.WithRetry(otlploggrpc.RetryConfig{Enabled: false}))
			require.NoError(t, err)
			return exp
		},
		"http protobuf": func(t *testing.T) sdklog.Exporter {
			exp, err := otlploghttp.New(context.Background(), otlploghttp.WithEndpoint(u.Host), otlploghttp.WithInsecure(),
				otlploghttp.WithHTTPClient(newHTTPClient(t)), otlploghttp.WithRetry(otlploghttp.RetryConfig{Enabled: false}))
			require.NoError(t, err)
			return exp
		},
		"http protobuf gzip": func(t *testing.T) sdklog.Exporter {
			exp, err := otlploghttp.New(context.Background(), otlploghttp.WithEndpoint(u.Host), otlploghttp.WithInsecure(),
				otlploghttp.WithCompression(otlploghttp.GzipCompression),
				otlploghttp.WithHTTPClient(newHTTPClient(t)), otlploghttp.WithRetry(otlploghttp.RetryConfig{Enabled: false}))
			require.NoError(t, err)
			return exp
		},
	}
	for name, mk := range newExporter {
		t.Run(name, func(t *testing.T) {
			lp := sdklog.NewLoggerProvider(sdklog.WithProcessor(sdklog.NewBatchProcessor(mk(t),
				sdklog.WithExportInterval(time.Hour), sdklog.WithExportMaxBatchSize(1000))))
			logger := slog.New(otelslog.NewHandler("receiver-test", otelslog.WithLoggerProvider(lp)))
			tp := sdktrace.NewTracerProvider()
			tracer := tp.Tracer("receiver-test")

			const traces, children = 4, 3
			want := map[string]logRecord{}
			for i := range traces {
				ctx, root := tracer.Start(context.Background(), fmt.Sprintf("root-%d", i))
				body := fmt.Sprintf("root %d", i)
				logger.InfoContext(ctx, body, "trace", i)
				sc := root.SpanContext()
				want[body] = logRecord{sc.TraceID().String(), sc.SpanID().String(), "INFO"}
				for j := range children {
					cctx, child := tracer.Start(ctx, fmt.Sprintf("child-%d", j))
					body := fmt.Sprintf("child %d of %d", j, i)
					logger.WarnContext(cctx, body, "child", j)
					csc := child.SpanContext()
					want[body] = logRecord{csc.TraceID().String(), csc.SpanID().String(), "WARN"}
					child.End()
				}
				root.End()
			}
			// Outside any span: no trace ID, one shared batch.
			logger.Error("no span at all")
			logger.InfoContext(context.Background(), "background context")
			want["no span at all"] = logRecord{"", "", "ERROR"}
			want["background context"] = logRecord{"", "", "INFO"}

			require.NoError(t, lp.ForceFlush(context.Background()))
			require.NoError(t, lp.Shutdown(context.Background()))
			require.NoError(t, tp.Shutdown(context.Background()))

			batches := r.logs.take()
			require.Len(t, batches, traces+1, "one batch per trace ID and one without")
			noTrace := 0
			for _, b := range batches {
				if !b.HasTrace {
					noTrace++
					require.Equal(t, 2, b.Records)
					require.True(t, b.ID.IsZero())
				} else {
					require.Equal(t, 1+children, b.Records)
				}
			}
			require.Equal(t, 1, noTrace)
			require.Equal(t, want, collectLogs(t, batches))
		})
	}
}

// buildLogsRequest has perTrace records for each of traces trace IDs and
// noTrace records without one, interleaved.
func buildLogsRequest(traces, perTrace, noTrace int) *collogspb.ExportLogsServiceRequest {
	sl := &logspb.ScopeLogs{Scope: &commonpb.InstrumentationScope{Name: "test"}}
	n := 0
	add := func(trace, spanID []byte) {
		sl.LogRecords = append(sl.LogRecords, &logspb.LogRecord{
			TimeUnixNano: uint64(1_700_000_000_000_000_000 + n), SeverityNumber: logspb.SeverityNumber_SEVERITY_NUMBER_INFO,
			Body:    &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: fmt.Sprintf("line %d", n)}},
			TraceId: trace, SpanId: spanID,
		})
		n++
	}
	for i := range max(perTrace, noTrace) {
		for tr := range traces {
			if i < perTrace {
				add(testTraceID(tr), testSpanID(n))
			}
		}
		if i < noTrace {
			add(nil, nil)
		}
	}
	return &collogspb.ExportLogsServiceRequest{ResourceLogs: []*logspb.ResourceLogs{{ScopeLogs: []*logspb.ScopeLogs{sl}}}}
}

// exportRawLogs sends raw bytes as a LogsService Export request.
func exportRawLogs(ctx context.Context, conn *grpc.ClientConn, body []byte) (*collogspb.ExportLogsServiceResponse, error) {
	resp := &collogspb.ExportLogsServiceResponse{}
	err := conn.Invoke(ctx, "/"+logsServiceName+"/Export", &rawRequest{buf: mem.SliceBuffer(body)}, resp, grpc.ForceCodecV2(rawCodec{}))
	return resp, err
}

// TestLogsBadInput sends each case over gRPC and HTTP (JSON cases over HTTP
// only) and checks the answer, the partial success and what was published.
func TestLogsBadInput(t *testing.T) {
	cfg := testConfig()
	cfg.RetryAfter = 1500 * time.Millisecond
	r := startLogsReceiver(t, cfg)
	conn := dialGRPC(t, r.grpcAddr)
	client := newHTTPClient(t)

	good := marshal(t, buildLogsRequest(2, 2, 1))
	zeroLen := buildLogsRequest(1, 2, 0)
	zeroLen.ResourceLogs[0].ScopeLogs[0].LogRecords[1].TraceId = []byte{}
	zeroLen.ResourceLogs[0].ScopeLogs[0].LogRecords[1].SpanId = nil
	allZero := buildLogsRequest(1, 1, 0)
	allZero.ResourceLogs[0].ScopeLogs[0].LogRecords[0].TraceId = make([]byte, 16)
	short := buildLogsRequest(2, 1, 0)
	short.ResourceLogs[0].ScopeLogs[0].LogRecords[0].TraceId = testTraceID(0)[:8]
	shortSpan := buildLogsRequest(1, 2, 0)
	shortSpan.ResourceLogs[0].ScopeLogs[0].LogRecords[1].SpanId = []byte{1, 2, 3}
	utf8Req := buildLogsRequest(1, 1, 0)
	utf8Req.ResourceLogs[0].ScopeLogs[0].LogRecords[0].SeverityText = "badXsev"
	badUTF8 := bytes.Replace(marshal(t, utf8Req), []byte("badXsev"), []byte("bad\xffsev"), 1)

	type tc struct {
		name   string
		body   []byte
		json   bool // HTTP only, Content-Type application/json
		pubErr error

		wantCode      codes.Code
		wantHTTP      int
		wantRetry     bool
		wantMsg       string
		wantRejected  int64
		wantPublished []bool // HasTrace of each published batch
	}
	cases := []tc{
		{name: "good", body: good, wantCode: codes.OK, wantHTTP: 200, wantPublished: []bool{true, true, false}},
		{name: "malformed", body: []byte{0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01}, wantCode: codes.InvalidArgument, wantHTTP: 400, wantMsg: "decode ExportLogsServiceRequest"},
		{name: "truncated", body: good[:len(good)-3], wantCode: codes.InvalidArgument, wantHTTP: 400, wantMsg: "malformed"},
		{name: "zero-length trace ID is no trace", body: marshal(t, zeroLen), wantCode: codes.OK, wantHTTP: 200, wantPublished: []bool{true, false}},
		{name: "all-zero trace ID is no trace", body: marshal(t, allZero), wantCode: codes.OK, wantHTTP: 200, wantPublished: []bool{false}},
		{name: "8-byte trace ID rejected", body: marshal(t, short), wantCode: codes.OK, wantHTTP: 200,
			wantRejected: 1, wantMsg: "log record 0 of resource 0: trace ID of 8 bytes", wantPublished: []bool{true}},
		{name: "3-byte span ID rejected", body: marshal(t, shortSpan), wantCode: codes.OK, wantHTTP: 200,
			wantRejected: 1, wantMsg: "span ID of 3 bytes", wantPublished: []bool{true}},
		{name: "invalid UTF-8 repaired", body: badUTF8, wantCode: codes.OK, wantHTTP: 200, wantMsg: "replaced invalid UTF-8", wantPublished: []bool{true}},
		{name: "empty request", body: nil, wantCode: codes.OK, wantHTTP: 200},
		{name: "backpressure", body: good, pubErr: fmt.Errorf("produce: %w", ErrBackpressure),
			wantCode: codes.ResourceExhausted, wantHTTP: 429, wantRetry: true, wantMsg: "overloaded"},
		{name: "kafka down", body: good, pubErr: errKafkaDown,
			wantCode: codes.Unavailable, wantHTTP: 503, wantRetry: true, wantMsg: "Kafka did not acknowledge the log records"},
		{name: "json", json: true, body: []byte(`{"resourceLogs":[{"scopeLogs":[{"logRecords":[
			{"body":{"stringValue":"a"},"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","severityNumber":"SEVERITY_NUMBER_INFO"},
			{"body":{"stringValue":"b"},"traceId":""},
			{"body":{"stringValue":"c"},"traceId":"0af7651916cd43dd8448eb211c80319c"}]}]}]}`),
			wantHTTP: 200, wantPublished: []bool{true, false, true}},
		{name: "json short trace ID", json: true, body: []byte(`{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"5b8efff798038103"}]}]}]}`),
			wantHTTP: 400, wantMsg: "traceId: not 32 hex digits"},
		{name: "json malformed", json: true, body: []byte(`{"resourceLogs":[`), wantHTTP: 400, wantMsg: "OTLP/JSON logs"},
	}
	check := func(t *testing.T, c tc, rejected int64, partialMsg string) {
		t.Helper()
		require.Equal(t, c.wantRejected, rejected)
		require.Contains(t, partialMsg, c.wantMsg)
		var got []bool
		for _, b := range r.logs.take() {
			got = append(got, b.HasTrace)
		}
		require.Equal(t, c.wantPublished, got)
	}
	for _, c := range cases {
		if !c.json {
			t.Run(c.name+"/grpc", func(t *testing.T) {
				r.logs.setErr(c.pubErr)
				defer r.logs.setErr(nil)
				resp, err := exportRawLogs(context.Background(), conn, c.body)
				st := status.Convert(err)
				require.Equal(t, c.wantCode, st.Code(), st.Message())
				var retry *errdetails.RetryInfo
				for _, d := range st.Details() {
					if ri, ok := d.(*errdetails.RetryInfo); ok {
						retry = ri
					}
				}
				if c.wantRetry {
					require.NotNil(t, retry)
					require.Equal(t, cfg.RetryAfter, retry.RetryDelay.AsDuration())
				} else {
					require.Nil(t, retry)
				}
				if c.wantCode != codes.OK {
					require.Contains(t, st.Message(), c.wantMsg)
					require.Empty(t, r.logs.take())
					return
				}
				check(t, c, resp.GetPartialSuccess().GetRejectedLogRecords(), resp.GetPartialSuccess().GetErrorMessage())
			})
		}
		t.Run(c.name+"/http", func(t *testing.T) {
			r.logs.setErr(c.pubErr)
			defer r.logs.setErr(nil)
			ct := contentTypeProto
			if c.json {
				ct = contentTypeJSON
			}
			resp, err := client.Post(r.httpURL+"/v1/logs", ct, bytes.NewReader(c.body))
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, c.wantHTTP, resp.StatusCode, string(body))
			require.Equal(t, ct, resp.Header.Get("Content-Type"))
			unmarshal := proto.Unmarshal
			if c.json {
				unmarshal = func(b []byte, m proto.Message) error { return protojson.Unmarshal(b, m) }
			}
			if c.wantRetry {
				require.Equal(t, "2", resp.Header.Get("Retry-After"))
			} else {
				require.Empty(t, resp.Header.Get("Retry-After"))
			}
			if c.wantHTTP != http.StatusOK {
				var st spb.Status
				require.NoError(t, unmarshal(body, &st))
				require.Contains(t, st.Message, c.wantMsg)
				require.Empty(t, r.logs.take())
				return
			}
			var out collogspb.ExportLogsServiceResponse
			require.NoError(t, unmarshal(body, &out))
			check(t, c, out.GetPartialSuccess().GetRejectedLogRecords(), out.GetPartialSuccess().GetErrorMessage())
		})
	}

	m := r.metrics
	for _, tr := range []string{transportGRPC, transportHTTP} {
		require.Equal(t, 2.0, metricValue(m.logsRefused.WithLabelValues(tr, reasonInvalid)), tr)
		require.Equal(t, 5.0, metricValue(m.logsRefused.WithLabelValues(tr, reasonBackpressure)), tr)
		require.Equal(t, 5.0, metricValue(m.logsRefused.WithLabelValues(tr, reasonUnavailable)), tr)
		require.Equal(t, 1.0, metricValue(m.logsRepaired.WithLabelValues(tr)), tr)
	}
	// good 5, zero-length 2, all-zero 1, 8-byte 2, 3-byte 2, UTF-8 1,
	// backpressure 5, kafka down 5; HTTP adds the 3 JSON records.
	require.Equal(t, 23.0, metricValue(m.logsReceived.WithLabelValues(transportGRPC)))
	require.Equal(t, 11.0, metricValue(m.logsAccepted.WithLabelValues(transportGRPC)))
	require.Equal(t, 26.0, metricValue(m.logsReceived.WithLabelValues(transportHTTP)))
	require.Equal(t, 14.0, metricValue(m.logsAccepted.WithLabelValues(transportHTTP)))
	require.Equal(t, 2.0, metricValue(m.requests.WithLabelValues(signalLogs, transportGRPC, "InvalidArgument")))
	require.Equal(t, 1.0, metricValue(m.requests.WithLabelValues(signalLogs, transportGRPC, "ResourceExhausted")))
	require.Equal(t, 4.0, metricValue(m.requests.WithLabelValues(signalLogs, transportHTTP, "400")))
	// Trace metrics are untouched by logs.
	require.Zero(t, metricValue(m.spansReceived.WithLabelValues(transportGRPC)))
}

// TestLogsDisabled checks that without WithLogs the logs endpoints do not
// exist (clients get Unimplemented / 404, not silent loss), and that a nil
// LogsPublisher is refused.
func TestLogsDisabled(t *testing.T) {
	r := startReceiver(t, testConfig())
	_, err := exportRawLogs(context.Background(), dialGRPC(t, r.grpcAddr), marshal(t, buildLogsRequest(1, 1, 0)))
	require.Equal(t, codes.Unimplemented, status.Code(err))
	resp, err := newHTTPClient(t).Post(r.httpURL+"/v1/logs", contentTypeProto, bytes.NewReader(nil))
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	_, err = New(testConfig(), &recordingPublisher{}, nil, nil, WithLogs(nil))
	require.ErrorContains(t, err, "nil LogsPublisher")
}

// TestLogsAndTracesShareServer checks both signals on one receiver: traces
// still go to the trace publisher, logs to the logs publisher.
func TestLogsAndTracesShareServer(t *testing.T) {
	logs, traces := &recordingLogsPublisher{}, &recordingPublisher{}
	r, err := New(testConfig(), traces, nil, nil, WithLogs(logs))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	g, _ := r.Addrs()
	conn := dialGRPC(t, g.String())

	_, err = collogspb.NewLogsServiceClient(conn).Export(context.Background(), buildLogsRequest(3, 2, 2))
	require.NoError(t, err)
	_, err = exportRaw(context.Background(), conn, marshal(t, buildRequest(2, 2)))
	require.NoError(t, err)
	require.Len(t, logs.take(), 4)
	require.Len(t, traces.take(), 2)
}

func FuzzHTTPLogsExport(f *testing.F) {
	cfg := DefaultConfig()
	cfg.GRPCAddr, cfg.HTTPAddr = "", ""
	cfg.MaxRequestBytes = testMaxBytes
	r, err := New(cfg, &recordingPublisher{}, nil, nil, WithLogs(&recordingLogsPublisher{}))
	require.NoError(f, err)
	h := r.HTTPHandler()

	f.Add(false, marshal(f, buildLogsRequest(2, 3, 1)))
	f.Add(false, []byte{0x0a, 0x80})
	f.Add(true, []byte(`{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}]}`))
	f.Add(true, []byte(`{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"","body":{"stringValue":"x"}}]}]}]}`))
	f.Add(true, []byte(`[`))
	f.Fuzz(func(t *testing.T, isJSON bool, body []byte) {
		ct := contentTypeProto
		if isJSON {
			ct = contentTypeJSON
		}
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/v1/logs", bytes.NewReader(body))
		req.Header.Set("Content-Type", ct)
		h.ServeHTTP(rec, req)
		require.Contains(t, []int{200, 400, 413}, rec.Code, rec.Body.String())
		require.Equal(t, ct, rec.Header().Get("Content-Type"))
	})
}

// BenchmarkGRPCLogsExport is BenchmarkGRPCExport for logs: pre-encoded
// 512-record requests (16 traces × 30 records plus 32 without a trace).
func BenchmarkGRPCLogsExport(b *testing.B) {
	cfg := testConfig()
	cfg.HTTPAddr = ""
	r, err := New(cfg, nopPublisher{}, nil, nil, WithLogs(nopLogsPublisher{}))
	require.NoError(b, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		require.NoError(b, <-done)
	}()
	g, _ := r.Addrs()
	conn := dialGRPC(b, g.String())

	const recordsPerRequest = 512
	req := marshal(b, buildLogsRequest(16, 30, 32))
	_, err = exportRawLogs(context.Background(), conn, req) // warm up the connection
	require.NoError(b, err)

	b.ReportAllocs()
	b.SetBytes(int64(len(req)))
	cpu0, wall0 := processCPU(b), time.Now()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := exportRawLogs(context.Background(), conn, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	records := float64(b.N * recordsPerRequest)
	b.ReportMetric(records/time.Since(wall0).Seconds(), "records/s")
	b.ReportMetric(float64(processCPU(b)-cpu0)/records, "cpu-ns/record")
}

type nopLogsPublisher struct{}

func (nopLogsPublisher) PublishLogs(context.Context, []span.LogBatch) error { return nil }
