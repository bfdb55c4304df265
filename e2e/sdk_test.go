package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// TestSDKRoundTrip exports traces with the OpenTelemetry Go SDK over every
// OTLP transport and checks every span comes back from the Tempo API intact.
func TestSDKRoundTrip(t *testing.T) {
	a := startAllInOne(t, testConfig(t.TempDir()))
	transports := map[string]func(ctx context.Context) sdktrace.SpanExporter{
		"grpc": func(ctx context.Context) sdktrace.SpanExporter {
			e, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(a.otlpGRPC), otlptracegrpc.WithInsecure(), otlptracegrpc.WithCompressor("gzip"))
			require.NoError(t, err)
			return e
		},
		"http-protobuf": func(ctx context.Context) sdktrace.SpanExporter {
			e, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(a.otlpHTTP), otlptracehttp.WithInsecure(), otlptracehttp.WithCompression(otlptracehttp.GzipCompression))
			require.NoError(t, err)
			return e
		},
		"http-json": func(ctx context.Context) sdktrace.SpanExporter {
			// The Go SDK speaks only protobuf over HTTP; a proxy re-encodes its
			// requests as OTLP/JSON (hex IDs, per the spec) for the collector.
			proxy := httptest.NewServer(jsonTranscoder(t, "http://"+a.otlpHTTP+"/v1/traces"))
			t.Cleanup(proxy.Close)
			e, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(proxy.URL+"/v1/traces"))
			require.NoError(t, err)
			return e
		},
	}
	for name, newExporter := range transports {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			rec := tracetest.NewSpanRecorder()
			res := resource.NewWithAttributes("https://opentelemetry.io/schemas/1.26.0",
				attribute.String("service.name", "checkout-"+name),
				attribute.String("host.name", "host-7"),
				attribute.Int("shard", 3))
			tp := sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithSpanProcessor(rec),
				sdktrace.WithBatcher(newExporter(ctx)))
			tr := tp.Tracer("e2e", trace.WithInstrumentationVersion("1.0.0"))

			var ids []trace.TraceID
			for i := range 3 {
				rctx, root := tr.Start(ctx, "POST /pay", trace.WithSpanKind(trace.SpanKindServer),
					trace.WithAttributes(attribute.String("http.request.method", "POST"), attribute.Int("order", i),
						attribute.Bool("vip", i%2 == 0), attribute.Float64("amount", 12.5),
						attribute.StringSlice("items", []string{"ramen", "gyoza"})))
				_, child := tr.Start(rctx, "bank.charge", trace.WithSpanKind(trace.SpanKindClient),
					trace.WithLinks(trace.Link{SpanContext: root.SpanContext(), Attributes: []attribute.KeyValue{attribute.String("why", "retry")}}))
				child.AddEvent("retry", trace.WithAttributes(attribute.Int("attempt", 2)))
				child.RecordError(fmt.Errorf("bank said no <script>"))
				child.SetStatus(codes.Error, "declined")
				child.End()
				_, inner := tr.Start(rctx, "db.query", trace.WithAttributes(attribute.String("db.system", "postgresql")))
				inner.End()
				root.End()
				ids = append(ids, root.SpanContext().TraceID())
			}
			require.NoError(t, tp.Shutdown(ctx))

			byTrace := map[trace.TraceID][]sdktrace.ReadOnlySpan{}
			for _, s := range rec.Ended() {
				byTrace[s.SpanContext().TraceID()] = append(byTrace[s.SpanContext().TraceID()], s)
			}
			for _, id := range ids {
				want := byTrace[id]
				td := waitTrace(t, a.query, id.String(), len(want))
				compareTrace(t, want, td)
			}
		})
	}
}

