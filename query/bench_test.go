package query

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/threadline/threadline/span"
)

// bigTrace returns n spans of trace A split over two shards, the second
// holding every other span plus a copy of the first tenth (dedupe work).
func bigTrace(n int) (shard, shard) {
	res := []*span.Resource{newResource("checkout"), newResource("payments")}
	sc := newScope("bench", "1")
	var s0, s1 shard
	for i := range n {
		id := make([]byte, 8)
		id[6], id[7] = byte(i>>8)+1, byte(i)
		sp := &tracepb.Span{TraceId: traceA[:], SpanId: id, Name: "op", Kind: tracepb.Span_SPAN_KIND_SERVER,
			StartTimeUnixNano: ns(time.Duration(i) * time.Millisecond), EndTimeUnixNano: ns(time.Duration(i+5) * time.Millisecond),
			Attributes: []*commonpb.KeyValue{strAttr("http.method", "GET"), strAttr("http.route", "/api/v1/items/{id}")}}
		s := span.Span{Span: sp, Resource: res[i%2], Scope: sc}
		if i%2 == 0 {
			s0.spans = append(s0.spans, s)
		} else {
			s1.spans = append(s1.spans, s)
		}
		if i < n/10 && i%2 == 0 {
			s1.spans = append(s1.spans, s)
		}
	}
	return s0, s1
}

func benchTraceByID(b *testing.B, accept string) {
	const n = 1000
	s0, s1 := bigTrace(n)
	readers := startReadersTB(b, s0, s1)
	api := New(DefaultConfig(), readers, nil, nil)
	h := api.Handler()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/api/traces/"+traceAHex, nil)
		req.Header.Set("Accept", accept)
		h.ServeHTTP(rec, req)
		require.Equal(b, http.StatusOK, rec.Code)
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "spans/s")
}

// BenchmarkTraceByIDProtobuf measures the Grafana Tempo path: two-indexer
// fan-out over gRPC, merge, dedupe, protobuf encode.
func BenchmarkTraceByIDProtobuf(b *testing.B) { benchTraceByID(b, "application/protobuf") }

// BenchmarkTraceByIDJaeger measures the Jaeger JSON path.
func BenchmarkTraceByIDJaeger(b *testing.B) { benchTraceByID(b, "application/json") }
