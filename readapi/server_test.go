package readapi

import (
	"context"
	"net"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/threadline/threadline/clockskew"
	"github.com/threadline/threadline/index"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func str(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func resource(svc string) *span.Resource {
	return &span.Resource{Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("service.name", svc)}}}
}

var traceID = span.TraceID{1, 2, 3, 15: 4}

func fixture() []index.KeptTrace {
	front, back := resource("frontend"), resource("backend")
	scope := &span.Scope{Scope: &commonpb.InstrumentationScope{Name: "lib"}}
	mk := func(id, parent byte, res *span.Resource, name string, start uint64, code tracepb.Status_StatusCode) span.Span {
		sp := &tracepb.Span{
			TraceId: traceID[:], SpanId: []byte{7: id}, Name: name, Kind: tracepb.Span_SPAN_KIND_SERVER,
			StartTimeUnixNano: 1_700_000_000_000_000_000 + start, EndTimeUnixNano: 1_700_000_000_000_000_000 + start + 1000,
			Attributes: []*commonpb.KeyValue{str("http.route", "/"+name)},
			Status:     &tracepb.Status{Code: code},
		}
		if parent != 0 {
			sp.ParentSpanId = []byte{7: parent}
		}
		return span.Span{Span: sp, Resource: res, Scope: scope}
	}
	return []index.KeptTrace{{
		Trace: span.Trace{ID: traceID, Spans: []span.Span{
			mk(1, 0, front, "home", 0, tracepb.Status_STATUS_CODE_UNSET),
			mk(2, 1, back, "load", 100, tracepb.Status_STATUS_CODE_ERROR),
			mk(3, 1, front, "render", 500, tracepb.Status_STATUS_CODE_OK),
		}},
		Reasons:  []string{"error"},
		Warnings: []string{"skew"},
	}}
}

// serve starts the read API over a real store holding the writes behind a
// real gRPC server on loopback and returns a client.
func serve(t *testing.T, writes ...[]index.KeptTrace) readerpb.ReaderClient {
	t.Helper()
	st, err := index.Open(t.TempDir(), nil, nil, index.DefaultOptions())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	for _, w := range writes {
		require.NoError(t, st.WriteTraces(context.Background(), w))
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	readerpb.RegisterReaderServer(srv, New(st, nil))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.GracefulStop()
		require.NoError(t, <-done)
	})
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, conn.Close()) })
	return readerpb.NewReaderClient(conn)
}

func TestReadAPI(t *testing.T) {
	ctx := context.Background()
	c := serve(t, fixture())

	// An adjusted read has every span's logical timestamp (parent first,
	// then by start time), assigned as it is read; a raw read has none.
	t.Run("GetTrace", func(t *testing.T) {
		for _, raw := range []bool{false, true} {
			res, err := c.GetTrace(ctx, &readerpb.GetTraceRequest{TraceId: traceID[:], Raw: raw})
			require.NoError(t, err)
			require.True(t, res.Found)
			require.Equal(t, []string{"error"}, res.KeptReasons)
			require.Equal(t, []string{"skew"}, res.Warnings)
			var td tracepb.TracesData
			require.NoError(t, proto.Unmarshal(res.TracesData, &td))
			logical := takeLogicalTimes(&td)
			if raw {
				require.Empty(t, logical)
			} else {
				require.Equal(t, map[string]int64{"home": 1, "load": 2, "render": 3}, logical)
			}
			want := span.ToTracesData(fixture()[0].Trace.Spans)
			require.True(t, proto.Equal(want, &td), "got %v", &td)
			require.Len(t, td.ResourceSpans, 2, "spans regrouped by resource")
		}
	})

	t.Run("GetTraceMissing", func(t *testing.T) {
		res, err := c.GetTrace(ctx, &readerpb.GetTraceRequest{TraceId: []byte{15: 9}})
		require.NoError(t, err)
		require.False(t, res.Found)
		require.Empty(t, res.TracesData)
	})

	t.Run("InvalidArgument", func(t *testing.T) {
		for name, call := range map[string]func() error{
			"short trace ID": func() error {
				_, err := c.GetTrace(ctx, &readerpb.GetTraceRequest{TraceId: []byte{1, 2, 3}})
				return err
			},
			"zero trace ID": func() error {
				_, err := c.GetTrace(ctx, &readerpb.GetTraceRequest{TraceId: make([]byte, 16)})
				return err
			},
			"bad status": func() error {
				_, err := c.SearchTraces(ctx, &readerpb.SearchRequest{Tags: map[string]string{"status": "meh"}})
				return err
			},
			"empty tag": func() error {
				_, err := c.TagValues(ctx, &readerpb.TagValuesRequest{})
				return err
			},
		} {
			require.Equal(t, codes.InvalidArgument, status.Code(call()), name)
		}
	})

	t.Run("SearchTraces", func(t *testing.T) {
		for _, tc := range []struct {
			tags  map[string]string
			found bool
		}{
			{map[string]string{"service.name": "backend", "status": "error"}, true},
			{map[string]string{"http.route": "/render"}, true},
			{map[string]string{"service.name": "nope"}, false},
		} {
			res, err := c.SearchTraces(ctx, &readerpb.SearchRequest{Tags: tc.tags})
			require.NoError(t, err)
			if !tc.found {
				require.Empty(t, res.Traces)
				continue
			}
			require.Len(t, res.Traces, 1)
			got := res.Traces[0]
			require.Equal(t, traceID[:], got.TraceId)
			require.Equal(t, "home", got.RootSpanName)
			require.EqualValues(t, 3, got.SpanCount)
			require.EqualValues(t, 1, got.ErrorCount)
		}
	})

	t.Run("Lists", func(t *testing.T) {
		svcs, err := c.Services(ctx, &readerpb.ServicesRequest{})
		require.NoError(t, err)
		require.Equal(t, []string{"backend", "frontend"}, svcs.Services)

		ops, err := c.Operations(ctx, &readerpb.OperationsRequest{Service: "frontend"})
		require.NoError(t, err)
		require.Len(t, ops.Operations, 2)
		require.Equal(t, "home", ops.Operations[0].Name)
		require.Equal(t, "server", ops.Operations[0].SpanKind)
		require.Equal(t, "frontend", ops.Operations[0].Service)

		names, err := c.TagNames(ctx, &readerpb.TagNamesRequest{})
		require.NoError(t, err)
		require.Equal(t, []string{"service.name"}, names.Resource)
		require.Equal(t, []string{"http.route"}, names.Span)

		vals, err := c.TagValues(ctx, &readerpb.TagValuesRequest{Tag: "http.route", Limit: 2})
		require.NoError(t, err)
		require.Equal(t, []string{"/home", "/load"}, vals.Values)
	})
}

