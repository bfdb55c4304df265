package query

import (
	"context"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
)

// memReader is an in-memory indexer read server with the semantics that
// reader.proto documents. It stands in for readapi over a real index.Store
// until that package builds.
type memReader struct {
	readerpb.UnimplementedReaderServer
	spans   []span.Span
	reasons map[span.TraceID][]string
}

func (m *memReader) byTrace() map[span.TraceID][]span.Span {
	out := map[span.TraceID][]span.Span{}
	for _, s := range m.spans {
		id, _ := span.TraceIDFromBytes(s.GetTraceId())
		out[id] = append(out[id], s)
	}
	return out
}

func (m *memReader) GetTrace(_ context.Context, req *readerpb.GetTraceRequest) (*readerpb.GetTraceResponse, error) {
	id, err := span.TraceIDFromBytes(req.GetTraceId())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	spans := m.byTrace()[id]
	if len(spans) == 0 {
		return &readerpb.GetTraceResponse{}, nil
	}
	b, err := proto.Marshal(span.ToTracesData(spans))
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &readerpb.GetTraceResponse{Found: true, TracesData: b, KeptReasons: m.reasons[id]}, nil
}

func statusName(s span.Span) string {
	switch s.GetStatus().GetCode() {
	case tracepb.Status_STATUS_CODE_ERROR:
		return "error"
	case tracepb.Status_STATUS_CODE_OK:
		return "ok"
	}
	return "unset"
}

func tagHolds(s span.Span, k, v string) bool {
	switch k {
	case "service.name":
		return s.ServiceName() == v
	case "name":
		return s.GetName() == v
	case "status":
		return statusName(s) == v
	}
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == k && kv.GetValue().GetStringValue() == v {
			return true
		}
	}
	for _, kv := range s.Resource.Resource.GetAttributes() {
		if kv.GetKey() == k && kv.GetValue().GetStringValue() == v {
			return true
		}
	}
	return false
}

func spanDur(s span.Span) int64 { return int64(s.GetEndTimeUnixNano() - s.GetStartTimeUnixNano()) }

func (m *memReader) SearchTraces(_ context.Context, req *readerpb.SearchRequest) (*readerpb.SearchResponse, error) {
	var out []*readerpb.TraceSummary
	for id, spans := range m.byTrace() {
		first, last := spans[0].GetStartTimeUnixNano(), spans[0].GetEndTimeUnixNano()
		root := spans[0]
		for _, s := range spans {
			first, last = min(first, s.GetStartTimeUnixNano()), max(last, s.GetEndTimeUnixNano())
			if len(s.GetParentSpanId()) == 0 {
				root = s
			}
		}
		dur := int64(last - first)
		if len(root.GetParentSpanId()) == 0 {
			dur = spanDur(root)
		}
		if (req.GetStartUnixNano() != 0 && int64(last) < req.GetStartUnixNano()) ||
			(req.GetEndUnixNano() != 0 && int64(first) > req.GetEndUnixNano()) ||
			(req.GetMinDurationNanos() != 0 && dur < req.GetMinDurationNanos()) ||
			(req.GetMaxDurationNanos() != 0 && dur > req.GetMaxDurationNanos()) {
			continue
		}
		spanOK := func(s span.Span) bool {
			return (req.GetSpanMinDurationNanos() == 0 || spanDur(s) >= req.GetSpanMinDurationNanos()) &&
				(req.GetSpanMaxDurationNanos() == 0 || spanDur(s) <= req.GetSpanMaxDurationNanos())
		}
		match := true
		if req.GetSameSpan() {
			match = slices.ContainsFunc(spans, func(s span.Span) bool {
				if !spanOK(s) {
					return false
				}
				for k, v := range req.GetTags() {
					if !tagHolds(s, k, v) {
						return false
					}
				}
				return true
			})
		} else {
			for k, v := range req.GetTags() {
				if !slices.ContainsFunc(spans, func(s span.Span) bool { return tagHolds(s, k, v) }) {
					match = false
				}
			}
		}
		if !match {
			continue
		}
		sum := &readerpb.TraceSummary{
			TraceId: id[:], RootServiceName: root.ServiceName(), RootSpanName: root.GetName(),
			StartUnixNano: int64(first), DurationNanos: dur, SpanCount: uint32(len(spans)),
			KeptReasons: m.reasons[id],
		}
		for _, s := range spans {
			if statusName(s) == "error" {
				sum.ErrorCount++
			}
			sum.Services = append(sum.Services, s.ServiceName())
		}
		sum.Services = unionSorted(sum.Services)
		out = append(out, sum)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].StartUnixNano > out[j].StartUnixNano })
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = 20
	}
	if len(out) > limit {
		out = out[:limit]
	}
	return &readerpb.SearchResponse{Traces: out}, nil
}

