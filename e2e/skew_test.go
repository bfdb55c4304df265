package e2e

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func resourceOf(service, host string) *resourcepb.Resource {
	kv := func(k, v string) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
	}
	return &resourcepb.Resource{Attributes: []*commonpb.KeyValue{kv("service.name", service), kv("host.name", host)}}
}

// TestClockSkewThroughPipeline: a server whose host clock runs 2 s ahead
// reports its span outside its client's. Through the whole pipeline the stored
// trace has the server centred in the client, marked with the offset applied,
// and ?raw=true still returns the times as received.
func TestClockSkewThroughPipeline(t *testing.T) {
	a := startAllInOne(t, testConfig(t.TempDir()))
	conn, err := grpc.NewClient(a.otlpGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()

	tid, cid, sid := make([]byte, 16), make([]byte, 8), make([]byte, 8)
	_, _ = rand.Read(tid)
	_, _ = rand.Read(cid)
	_, _ = rand.Read(sid)
	t0 := time.Now().Add(-time.Minute)
	const skew = 2 * time.Second
	// Client 0–100 ms on host A; server really 10–90 ms, reported 2 s late.
	client := &tracepb.Span{TraceId: tid, SpanId: cid, Name: "POST /pay", Kind: tracepb.Span_SPAN_KIND_CLIENT,
		StartTimeUnixNano: uint64(t0.UnixNano()), EndTimeUnixNano: uint64(t0.Add(100 * time.Millisecond).UnixNano())}
	server := &tracepb.Span{TraceId: tid, SpanId: sid, ParentSpanId: cid, Name: "POST /pay", Kind: tracepb.Span_SPAN_KIND_SERVER,
		StartTimeUnixNano: uint64(t0.Add(10*time.Millisecond + skew).UnixNano()), EndTimeUnixNano: uint64(t0.Add(90*time.Millisecond + skew).UnixNano())}
	req := &collectortracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{
		{Resource: resourceOf("checkout", "host-a"), ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{client}}}},
		{Resource: resourceOf("payment", "host-b"), ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{server}}}},
	}}
	_, err = collectortracepb.NewTraceServiceClient(conn).Export(context.Background(), req)
	require.NoError(t, err)

	id := hexID(tid)
	waitTrace(t, a.query, id, 2)
	var tr struct {
		Warnings []string `json:"warnings"`
		Spans    []struct {
			SpanID     string         `json:"spanID"`
			Start      string         `json:"startTimeUnixNano"`
			End        string         `json:"endTimeUnixNano"`
			Attributes map[string]any `json:"attributes"`
		} `json:"spans"`
	}
	require.Equal(t, 200, getJSON(t, a.query+"/api/v1/traces/"+id, &tr))
	byID := map[string]int{}
	for i, s := range tr.Spans {
		byID[s.SpanID] = i
	}
	srv := tr.Spans[byID[hexID(sid)]]
	cl := tr.Spans[byID[hexID(cid)]]
	require.Equal(t, itoa(int64(client.StartTimeUnixNano)), cl.Start, "the client's host is the reference")
	require.Equal(t, itoa(t0.Add(10*time.Millisecond).UnixNano()), srv.Start, "server centred in its client")
	require.Equal(t, itoa(t0.Add(90*time.Millisecond).UnixNano()), srv.End)
	require.EqualValues(t, -skew.Nanoseconds(), srv.Attributes["threadline.clock_skew_ns"])
	require.NotEmpty(t, tr.Warnings, "the trace says it was adjusted")

	raw := getTrace(t, a.query, id) // ?raw=true
	for _, rs := range raw.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				if hexID(s.GetSpanId()) == hexID(sid) {
					require.Equal(t, server.StartTimeUnixNano, s.GetStartTimeUnixNano(), "raw keeps the received time")
					require.Empty(t, s.GetAttributes())
				}
			}
		}
	}
}