// TestNoStoreIsUnimplemented: a reader built without a span store (RED only)
// answers span calls with Unimplemented rather than crashing.
func TestNoStoreIsUnimplemented(t *testing.T) {
	srv := New(nil, nil)
	_, err := srv.SearchTraces(context.Background(), &readerpb.SearchRequest{})
	require.Equal(t, codes.Unimplemented, status.Code(err))
	_, err = srv.GetTrace(context.Background(), &readerpb.GetTraceRequest{TraceId: make([]byte, 15)})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "argument checks still come first")
	id := [16]byte{1}
	_, err = srv.GetTrace(context.Background(), &readerpb.GetTraceRequest{TraceId: id[:]})
	require.Equal(t, codes.Unimplemented, status.Code(err))
}

// TestLogicalTimesOverWrites: the spans of a trace written twice (a late
// span after the first write) are numbered together as they are read, the
// late one after its parent: stamped at write time, each write would have
// numbered its own spans from 1.
func TestLogicalTimesOverWrites(t *testing.T) {
	first := fixture()
	parent := first[0].Trace.Spans[2] // render, the last to start
	late := proto.Clone(parent.Span).(*tracepb.Span)
	late.SpanId, late.ParentSpanId, late.Name = []byte{7: 4}, parent.GetSpanId(), "flush"
	late.StartTimeUnixNano += 10
	late.Attributes = nil
	c := serve(t, first, []index.KeptTrace{{Trace: span.Trace{ID: traceID, Spans: []span.Span{{Span: late, Resource: parent.Resource, Scope: parent.Scope}}}}})
	res, err := c.GetTrace(context.Background(), &readerpb.GetTraceRequest{TraceId: traceID[:]})
	require.NoError(t, err)
	var td tracepb.TracesData
	require.NoError(t, proto.Unmarshal(res.TracesData, &td))
	require.Equal(t, map[string]int64{"home": 1, "load": 2, "render": 3, "flush": 4}, takeLogicalTimes(&td))
}

// takeLogicalTimes removes the spans' logical timestamps and returns them
// by span name.
func takeLogicalTimes(td *tracepb.TracesData) map[string]int64 {
	logical := map[string]int64{}
	for _, rs := range td.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				sp.Attributes = slices.DeleteFunc(sp.Attributes, func(kv *commonpb.KeyValue) bool {
					if kv.GetKey() == clockskew.AttrLogicalTime {
						logical[sp.GetName()] = kv.GetValue().GetIntValue()
						return true
					}
					return false
				})
			}
		}
	}
	return logical
}
