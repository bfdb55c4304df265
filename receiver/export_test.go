package receiver

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// TestSDKExporters sends spans with the real OpenTelemetry Go SDK exporters
// and checks that every span arrives exactly once, batched by trace ID.
func TestSDKExporters(t *testing.T) {
	r := startReceiver(t, testConfig())
	u, err := url.Parse(r.httpURL)
	require.NoError(t, err)

	newExporter := map[string]func(t *testing.T) sdktrace.SpanExporter{
		"grpc": func(t *testing.T) sdktrace.SpanExporter {
			exp, err := otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(r.grpcAddr),
				otlptracegrpc.WithInsecure(), otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}))
			require.NoError(t, err)
			return exp
		},
		"grpc gzip": func(t *testing.T) sdktrace.SpanExporter {
			exp, err := otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(r.grpcAddr),
				otlptracegrpc.WithInsecure(), otlptracegrpc.WithCompressor("gzip"),
				otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}))
			require.NoError(t, err)
			return exp
		},
		"http protobuf": func(t *testing.T) sdktrace.SpanExporter {
			exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpoint(u.Host), otlptracehttp.WithInsecure(),
				otlptracehttp.WithHTTPClient(newHTTPClient(t)), otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: false}))
			require.NoError(t, err)
			return exp
		},
		"http protobuf gzip": func(t *testing.T) sdktrace.SpanExporter {
			exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpoint(u.Host), otlptracehttp.WithInsecure(),
				otlptracehttp.WithCompression(otlptracehttp.GzipCompression),
				otlptracehttp.WithHTTPClient(newHTTPClient(t)), otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: false}))
			require.NoError(t, err)
			return exp
		},
		"http json": func(t *testing.T) sdktrace.SpanExporter {
			exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpoint(u.Host), otlptracehttp.WithInsecure(),
				otlptracehttp.WithEncoding(otlptracehttp.EncodingJSON),
				otlptracehttp.WithHTTPClient(newHTTPClient(t)), otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: false}))
			require.NoError(t, err)
			return exp
		},
	}
	for name, mk := range newExporter {
		t.Run(name, func(t *testing.T) {
			exp := mk(t)
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp,
				sdktrace.WithMaxExportBatchSize(1000), sdktrace.WithBatchTimeout(time.Hour)))
			tracer := tp.Tracer("receiver-test")

			const traces, children = 5, 9
			wantTrace := map[string]string{} // span ID → trace ID
			for i := range traces {
				ctx, root := tracer.Start(context.Background(), fmt.Sprintf("root-%d", i))
				for j := range children {
					_, child := tracer.Start(ctx, fmt.Sprintf("child-%d", j), trace.WithSpanKind(trace.SpanKindClient))
					sc := child.SpanContext()
					wantTrace[sc.SpanID().String()] = sc.TraceID().String()
					child.End()
				}
				sc := root.SpanContext()
				wantTrace[sc.SpanID().String()] = sc.TraceID().String()
				root.End()
			}
			require.NoError(t, tp.ForceFlush(context.Background()))
			require.NoError(t, tp.Shutdown(context.Background()))

			batches := r.pub.take()
			require.Len(t, batches, traces, "one batch per trace ID")
			require.Equal(t, wantTrace, checkBatches(t, batches))
		})
	}
}

// TestHandWrittenJSON posts OTLP/JSON as the spec writes it (hex IDs,
// lowerCamelCase, enums as integers, 64-bit integers as strings).
func TestHandWrittenJSON(t *testing.T) {
	r := startReceiver(t, testConfig())
	const body = `{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
	  "scopeSpans":[{"scope":{"name":"manual"},"spans":[
	    {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"GET /cart","kind":2,
	     "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000","status":{"code":1}},
	    {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175","parentSpanId":"eee19b7ec3c1b174","name":"SELECT","kind":3,
	     "startTimeUnixNano":"1544712660100000000","endTimeUnixNano":"1544712660900000000"},
	    {"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331","name":"POST /pay","kind":2,
	     "startTimeUnixNano":1544712662000000000,"endTimeUnixNano":1544712663000000000,"unknownFieldIsIgnored":true}
	  ]}]}]}`
	resp, err := newHTTPClient(t).Post(r.httpURL+"/v1/traces", "application/json; charset=utf-8", bytes.NewReader([]byte(body)))
	require.NoError(t, err)
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(got))
	require.Equal(t, contentTypeJSON, resp.Header.Get("Content-Type"))
	var out coltracepb.ExportTraceServiceResponse
	require.NoError(t, protojson.Unmarshal(got, &out))
	require.Nil(t, out.PartialSuccess)

	seen := checkBatches(t, r.pub.take())
	require.Equal(t, map[string]string{
		"eee19b7ec3c1b174": "5b8efff798038103d269b633813fc60c",
		"eee19b7ec3c1b175": "5b8efff798038103d269b633813fc60c",
		"b7ad6b7169203331": "0af7651916cd43dd8448eb211c80319c",
	}, seen)
}

// TestGRPCDirect covers the raw gRPC path with the generated client:
// splitting, gzip and partial success for invalid IDs.
func TestGRPCDirect(t *testing.T) {
	r := startReceiver(t, testConfig())
	client := coltracepb.NewTraceServiceClient(dialGRPC(t, r.grpcAddr))

	req := buildRequest(4, 8)
	resp, err := client.Export(context.Background(), req)
	require.NoError(t, err)
	require.Nil(t, resp.PartialSuccess)
	batches := r.pub.take()
	require.Len(t, batches, 4)
	require.Len(t, checkBatches(t, batches), 32)

	// Empty request: nothing to publish, plain success.
	resp, err = client.Export(context.Background(), &coltracepb.ExportTraceServiceRequest{})
	require.NoError(t, err)
	require.Nil(t, resp.PartialSuccess)
	require.Empty(t, r.pub.take())

	// Invalid UTF-8 is repaired and reported as a warning (rejected 0).
	bad := buildRequest(1, 1)
	bad.ResourceSpans[0].ScopeSpans[0].Spans[0].Name = "bad\xffname"
	raw, err := (proto.MarshalOptions{}).Marshal(bad)
	if err != nil { // the Go proto library refuses invalid UTF-8; splice it in by hand
		ok := buildRequest(1, 1)
		ok.ResourceSpans[0].ScopeSpans[0].Spans[0].Name = "badXname"
		raw = bytes.Replace(marshal(t, ok), []byte("badXname"), []byte("bad\xffname"), 1)
	}
	resp, err = exportRaw(context.Background(), dialGRPC(t, r.grpcAddr), raw)
	require.NoError(t, err)
	require.NotNil(t, resp.PartialSuccess)
	require.Zero(t, resp.PartialSuccess.RejectedSpans)
	require.Contains(t, resp.PartialSuccess.ErrorMessage, "UTF-8")
	require.Len(t, r.pub.take(), 1)
}

func TestHexIDsInRecords(t *testing.T) {
	// Guards the test helpers themselves: distinct IDs for distinct indexes.
	require.NotEqual(t, hex.EncodeToString(testTraceID(0)), hex.EncodeToString(testTraceID(1)))
	require.NotEqual(t, hex.EncodeToString(testSpanID(255)), hex.EncodeToString(testSpanID(511)))
}
