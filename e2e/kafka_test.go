package e2e

import (
	"context"
	"crypto/rand"
	"hash/fnv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"
	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/bus"
)

// makeRequest builds one OTLP request of traces × spansPerTrace spans, with
// the traces interleaved across two resources.
func makeRequest(traces, spansPerTrace int) (*collectortracepb.ExportTraceServiceRequest, [][]byte) {
	now := uint64(time.Now().UnixNano())
	var ids [][]byte
	req := &collectortracepb.ExportTraceServiceRequest{}
	for r := range 2 {
		req.ResourceSpans = append(req.ResourceSpans, &tracepb.ResourceSpans{
			Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{
				{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: []string{"order", "payment"}[r]}}},
			}},
			ScopeSpans: []*tracepb.ScopeSpans{{Scope: &commonpb.InstrumentationScope{Name: "e2e"}}},
		})
	}
	for range traces {
		tid := make([]byte, 16)
		_, _ = rand.Read(tid)
		ids = append(ids, tid)
		var parent []byte
		for s := range spansPerTrace {
			sid := make([]byte, 8)
			_, _ = rand.Read(sid)
			sp := &tracepb.Span{TraceId: tid, SpanId: sid, ParentSpanId: parent, Name: "op", Kind: tracepb.Span_SPAN_KIND_SERVER,
				StartTimeUnixNano: now + uint64(s)*1000, EndTimeUnixNano: now + 1_000_000 - uint64(s)*1000}
			parent = sid
			ss := req.ResourceSpans[s%2].ScopeSpans[0]
			ss.Spans = append(ss.Spans, sp)
		}
	}
	return req, ids
}

// TestKafkaRecordFormat checks what lands on the topic: one record per trace
// per request, key the lowercase hex trace ID, value OTLP TracesData holding
// only that trace, on the partition the OTel Collector's kafka exporter
// (partition_traces_by_id, Sarama's FNV-1a hash) would choose.
func TestKafkaRecordFormat(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	// Use an external-style broker so the test can read the topic itself.
	emb := bus.DefaultEmbeddedConfig()
	emb.Addr, emb.DataDir, emb.SyncWrites, emb.Partitions = "127.0.0.1:0", t.TempDir(), false, 6
	broker, err := bus.StartEmbedded(context.Background(), emb, bus.DefaultConfig().Topics(), quietLogger())
	require.NoError(t, err)
	defer broker.Close()
	cfg.Collector.Kafka.Brokers = []string{broker.Addr()}
	a := startAllInOne(t, cfg)

	conn, err := grpc.NewClient(a.otlpGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	req, ids := makeRequest(20, 3)
	_, err = collectortracepb.NewTraceServiceClient(conn).Export(context.Background(), req)
	require.NoError(t, err)
	a.stop()

	cl, err := kgo.NewClient(kgo.SeedBrokers(broker.Addr()), kgo.ConsumeTopics("otlp_spans"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	require.NoError(t, err)
	defer cl.Close()
	want := map[string]bool{}
	for _, id := range ids {
		want[hexID(id)] = true
	}
	seen := map[string]bool{}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for len(seen) < len(ids) {
		f := cl.PollFetches(ctx)
		require.NoError(t, ctx.Err(), "only %d of %d records arrived", len(seen), len(ids))
		f.EachRecord(func(r *kgo.Record) {
			key := string(r.Key)
			require.Regexp(t, "^[0-9a-f]{32}$", key)
			require.True(t, want[key], "unexpected key %s", key)
			require.False(t, seen[key], "trace %s produced twice", key)
			seen[key] = true
			td := &tracepb.TracesData{}
			require.NoError(t, proto.Unmarshal(r.Value, td))
			n := 0
			for _, rs := range td.GetResourceSpans() {
				require.NotEmpty(t, rs.GetResource().GetAttributes(), "resource kept")
				for _, ss := range rs.GetScopeSpans() {
					require.Equal(t, "e2e", ss.GetScope().GetName())
					for _, s := range ss.GetSpans() {
						require.Equal(t, key, hexID(s.GetTraceId()))
						n++
					}
				}
			}
			require.Equal(t, 3, n)
			h := fnv.New32a()
			_, _ = h.Write(r.Key)
			p := int32(h.Sum32()) % 6
			if p < 0 {
				p = -p
			}
			require.Equal(t, p, r.Partition, "partition must match Sarama's hash partitioner")
		})
	}
}

// TestHealthEndpoints checks the all-in-one's operator endpoints.
func TestHealthEndpoints(t *testing.T) {
	a := startAllInOne(t, testConfig(t.TempDir()))
	var ready struct {
		Status       string                       `json:"status"`
		Version      string                       `json:"version"`
		Checks       map[string]map[string]string `json:"checks"`
		Dependencies map[string]map[string]string `json:"dependencies"`
	}
	require.Equal(t, 200, getJSON(t, a.query+"/readyz", &ready))
	require.Equal(t, "ready", ready.Status)
	require.Equal(t, "ok", ready.Checks["store"]["status"])
	require.Equal(t, "ok", ready.Checks["kafka_partitions"]["status"])
	require.Equal(t, "ok", ready.Dependencies["kafka"]["status"])
	require.Equal(t, 200, getJSON(t, a.query+"/healthz", nil))
	code, _, body := get(t, a.query+"/metrics")
	require.Equal(t, 200, code)
	for _, m := range []string{"threadline_receiver_spans_received_total", "threadline_kafka_produce_duration_seconds", "threadline_kafka_pending_records", "threadline_indexer_buffered_traces", "threadline_indexer_spans_written_total", "threadline_store_disk_bytes"} {
		require.True(t, strings.Contains(string(body), m), "metric %s missing from /metrics", m)
	}
}
