package query

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/readapi"
	"github.com/threadline/threadline/red"
	"github.com/threadline/threadline/span"
)

// redIndexer is one indexer's RED store behind the real read API on loopback.
func redIndexer(t *testing.T, traces []*span.Trace, kept map[span.TraceID]bool) readerpb.ReaderClient {
	t.Helper()
	st, err := red.Open(t.TempDir(), nil, nil, red.DefaultOptions())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	for _, tr := range traces {
		st.Observe(tr)
		if kept[tr.ID] {
			st.Link(tr.ID, []string{"error"})
		}
	}
	require.NoError(t, st.Flush(context.Background()))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	readerpb.RegisterReaderServer(srv, readapi.New(nil, nil, readapi.WithRED(st)))
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Stop()
		<-done
	})
	return readerpb.NewReaderClient(conn)
}

// redTraces builds n one-span traces of svc/op starting at t0+at, each
// lasting dur; every errEvery-th has status ERROR (0: none).
func redTraces(first byte, n int, svc, op string, at, dur time.Duration, errEvery int) []*span.Trace {
	res := newResource(svc)
	var out []*span.Trace
	for i := range n {
		id := span.TraceID{0: first, 14: byte(i >> 8), 15: byte(i)}
		code := tracepb.Status_STATUS_CODE_OK
		if errEvery > 0 && i%errEvery == 0 {
			code = tracepb.Status_STATUS_CODE_ERROR
		}
		out = append(out, &span.Trace{ID: id, Spans: []span.Span{{Resource: res, Span: &tracepb.Span{
			TraceId: id[:], SpanId: []byte{7: 1}, Name: op, Kind: tracepb.Span_SPAN_KIND_SERVER,
			StartTimeUnixNano: uint64(t0.Add(at).UnixNano()), EndTimeUnixNano: uint64(t0.Add(at + dur).UnixNano()),
			Status: &tracepb.Status{Code: code},
		}}}})
	}
	return out
}

func redEnv(t *testing.T) (*env, span.TraceID, span.TraceID) {
	// Indexer A: 99 fast spans, one kept error. Indexer B: one 10 s span, kept.
	a := redTraces(1, 99, "frontend", "GET /", time.Second, time.Millisecond, 50)
	b := redTraces(2, 1, "frontend", "GET /", 2*time.Second, 10*time.Second, 0)
	b = append(b, redTraces(3, 5, "backend", "load", 15*time.Second, 5*time.Millisecond, 0)...)
	kept := map[span.TraceID]bool{a[0].ID: true, b[0].ID: true}
	e := newEnv(t, []readerpb.ReaderClient{redIndexer(t, a, kept), redIndexer(t, b, kept)})
	return e, a[0].ID, b[0].ID
}

func TestREDRoute(t *testing.T) {
	e, errTrace, slowTrace := redEnv(t)
	path := fmt.Sprintf("/api/v1/metrics/red?service=frontend&start=%d&end=%d&step=10s", t0.Unix(), t0.Add(time.Minute).Unix())
	code, hdr, body := e.grafana(t, path, browserAccept)
	require.Equal(t, http.StatusOK, code, string(body))
	require.Equal(t, "application/json", hdr.Get("Content-Type"))
	m := decodeJSON(t, body)
	require.Len(t, m, 1, "only series: %s", body)
	series := m["series"].([]any)
	require.Len(t, series, 6, "one point per step, empty ones included")

	// Bare seconds, as Grafana and the UI send the step, mean the same.
	code, _, secBody := e.grafana(t, strings.Replace(path, "step=10s", "step=10", 1), browserAccept)
	require.Equal(t, http.StatusOK, code, string(secBody))
	require.JSONEq(t, string(body), string(secBody))

	p := series[0].(map[string]any)
	require.Equal(t, float64(t0.Unix()), p["t"])
	require.Equal(t, 100.0, p["count"])
	require.Equal(t, 2.0, p["errors"])
	require.InDelta(t, 10.0, p["rate"], 1e-9)
	require.InDelta(t, 0.02, p["errorRate"], 1e-9)
	// Histograms are summed before the percentile: p99 of the 100 spans is
	// a 1 ms one, where averaging per-indexer p99s would give about 5 s.
	require.InDelta(t, 1.0, p["p99"], 0.6)
	require.InDelta(t, 1.0, p["p50"], 0.6)
	require.Equal(t, []any{errTrace.String(), slowTrace.String()}, p["traceIDs"])
	empty := series[3].(map[string]any)
	for _, k := range []string{"count", "errors", "rate", "errorRate", "p50", "p90", "p99"} {
		require.Equal(t, 0.0, empty[k], k)
	}
	require.Equal(t, []any{}, empty["traceIDs"])

	// RFC3339 bounds, default step, operation filter and the other service.
	path = "/api/v1/metrics/red?service=backend&operation=load&start=" + t0.Format(time.RFC3339) + "&end=" + t0.Add(20*time.Second).Format(time.RFC3339)
	code, _, body = e.grafana(t, path, browserAccept)
	require.Equal(t, http.StatusOK, code, string(body))
	series = decodeJSON(t, body)["series"].([]any)
	require.Len(t, series, 2)
	require.Equal(t, 5.0, series[1].(map[string]any)["count"])
	require.InDelta(t, 5.0, series[1].(map[string]any)["p50"], 5*0.6)
}