// compareTrace checks every field the SDK set survived the round trip.
func compareTrace(t *testing.T, want []sdktrace.ReadOnlySpan, td *tracepb.TracesData) {
	t.Helper()
	type got struct {
		span  *tracepb.Span
		res   map[string]any
		scope *commonpb.InstrumentationScope
	}
	bySpanID := map[string]got{}
	for _, rs := range td.GetResourceSpans() {
		res := attrMap(rs.GetResource().GetAttributes())
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				bySpanID[hexID(s.GetSpanId())] = got{s, res, ss.GetScope()}
			}
		}
	}
	require.Len(t, bySpanID, len(want))
	for _, w := range want {
		g, ok := bySpanID[w.SpanContext().SpanID().String()]
		require.True(t, ok, "span %s missing", w.Name())
		s := g.span
		require.Equal(t, w.SpanContext().TraceID().String(), hexID(s.GetTraceId()))
		require.Equal(t, w.Name(), s.GetName())
		if w.Parent().IsValid() {
			require.Equal(t, w.Parent().SpanID().String(), hexID(s.GetParentSpanId()))
		} else {
			require.Empty(t, s.GetParentSpanId())
		}
		require.Equal(t, int32(w.SpanKind()), int32(s.GetKind()))
		require.Equal(t, uint64(w.StartTime().UnixNano()), s.GetStartTimeUnixNano())
		require.Equal(t, uint64(w.EndTime().UnixNano()), s.GetEndTimeUnixNano())
		require.Equal(t, sdkAttrs(w.Attributes()), attrMap(s.GetAttributes()))
		require.Equal(t, sdkAttrs(w.Resource().Attributes()), g.res)
		require.Equal(t, w.InstrumentationScope().Name, g.scope.GetName())
		require.Equal(t, w.InstrumentationScope().Version, g.scope.GetVersion())
		require.Len(t, s.GetEvents(), len(w.Events()))
		for i, e := range w.Events() {
			require.Equal(t, e.Name, s.GetEvents()[i].GetName())
			require.Equal(t, uint64(e.Time.UnixNano()), s.GetEvents()[i].GetTimeUnixNano())
			require.Equal(t, sdkAttrs(e.Attributes), attrMap(s.GetEvents()[i].GetAttributes()))
		}
		require.Len(t, s.GetLinks(), len(w.Links()))
		for i, l := range w.Links() {
			require.Equal(t, l.SpanContext.SpanID().String(), hexID(s.GetLinks()[i].GetSpanId()))
			require.Equal(t, sdkAttrs(l.Attributes), attrMap(s.GetLinks()[i].GetAttributes()))
		}
		switch w.Status().Code {
		case codes.Error:
			require.Equal(t, tracepb.Status_STATUS_CODE_ERROR, s.GetStatus().GetCode())
			require.Equal(t, w.Status().Description, s.GetStatus().GetMessage())
		default:
			require.NotEqual(t, tracepb.Status_STATUS_CODE_ERROR, s.GetStatus().GetCode())
		}
	}
}

func sdkAttrs(kvs []attribute.KeyValue) map[string]any {
	m := map[string]any{}
	for _, kv := range kvs {
		switch kv.Value.Type() {
		case attribute.STRINGSLICE:
			m[string(kv.Key)] = fmt.Sprint(kv.Value.AsStringSlice())
		default:
			m[string(kv.Key)] = kv.Value.AsInterface()
		}
	}
	return m
}

func attrMap(kvs []*commonpb.KeyValue) map[string]any {
	m := map[string]any{}
	for _, kv := range kvs {
		v := kv.GetValue()
		switch x := v.GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.GetKey()] = x.StringValue
		case *commonpb.AnyValue_IntValue:
			m[kv.GetKey()] = x.IntValue
		case *commonpb.AnyValue_BoolValue:
			m[kv.GetKey()] = x.BoolValue
		case *commonpb.AnyValue_DoubleValue:
			m[kv.GetKey()] = x.DoubleValue
		case *commonpb.AnyValue_ArrayValue:
			var ss []string
			for _, e := range x.ArrayValue.GetValues() {
				ss = append(ss, e.GetStringValue())
			}
			m[kv.GetKey()] = fmt.Sprint(ss)
		default:
			m[kv.GetKey()] = fmt.Sprintf("unexpected %T", x)
		}
	}
	return m
}

// jsonTranscoder forwards OTLP/protobuf requests as OTLP/JSON. It rewrites the
// ID fields from protojson's base64 to the hex the OTLP/JSON spec requires,
// independently of the collector's own JSON code.
func jsonTranscoder(t *testing.T, target string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if r.Header.Get("Content-Encoding") == "gzip" {
			http.Error(w, "transcoder expects uncompressed bodies", http.StatusBadRequest)
			return
		}
		req := &collectortracepb.ExportTraceServiceRequest{}
		if err := proto.Unmarshal(body, req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		js, err := protojson.MarshalOptions{UseEnumNumbers: true}.Marshal(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		var doc any
		if err := json.Unmarshal(js, &doc); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		hexIDs(doc)
		js, _ = json.Marshal(doc)
		code, hdr, resp := postBody(t, target, "application/json", js, nil)
		w.Header().Set("Content-Type", hdr.Get("Content-Type"))
		if code != http.StatusOK {
			w.WriteHeader(code)
			_, _ = w.Write(resp)
			return
		}
		// The SDK expects a protobuf response: re-encode the JSON answer.
		out := &collectortracepb.ExportTraceServiceResponse{}
		if err := protojson.Unmarshal(resp, out); err != nil {
			http.Error(w, "collector JSON response: "+err.Error(), http.StatusBadGateway)
			return
		}
		pb, _ := proto.Marshal(out)
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(pb)
	})
}

func hexIDs(v any) {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			switch k {
			case "traceId", "spanId", "parentSpanId":
				if s, ok := x[k].(string); ok {
					b, err := base64.StdEncoding.DecodeString(s)
					if err == nil {
						x[k] = fmt.Sprintf("%x", b)
					}
				}
			default:
				hexIDs(x[k])
			}
		}
	case []any:
		for _, e := range x {
			hexIDs(e)
		}
	}
}
