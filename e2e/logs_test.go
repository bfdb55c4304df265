package e2e

import (
	"context"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/contrib/bridges/otelslog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

type logLine struct {
	SeverityText string `json:"severityText"`
	Body         string `json:"body"`
	TraceID      string `json:"traceID"`
	SpanID       string `json:"spanID"`
	ServiceName  string `json:"serviceName"`
}

type logsResponse struct {
	Logs []logLine `json:"logs"`
}

// TestTraceToLogs emits spans and log/slog lines through the OpenTelemetry SDK
// (the otelslog bridge carries the trace context) and follows a trace to its
// logs: every level for a kept trace, WARN and above for a dropped one, the
// level policy and its time-boxed override for lines without a trace, full-
// text search back to the trace, and the Loki endpoint as Grafana calls it.
func TestTraceToLogs(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Indexer.Sampling.Baseline = 0
	cfg.Indexer.Sampling.TopN = 0 // keep errors only: the slow trace is dropped
	a := startAllInOne(t, cfg)
	ctx := context.Background()

	res := resource.NewWithAttributes("", attribute.String("service.name", "kitchen"))
	texp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(a.otlpGRPC), otlptracegrpc.WithInsecure())
	require.NoError(t, err)
	tp := sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithSyncer(texp))
	lexp, err := otlploggrpc.New(ctx, otlploggrpc.WithEndpoint(a.otlpGRPC), otlploggrpc.WithInsecure())
	require.NoError(t, err)
	lp := sdklog.NewLoggerProvider(sdklog.WithResource(res), sdklog.WithProcessor(sdklog.NewSimpleProcessor(lexp)))
	logger := otelslog.NewLogger("e2e", otelslog.WithLoggerProvider(lp))
	tr := tp.Tracer("e2e")

	emit := func(ctx context.Context, what string) {
		logger.DebugContext(ctx, what+" debug: checking the fryer")
		logger.InfoContext(ctx, what+" info: bowl queued")
		logger.WarnContext(ctx, what+" warn: broth running low")
		logger.ErrorContext(ctx, what+" error: burner offline")
	}
	kctx, kept := tr.Start(ctx, "cook ramen", trace.WithSpanKind(trace.SpanKindServer))
	emit(kctx, "kept")
	kept.SetStatus(codes.Error, "burner offline")
	kept.End()
	dctx, dropped := tr.Start(ctx, "cook udon")
	emit(dctx, "dropped")
	dropped.End()
	emit(ctx, "notrace")
	keptID, droppedID := kept.SpanContext().TraceID().String(), dropped.SpanContext().TraceID().String()

	var kl logsResponse
	require.Eventually(t, func() bool {
		kl = logsResponse{}
		return getJSON(t, a.query+"/api/v1/traces/"+keptID+"/logs", &kl) == 200 && len(kl.Logs) == 4
	}, 30*time.Second, 100*time.Millisecond, "kept trace's logs")
	for i, lvl := range []string{"debug", "info", "warn", "error"} {
		require.True(t, strings.HasPrefix(kl.Logs[i].Body, "kept "+lvl+":"), "line %d in order: %q", i, kl.Logs[i].Body)
		require.Equal(t, keptID, kl.Logs[i].TraceID)
		require.Equal(t, kept.SpanContext().SpanID().String(), kl.Logs[i].SpanID)
		require.Equal(t, "kitchen", kl.Logs[i].ServiceName)
	}
	var dl logsResponse
	require.Eventually(t, func() bool {
		dl = logsResponse{}
		return getJSON(t, a.query+"/api/v1/traces/"+droppedID+"/logs", &dl) == 200 && len(dl.Logs) == 2
	}, 30*time.Second, 100*time.Millisecond, "dropped trace keeps WARN+")
	require.Contains(t, dl.Logs[0].Body, "dropped warn:")
	require.Contains(t, dl.Logs[1].Body, "dropped error:")
	require.Equal(t, 404, getJSON(t, a.query+"/api/v2/traces/"+droppedID, nil), "the dropped trace itself is gone")

	// Full-text search finds a line by a word of its body and links it to its trace.
	var found logsResponse
	require.Eventually(t, func() bool {
		found = logsResponse{}
		return getJSON(t, a.query+"/api/v1/logs/search?"+url.Values{"q": {"burner"}}.Encode(), &found) == 200 && len(found.Logs) >= 3
	}, 30*time.Second, 100*time.Millisecond)
	traces := map[string]int{}
	for _, l := range found.Logs {
		traces[l.TraceID]++
	}
	require.Equal(t, map[string]int{keptID: 1, droppedID: 1, "": 1}, traces, "kept, dropped (ERROR kept) and traceless (ERROR >= INFO)")

	// Lines without a trace: INFO and up by default.
	notrace := func() []string {
		var r logsResponse
		require.Equal(t, 200, getJSON(t, a.query+"/api/v1/logs/search?"+url.Values{"q": {"notrace"}, "limit": {"100"}}.Encode(), &r))
		var out []string
		for _, l := range r.Logs {
			out = append(out, strings.Fields(l.Body)[1])
		}
		return out
	}
	require.Eventually(t, func() bool { return len(notrace()) == 3 }, 20*time.Second, 100*time.Millisecond)
	require.NotContains(t, notrace(), "debug:")

	// A time-boxed DEBUG override for the service applies, then reverts by itself.
	code, _, body := postBody(t, a.query+"/api/v1/logs/levels", "application/json", []byte(`{"service":"kitchen","level":"debug","duration":"2s"}`), nil)
	require.Equal(t, 200, code, string(body))
	logger.Debug("override debug: now visible")
	require.Eventually(t, func() bool {
		var r logsResponse
		return getJSON(t, a.query+"/api/v1/logs/search?q=override", &r) == 200 && len(r.Logs) == 1
	}, 20*time.Second, 100*time.Millisecond, "DEBUG stored under the override")
	time.Sleep(2500 * time.Millisecond)
	logger.Debug("expired debug: invisible again")
	logger.Info("expired info: marker")
	require.Eventually(t, func() bool {
		var r logsResponse
		return getJSON(t, a.query+"/api/v1/logs/search?q=marker", &r) == 200 && len(r.Logs) == 1
	}, 20*time.Second, 100*time.Millisecond)
	var r logsResponse
	require.Equal(t, 200, getJSON(t, a.query+"/api/v1/logs/search?q=invisible", &r))
	require.Empty(t, r.Logs, "the override expired")

	// Loki, as Grafana's trace-to-logs link asks it.
	now := time.Now()
	lq := url.Values{"direction": {"backward"}, "end": {itoa(now.UnixNano())}, "limit": {"100"},
		"query": {`{trace_id="` + keptID + `"} |= "burner"`}, "start": {itoa(now.Add(-time.Hour).UnixNano())}, "step": {"15000ms"}}
	var loki struct {
		Status string `json:"status"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Stream map[string]string `json:"stream"`
				Values [][2]string       `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	require.Equal(t, 200, getJSON(t, a.query+"/loki/api/v1/query_range?"+lq.Encode(), &loki))
	require.Equal(t, "success", loki.Status)
	require.Equal(t, "streams", loki.Data.ResultType)
	n := 0
	for _, s := range loki.Data.Result {
		for _, v := range s.Values {
			require.Contains(t, v[1], "burner")
			n++
		}
	}
	require.Equal(t, 1, n, "only the kept trace's line containing the word")

	require.NoError(t, errors.Join(tp.Shutdown(ctx), lp.Shutdown(ctx)))
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
