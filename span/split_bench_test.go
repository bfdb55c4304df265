package span

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// benchRequest is a realistic gateway-collector export: 3 resources with 2
// scopes each, 512 spans, 5 spans per trace with each trace's spans spread
// over the resources, 10 string/int attributes per span.
func benchRequest(tb testing.TB) (*tracepb.TracesData, []byte) {
	const nSpans, perTrace, nRes, nScopes = 512, 5, 3, 2
	td := &tracepb.TracesData{}
	for r := range nRes {
		rs := &tracepb.ResourceSpans{
			Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{
				strAttr("service.name", fmt.Sprintf("service-%d", r)),
				strAttr("service.version", "1.42.0"),
				strAttr("host.name", fmt.Sprintf("ip-10-0-0-%d.ec2.internal", r)),
				strAttr("k8s.pod.name", fmt.Sprintf("service-%d-7f9c6d5b4-x2x9z", r)),
				strAttr("telemetry.sdk.language", "go"),
			}},
			SchemaUrl: "https://opentelemetry.io/schemas/1.26.0",
		}
		for s := range nScopes {
			rs.ScopeSpans = append(rs.ScopeSpans, &tracepb.ScopeSpans{Scope: mkScope(fmt.Sprintf("go.opentelemetry.io/contrib/instrumentation/%d", s))})
		}
		td.ResourceSpans = append(td.ResourceSpans, rs)
	}
	for i := range nSpans {
		var trace [16]byte
		binary.BigEndian.PutUint64(trace[:8], 0x5b8efff798038103)
		binary.BigEndian.PutUint64(trace[8:], uint64(i/perTrace+1))
		var id [8]byte
		binary.BigEndian.PutUint64(id[:], uint64(i+1))
		sp := &tracepb.Span{
			TraceId: trace[:], SpanId: id[:], ParentSpanId: id[:],
			Name: "GET /api/v1/orders/{id}", Kind: tracepb.Span_SPAN_KIND_SERVER,
			StartTimeUnixNano: 1_700_000_000_000_000_000 + uint64(i)*1000, EndTimeUnixNano: 1_700_000_000_050_000_000 + uint64(i)*1000,
			Attributes: []*commonpb.KeyValue{
				strAttr("http.request.method", "GET"),
				strAttr("url.path", fmt.Sprintf("/api/v1/orders/%d", i)),
				strAttr("server.address", "orders.internal"),
				strAttr("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
				strAttr("network.protocol.version", "1.1"),
				intAttr("http.response.status_code", 200),
				intAttr("server.port", 8080),
				intAttr("http.request.body.size", int64(i*13)),
				intAttr("http.response.body.size", int64(i*17)),
				intAttr("thread.id", int64(i%8)),
			},
			Status: &tracepb.Status{Code: tracepb.Status_STATUS_CODE_OK},
		}
		rs := td.ResourceSpans[i%nRes]
		ss := rs.ScopeSpans[(i/nRes)%nScopes]
		ss.Spans = append(ss.Spans, sp)
	}
	return td, marshal(tb, td)
}

func BenchmarkSplitTraces(b *testing.B) {
	_, req := benchRequest(b)
	var s Splitter
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()
	spans := 0
	cpu0, _ := processCPU()
	for b.Loop() {
		res, err := s.Split(req)
		if err != nil || res.Spans != 512 {
			b.Fatalf("split: %v, %d spans", err, res.Spans)
		}
		spans += res.Spans
	}
	reportSpans(b, spans, cpu0)
}

// BenchmarkSplitInto is the receiver's path: one recycled result, so the
// data buffer is reused and the split itself allocates nothing.
func BenchmarkSplitInto(b *testing.B) {
	_, req := benchRequest(b)
	var (
		s   Splitter
		res SplitResult
	)
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()
	spans := 0
	cpu0, _ := processCPU()
	for b.Loop() {
		if err := s.SplitInto(&res, req); err != nil || res.Spans != 512 {
			b.Fatalf("split: %v, %d spans", err, res.Spans)
		}
		spans += res.Spans
	}
	reportSpans(b, spans, cpu0)
}

// BenchmarkUnmarshalMarshalBaseline is the straightforward split the
// Splitter replaces: decode to structs, group, re-encode each trace.
func BenchmarkUnmarshalMarshalBaseline(b *testing.B) {
	_, req := benchRequest(b)
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()
	spans := 0
	cpu0, _ := processCPU()
	for b.Loop() {
		var td tracepb.TracesData
		if err := proto.Unmarshal(req, &td); err != nil {
			b.Fatal(err)
		}
		all := FromTracesData(&td)
		byID := map[TraceID][]Span{}
		var order []TraceID
		for _, s := range all {
			id, err := TraceIDFromBytes(s.TraceId)
			if err != nil {
				continue
			}
			if _, err := SpanIDFromBytes(s.SpanId); err != nil {
				continue
			}
			if _, ok := byID[id]; !ok {
				order = append(order, id)
			}
			byID[id] = append(byID[id], s)
		}
		for _, id := range order {
			if _, err := proto.Marshal(ToTracesData(byID[id])); err != nil {
				b.Fatal(err)
			}
			spans += len(byID[id])
		}
	}
	reportSpans(b, spans, cpu0)
}

func reportSpans(b *testing.B, spans int, cpu0 int64) {
	sec := b.Elapsed().Seconds()
	if sec <= 0 || spans == 0 {
		return
	}
	b.ReportMetric(float64(spans)/sec, "spans/s")
	b.ReportMetric(sec*1e9/float64(spans), "ns/span")
	if cpu1, ok := processCPU(); ok {
		b.ReportMetric(float64(cpu1-cpu0)/float64(spans), "cpu-ns/span")
	}
}

func TestBenchRequestSplits(t *testing.T) {
	td, req := benchRequest(t)
	res, err := SplitTraces(req)
	require.NoError(t, err)
	require.Equal(t, 512, res.Spans)
	require.Len(t, res.Batches, 103)
	requireSplitMatches(t, td, res)
}