func (m *memReader) Services(context.Context, *readerpb.ServicesRequest) (*readerpb.ServicesResponse, error) {
	var out []string
	for _, s := range m.spans {
		out = append(out, s.ServiceName())
	}
	return &readerpb.ServicesResponse{Services: unionSorted(out)}, nil
}

func (m *memReader) Operations(_ context.Context, req *readerpb.OperationsRequest) (*readerpb.OperationsResponse, error) {
	var out []*readerpb.Operation
	for _, s := range m.spans {
		if req.GetService() != "" && s.ServiceName() != req.GetService() {
			continue
		}
		kind := strings.ToLower(strings.TrimPrefix(s.GetKind().String(), "SPAN_KIND_"))
		out = append(out, &readerpb.Operation{Name: s.GetName(), SpanKind: kind, Service: s.ServiceName()})
	}
	return &readerpb.OperationsResponse{Operations: out}, nil
}

func (m *memReader) TagNames(context.Context, *readerpb.TagNamesRequest) (*readerpb.TagNamesResponse, error) {
	var res, sp []string
	for _, s := range m.spans {
		for _, kv := range s.Resource.Resource.GetAttributes() {
			res = append(res, kv.GetKey())
		}
		for _, kv := range s.GetAttributes() {
			sp = append(sp, kv.GetKey())
		}
	}
	return &readerpb.TagNamesResponse{Resource: unionSorted(res), Span: unionSorted(sp)}, nil
}

func (m *memReader) TagValues(_ context.Context, req *readerpb.TagValuesRequest) (*readerpb.TagValuesResponse, error) {
	var out []string
	for _, s := range m.spans {
		switch req.GetTag() {
		case "service.name":
			out = append(out, s.ServiceName())
		case "name":
			out = append(out, s.GetName())
		case "status":
			out = append(out, statusName(s))
		default:
			for _, kv := range append(slices.Clone(s.GetAttributes()), s.Resource.Resource.GetAttributes()...) {
				if kv.GetKey() == req.GetTag() {
					out = append(out, kv.GetValue().GetStringValue())
				}
			}
		}
	}
	return &readerpb.TagValuesResponse{Values: unionSorted(out)}, nil
}

// useMem selects the in-memory reader. The store-backed one (real Badger
// index.Store behind gRPC) runs with THREADLINE_QUERY_REAL_STORE=1; it becomes
// the default, served by readapi.New, once readapi exists and the store's
// tag-plus-time-range search matches reader.proto.
var useMem = os.Getenv("THREADLINE_QUERY_REAL_STORE") == ""

// shard is what one indexer holds.
type shard struct {
	spans   []span.Span
	reasons map[span.TraceID][]string
}

// startReaders serves each shard on its own gRPC server on 127.0.0.1:0 and
// returns clients for them.
func startReaders(t *testing.T, shards ...shard) []readerpb.ReaderClient {
	t.Helper()
	return startReadersTB(t, shards...)
}

func startReadersTB(t testing.TB, shards ...shard) []readerpb.ReaderClient {
	t.Helper()
	var clients []readerpb.ReaderClient
	for _, sh := range shards {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		srv := grpc.NewServer()
		if useMem {
			readerpb.RegisterReaderServer(srv, &memReader{spans: sh.spans, reasons: sh.reasons})
		} else {
			readerpb.RegisterReaderServer(srv, storeReader{st: openShardStore(t, sh)})
		}
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(lis) }()
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() {
			_ = conn.Close()
			srv.Stop()
			<-done
		})
		clients = append(clients, readerpb.NewReaderClient(conn))
	}
	return clients
}

// deadReader returns a client for an address nothing listens on.
func deadReader(t *testing.T) readerpb.ReaderClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return readerpb.NewReaderClient(conn)
}

// Fixture builders.

func strAttr(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func newResource(service string, extra ...*commonpb.KeyValue) *span.Resource {
	return &span.Resource{Resource: &resourcepb.Resource{Attributes: append([]*commonpb.KeyValue{strAttr("service.name", service)}, extra...)}}
}

func newScope(name, version string) *span.Scope {
	return &span.Scope{Scope: &commonpb.InstrumentationScope{Name: name, Version: version}}
}