func TestREDBadParameters(t *testing.T) {
	e, _, _ := redEnv(t)
	for _, q := range []string{
		"start=yesterday",
		"end=-5",
		"step=0s",
		"step=fast",
		"step=500ms",
		fmt.Sprintf("start=%d&end=%d", t0.Unix(), t0.Add(-time.Hour).Unix()),
		fmt.Sprintf("start=%d&end=%d&step=1s", t0.Unix(), t0.Add(24*time.Hour).Unix()),
	} {
		code, _, body := e.grafana(t, "/api/v1/metrics/red?"+q, browserAccept)
		require.Equal(t, http.StatusBadRequest, code, q)
		require.Contains(t, decodeJSON(t, body), "error", q)
	}
}

func TestREDNoIndexerAnswers(t *testing.T) {
	e := newEnv(t, []readerpb.ReaderClient{deadReader(t)})
	code, _, _ := e.grafana(t, "/api/v1/metrics/red", browserAccept)
	require.Equal(t, http.StatusServiceUnavailable, code)
	code, _, _ = e.grafana(t, "/api/v1/metrics/prometheus", "")
	require.Equal(t, http.StatusServiceUnavailable, code)
}

// openMetricsLine is the OpenMetrics 1.0 ABNF for the lines we emit: a
// descriptor, or a sample with an optional exemplar "# {labels} value [ts]".
var openMetricsLine = regexp.MustCompile(`^(# (HELP|TYPE|UNIT) [a-zA-Z_:][a-zA-Z0-9_:]* .*` +
	`|[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? [-+0-9.eEInfa]+` +
	`( # \{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\} [-+0-9.eE]+( [0-9.eE+]+)?)?)$`)

func TestREDPrometheusExposition(t *testing.T) {
	e, errTrace, slowTrace := redEnv(t)
	code, hdr, body := e.grafana(t, "/api/v1/metrics/prometheus", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
	require.Equal(t, http.StatusOK, code, string(body))
	require.Equal(t, "application/openmetrics-text; version=1.0.0; charset=utf-8", hdr.Get("Content-Type"))
	text := string(body)
	require.True(t, strings.HasSuffix(text, "\n# EOF\n"), "OpenMetrics ends with # EOF")

	// Every line follows the OpenMetrics grammar; collect the exemplars.
	lines := strings.Split(strings.TrimSuffix(text, "# EOF\n"), "\n")
	exemplars := map[string]bool{}
	exRe := regexp.MustCompile(`# \{trace_id="([0-9a-f]{32})"\} ([0-9.e+-]+) ([0-9.e+]+)$`)
	var stripped []string
	for _, l := range lines[:len(lines)-1] {
		require.Regexp(t, openMetricsLine, l)
		if m := exRe.FindStringSubmatch(l); m != nil {
			exemplars[m[1]] = true
			require.True(t, strings.HasPrefix(l, "threadline_span_duration_seconds_bucket{"), l)
			l = strings.TrimSuffix(l, " "+m[0])
		}
		stripped = append(stripped, l)
	}
	require.Equal(t, map[string]bool{errTrace.String(): true, slowTrace.String(): true}, exemplars)

	// The samples, without exemplars, parse with prometheus/common's parser
	// (this release has no OpenMetrics parser).
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(strings.Join(stripped, "\n") + "\n"))
	require.NoError(t, err)
	hist := fams["threadline_span_duration_seconds"]
	require.NotNil(t, hist)
	var total uint64
	for _, m := range hist.GetMetric() {
		h := m.GetHistogram()
		total += h.GetSampleCount()
		require.Len(t, h.GetBucket(), len(red.Bounds())+1)
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		require.Contains(t, labels, "service")
		require.Contains(t, labels, "operation")
		require.Equal(t, "server", labels["span_kind"])
		require.Contains(t, []string{"ok", "error"}, labels["status_code"])
	}
	require.Equal(t, uint64(105), total)
	require.Contains(t, text, `threadline_span_requests_total{operation="GET /",service="frontend",span_kind="server",status_code="ok"} 98`)
	require.Contains(t, text, `threadline_span_errors_total{operation="GET /",service="frontend",span_kind="server",status_code="error"} 2`)
	require.Contains(t, text, "# TYPE threadline_span_requests counter\n")
	require.Contains(t, text, "# TYPE threadline_span_duration_seconds histogram\n")
}
