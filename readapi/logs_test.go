package readapi

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/blevesearch/bleve/v2"
	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	otlplogs "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/threadline/threadline/logstore"
	logspb "github.com/threadline/threadline/proto/logs/v1"
	"github.com/threadline/threadline/span"
)

// Bleve's package init starts a process-wide analysis worker pool, which
// this package's goleak check would report. Stop it at start-up and run it
// only around the tests that open a log store.
func init() { bleve.Config.Shutdown() }

func withBleve(t *testing.T) {
	t.Helper()
	bleve.Config.SetAnalysisQueueSize(4)
	t.Cleanup(bleve.Config.Shutdown) // runs after the store's Close (LIFO)
}

func logLine(svc string, at time.Time, sev int32, body string, tid span.TraceID, sid span.SpanID) logstore.Record {
	return logstore.Record{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("service.name", svc)}},
		Log: &otlplogs.LogRecord{
			TimeUnixNano: uint64(at.UnixNano()), SeverityNumber: otlplogs.SeverityNumber(sev),
			TraceId: tid[:], SpanId: sid[:],
			Body:       &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: body}},
			Attributes: []*commonpb.KeyValue{str("user", "alice")},
		},
	}
}

func serveLogs(t *testing.T) (logspb.LogReaderClient, time.Time) {
	t.Helper()
	withBleve(t)
	st, err := logstore.Open(t.TempDir(), nil, nil, logstore.DefaultOptions())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	t0 := time.Now().Add(-time.Minute)
	require.NoError(t, st.Write(context.Background(), []logstore.Record{
		logLine("checkout", t0.Add(2*time.Millisecond), logstore.SeverityError, "payment failed", traceID, span.SpanID{7: 2}),
		logLine("checkout", t0, logstore.SeverityDebug, "cart loaded", traceID, span.SpanID{7: 1}),
		logLine("payments", t0.Add(time.Millisecond), logstore.SeverityInfo, "charging", span.TraceID{9, 15: 9}, span.SpanID{7: 1}),
	}))

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	logspb.RegisterLogReaderServer(srv, NewLogs(st, st.Policy(), nil))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.GracefulStop()
		require.NoError(t, <-done)
	})
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, conn.Close()) })
	return logspb.NewLogReaderClient(conn), t0
}

func TestLogReadAPI(t *testing.T) {
	ctx := context.Background()
	c, t0 := serveLogs(t)
	bodies := func(res *logspb.LogsResponse) []string {
		var out []string
		for _, l := range res.GetLogs() {
			out = append(out, l.GetBody())
		}
		return out
	}

	t.Run("TraceLogs", func(t *testing.T) {
		res, err := c.TraceLogs(ctx, &logspb.TraceLogsRequest{TraceId: traceID[:]})
		require.NoError(t, err)
		require.Equal(t, []string{"cart loaded", "payment failed"}, bodies(res))
		first := res.Logs[0]
		require.Equal(t, uint64(t0.UnixNano()), first.GetTimeUnixNano())
		require.Equal(t, traceID[:], first.GetTraceId())
		require.Equal(t, "checkout", first.GetServiceName())
		require.NotEmpty(t, first.GetRecord(), "typed attributes travel as the OTLP record")

		res, err = c.TraceLogs(ctx, &logspb.TraceLogsRequest{TraceId: traceID[:], MinSeverity: logstore.SeverityWarn})
		require.NoError(t, err)
		require.Equal(t, []string{"payment failed"}, bodies(res))
		res, err = c.TraceLogs(ctx, &logspb.TraceLogsRequest{TraceId: traceID[:], SpanId: []byte{7: 1}})
		require.NoError(t, err)
		require.Equal(t, []string{"cart loaded"}, bodies(res))
	})

	t.Run("SearchAndSelect", func(t *testing.T) {
		res, err := c.SearchLogs(ctx, &logspb.SearchLogsRequest{Query: "payment"})
		require.NoError(t, err)
		require.Equal(t, []string{"payment failed"}, bodies(res))
		res, err = c.SelectLogs(ctx, &logspb.SelectLogsRequest{Service: "payments"})
		require.NoError(t, err)
		require.Equal(t, []string{"charging"}, bodies(res))
		vals, err := c.LabelValues(ctx, &logspb.LabelValuesRequest{Name: "service_name"})
		require.NoError(t, err)
		require.Equal(t, []string{"checkout", "payments"}, vals.GetValues())
	})

	t.Run("Overrides", func(t *testing.T) {
		res, err := c.SetLevelOverride(ctx, &logspb.SetLevelOverrideRequest{Service: "checkout", SeverityNumber: logstore.SeverityDebug, DurationMs: 60_000})
		require.NoError(t, err)
		require.InDelta(t, time.Now().Add(time.Minute).UnixNano(), res.GetOverride().GetUntilUnixNano(), float64(5*time.Second))
		list, err := c.ListLevelOverrides(ctx, &logspb.ListLevelOverridesRequest{})
		require.NoError(t, err)
		require.Len(t, list.GetOverrides(), 1)
		require.Equal(t, "checkout", list.GetOverrides()[0].GetService())
		_, err = c.SetLevelOverride(ctx, &logspb.SetLevelOverrideRequest{Service: "checkout", SeverityNumber: logstore.SeverityDebug})
		require.NoError(t, err)
		list, err = c.ListLevelOverrides(ctx, &logspb.ListLevelOverridesRequest{})
		require.NoError(t, err)
		require.Empty(t, list.GetOverrides(), "a zero duration lifts the override")
	})

	t.Run("InvalidArgument", func(t *testing.T) {
		for name, call := range map[string]func() error{
			"short trace ID": func() error {
				_, err := c.TraceLogs(ctx, &logspb.TraceLogsRequest{TraceId: []byte{1}})
				return err
			},
			"bad span ID": func() error {
				_, err := c.TraceLogs(ctx, &logspb.TraceLogsRequest{TraceId: traceID[:], SpanId: []byte{1}})
				return err
			},
			"bad query": func() error {
				_, err := c.SearchLogs(ctx, &logspb.SearchLogsRequest{Query: `body:"open`})
				return err
			},
			"bad level": func() error {
				_, err := c.SelectLogs(ctx, &logspb.SelectLogsRequest{Level: "loud"})
				return err
			},
			"bad override": func() error {
				_, err := c.SetLevelOverride(ctx, &logspb.SetLevelOverrideRequest{Service: "x", SeverityNumber: 99, DurationMs: 1000})
				return err
			},
			"override too long": func() error {
				_, err := c.SetLevelOverride(ctx, &logspb.SetLevelOverrideRequest{Service: "x", SeverityNumber: 5, DurationMs: int64(72 * time.Hour / time.Millisecond)})
				return err
			},
		} {
			require.Equal(t, codes.InvalidArgument, status.Code(call()), name)
		}
	})
}
