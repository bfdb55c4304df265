package readapi

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/red"
	"github.com/threadline/threadline/span"
)

// serveRED serves the read API with (or without) a real RED store on loopback.
func serveRED(t *testing.T, st REDStore) readerpb.ReaderClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	var opts []Option
	if st != nil {
		opts = append(opts, WithRED(st))
	}
	readerpb.RegisterReaderServer(srv, New(nil, nil, opts...))
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

func TestQueryREDRoundTrip(t *testing.T) {
	ctx := context.Background()
	st, err := red.Open(t.TempDir(), nil, nil, red.DefaultOptions())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	front := resource("frontend")
	mk := func(id span.TraceID, sid byte, at, dur time.Duration, code tracepb.Status_StatusCode) span.Span {
		return span.Span{Resource: front, Span: &tracepb.Span{
			TraceId: id[:], SpanId: []byte{7: sid}, Name: "GET /", Kind: tracepb.Span_SPAN_KIND_SERVER,
			StartTimeUnixNano: uint64(t0.Add(at).UnixNano()), EndTimeUnixNano: uint64(t0.Add(at + dur).UnixNano()),
			Status: &tracepb.Status{Code: code},
		}}
	}
	kept, dropped := span.TraceID{15: 1}, span.TraceID{15: 2}
	st.Observe(&span.Trace{ID: kept, Spans: []span.Span{mk(kept, 1, time.Second, 30*time.Millisecond, tracepb.Status_STATUS_CODE_ERROR)}})
	st.Link(kept, []string{"error"})
	st.Observe(&span.Trace{ID: dropped, Spans: []span.Span{
		mk(dropped, 1, 2*time.Second, 2*time.Millisecond, tracepb.Status_STATUS_CODE_OK),
		mk(dropped, 2, 25*time.Second, 2*time.Millisecond, tracepb.Status_STATUS_CODE_OK),
	}})
	require.NoError(t, st.Flush(ctx))

	c := serveRED(t, st)
	res, err := c.QueryRED(ctx, &readerpb.REDRequest{
		Service: "frontend", StartUnixNano: t0.UnixNano(), EndUnixNano: t0.Add(time.Minute).UnixNano(), StepNanos: int64(10 * time.Second),
	})
	require.NoError(t, err)
	require.Equal(t, red.BoundsSeconds(), res.BucketBoundsSeconds)
	require.Equal(t, t0.UnixNano(), res.StartUnixNano)
	require.Equal(t, int64(10*time.Second), res.StepNanos)
	require.Len(t, res.Points, 2, "empty steps are left out")
	p := res.Points[0]
	require.Equal(t, t0.UnixNano(), p.StartUnixNano)
	require.Equal(t, uint64(2), p.Count)
	require.Equal(t, uint64(1), p.Errors)
	require.Len(t, p.BucketCounts, len(res.BucketBoundsSeconds)+1)
	require.Len(t, p.Traces, 1)
	require.Equal(t, kept[:], p.Traces[0].TraceId)
	require.True(t, p.Traces[0].Error)
	require.Equal(t, uint64(1), res.Points[1].Count)
	require.Empty(t, res.Points[1].Traces)

	tot, err := c.REDTotals(ctx, &readerpb.REDTotalsRequest{})
	require.NoError(t, err)
	require.Len(t, tot.Series, 2)
	errSeries := tot.Series[1]
	require.Equal(t, "server", errSeries.SpanKind)
	require.Equal(t, "error", errSeries.StatusCode)
	require.Equal(t, uint64(1), errSeries.Errors)
	require.Len(t, errSeries.Exemplars, 1)
	require.Equal(t, kept[:], errSeries.Exemplars[0].TraceId)
	require.InDelta(t, 0.03, errSeries.Exemplars[0].ValueSeconds, 1e-9)
	require.Empty(t, tot.Series[0].Exemplars, "dropped traces are never exemplars")

	_, err = c.QueryRED(ctx, &readerpb.REDRequest{StartUnixNano: t0.UnixNano(), EndUnixNano: t0.UnixNano()})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
}

func TestREDNotEnabled(t *testing.T) {
	c := serveRED(t, nil)
	_, err := c.QueryRED(context.Background(), &readerpb.REDRequest{})
	require.Equal(t, codes.Unimplemented, status.Code(err))
	_, err = c.REDTotals(context.Background(), &readerpb.REDTotalsRequest{})
	require.Equal(t, codes.Unimplemented, status.Code(err))
}
