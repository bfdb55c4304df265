package query

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/index"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
)

// storeReader serves reader.proto over a real index.Store in t.TempDir(). It
// stands in for readapi.New until that package exists; it maps calls one to
// one, as reader.proto documents, and adds no semantics of its own.
type storeReader struct {
	readerpb.UnimplementedReaderServer
	st *index.Store
}

func openShardStore(t testing.TB, sh shard) *index.Store {
	t.Helper()
	st, err := index.Open(t.TempDir(), slog.New(slog.DiscardHandler), nil, index.DefaultOptions())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	byTrace := map[span.TraceID]*index.KeptTrace{}
	var order []span.TraceID
	for _, s := range sh.spans {
		id, err := span.TraceIDFromBytes(s.GetTraceId())
		require.NoError(t, err)
		kt, ok := byTrace[id]
		if !ok {
			kt = &index.KeptTrace{Trace: span.Trace{ID: id}, Reasons: sh.reasons[id]}
			byTrace[id] = kt
			order = append(order, id)
		}
		kt.Trace.Spans = append(kt.Trace.Spans, s)
	}
	var kept []index.KeptTrace
	for _, id := range order {
		kept = append(kept, *byTrace[id])
	}
	require.NoError(t, st.WriteTraces(context.Background(), kept))
	return st
}

func (r storeReader) GetTrace(ctx context.Context, req *readerpb.GetTraceRequest) (*readerpb.GetTraceResponse, error) {
	id, err := span.TraceIDFromBytes(req.GetTraceId())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	tr, found, err := r.st.Trace(ctx, id)
	if err != nil || !found {
		return &readerpb.GetTraceResponse{}, err
	}
	b, err := proto.Marshal(span.ToTracesData(tr.Spans))
	if err != nil {
		return nil, err
	}
	return &readerpb.GetTraceResponse{Found: true, TracesData: b, KeptReasons: tr.Reasons, Warnings: tr.Warnings}, nil
}

func (r storeReader) SearchTraces(ctx context.Context, req *readerpb.SearchRequest) (*readerpb.SearchResponse, error) {
	s, err := r.st.Search(ctx, req)
	return &readerpb.SearchResponse{Traces: s}, err
}

func (r storeReader) Services(ctx context.Context, _ *readerpb.ServicesRequest) (*readerpb.ServicesResponse, error) {
	s, err := r.st.Services(ctx)
	return &readerpb.ServicesResponse{Services: s}, err
}

func (r storeReader) Operations(ctx context.Context, req *readerpb.OperationsRequest) (*readerpb.OperationsResponse, error) {
	ops, err := r.st.Operations(ctx, req.GetService())
	return &readerpb.OperationsResponse{Operations: ops}, err
}

func (r storeReader) TagNames(ctx context.Context, _ *readerpb.TagNamesRequest) (*readerpb.TagNamesResponse, error) {
	res, sp, err := r.st.TagNames(ctx)
	return &readerpb.TagNamesResponse{Resource: res, Span: sp}, err
}

func (r storeReader) TagValues(ctx context.Context, req *readerpb.TagValuesRequest) (*readerpb.TagValuesResponse, error) {
	v, err := r.st.TagValues(ctx, req.GetTag(), int(req.GetLimit()))
	return &readerpb.TagValuesResponse{Values: v}, err
}
