package query

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blevesearch/bleve/v2"
	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	otlplogs "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/threadline/threadline/logstore"
	logspb "github.com/threadline/threadline/proto/logs/v1"
	"github.com/threadline/threadline/readapi"
	"github.com/threadline/threadline/span"
)

// Bleve's package init starts a process-wide analysis worker pool, which
// this package's goleak check would report. Stop it at start-up and run it
// only around the tests that open a log store.
func init() { bleve.Config.Shutdown() }

// logsEnv is an API over real log stores behind real gRPC log servers.
type logsEnv struct {
	api    *API
	stores []*logstore.Store
	t0     time.Time
}

func logLineRec(svc string, at time.Time, sev int32, body string, tid *span.TraceID, sid *span.SpanID, attrs ...*commonpb.KeyValue) logstore.Record {
	l := &otlplogs.LogRecord{
		TimeUnixNano: uint64(at.UnixNano()), SeverityNumber: otlplogs.SeverityNumber(sev),
		Body:       &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: body}},
		Attributes: attrs,
	}
	if tid != nil {
		l.TraceId = tid[:]
	}
	if sid != nil {
		l.SpanId = sid[:]
	}
	return logstore.Record{Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{strAttr("service.name", svc)}}, Log: l}
}

func startLogReader(t testing.TB, st *logstore.Store) logspb.LogReaderClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	logspb.RegisterLogReaderServer(srv, readapi.NewLogs(st, st.Policy(), nil))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.GracefulStop()
		require.NoError(t, <-done)
	})
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, conn.Close()) })
	return logspb.NewLogReaderClient(conn)
}

func deadLogReader(t *testing.T) logspb.LogReaderClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return logspb.NewLogReaderClient(conn)
}

// newLogsEnv splits trace A's lines over two indexers the way a rebalance
// does, with one line stored on both.
func newLogsEnv(t testing.TB, extra ...logspb.LogReaderClient) *logsEnv {
	t.Helper()
	bleve.Config.SetAnalysisQueueSize(4)
	t.Cleanup(bleve.Config.Shutdown) // after the stores close (cleanups run LIFO)
	t0 := time.Now().Add(-10 * time.Minute).Truncate(time.Millisecond)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	s1, s2 := span.SpanID(sid(1)), span.SpanID(sid(2))
	shared := logLineRec("checkout", at(20), logstore.SeverityWarn, "cart is slow", &traceA, &s1)
	batches := [][]logstore.Record{
		{
			logLineRec("checkout", at(0), logstore.SeverityDebug, "enter checkout", &traceA, &s1, strAttr("user", "alice")),
			shared,
			logLineRec("frontend", at(5), logstore.SeverityError, "render failed", &traceB, &s1),
		},
		{
			shared,
			logLineRec("payments", at(30), logstore.SeverityError, "card declined by issuer", &traceA, &s2, strAttr("card", "visa")),
			logLineRec("payments", at(40), logstore.SeverityInfo, "health ok", nil, nil),
		},
	}
	env := &logsEnv{t0: t0}
	var clients []logspb.LogReaderClient
	for _, b := range batches {
		st, err := logstore.Open(t.TempDir(), nil, nil, logstore.DefaultOptions())
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, st.Close()) })
		require.NoError(t, st.Write(context.Background(), b))
		env.stores = append(env.stores, st)
		clients = append(clients, startLogReader(t, st))
	}
	clients = append(clients, extra...)
	cfg := DefaultConfig()
	cfg.ReaderTimeout = 2 * time.Second
	env.api = New(cfg, nil, nil, nil, WithLogReaders(clients))
	return env
}

// grafanaHeaders are what every Grafana request carries (GRAFANA.md).
func grafanaHeaders(r *http.Request) {
	r.Header.Set("User-Agent", "Grafana/10.4.1")
	r.Header.Set("Accept-Encoding", "gzip")
	r.Header.Set("X-Grafana-Org-Id", "1")
}

func (e *logsEnv) do(t *testing.T, method, target, body string) (int, []byte) {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	grafanaHeaders(req)
	rec := httptest.NewRecorder()
	e.api.Handler().ServeHTTP(rec, req)
	b := rec.Body.Bytes()
	if rec.Header().Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(rec.Body)
		require.NoError(t, err)
		b, err = io.ReadAll(zr)
		require.NoError(t, err)
	}
	require.Contains(t, rec.Header().Get("Content-Type"), "application/json", "%s %s: %s", method, target, b)
	return rec.Code, b
}

type logsJSON struct {
	Logs []struct {
		TimeUnixNano         string         `json:"timeUnixNano"`
		OriginalTimeUnixNano string         `json:"originalTimeUnixNano"`
		SeverityText         string         `json:"severityText"`
		SeverityNumber       int32          `json:"severityNumber"`
		Body                 string         `json:"body"`
		TraceID              string         `json:"traceID"`
		SpanID               string         `json:"spanID"`
		ServiceName          string         `json:"serviceName"`
		Attributes           map[string]any `json:"attributes"`
	} `json:"logs"`
	Warnings []string `json:"warnings"`
}

func (l logsJSON) bodies() []string {
	out := []string{}
	for _, e := range l.Logs {
		out = append(out, e.Body)
	}
	return out
}

func TestTraceLogsRoute(t *testing.T) {
	e := newLogsEnv(t)
	cases := []struct {
		name, query string
		want        []string
	}{
		{"every line, deduplicated, in order", "", []string{"enter checkout", "cart is slow", "card declined by issuer"}},
		{"min level", "?minLevel=warn", []string{"cart is slow", "card declined by issuer"}},
		{"span", "?spanID=" + span.SpanID(sid(2)).String(), []string{"card declined by issuer"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, b := e.do(t, http.MethodGet, "/api/v1/traces/"+traceAHex+"/logs"+c.query, "")
			require.Equal(t, http.StatusOK, code, string(b))
			var got logsJSON
			require.NoError(t, json.Unmarshal(b, &got))
			require.Equal(t, c.want, got.bodies())
		})
	}
	// The exact shape the UI is built against.
	_, b := e.do(t, http.MethodGet, "/api/v1/traces/"+traceAHex+"/logs", "")
	m := decodeJSON(t, b)
	first := m["logs"].([]any)[0].(map[string]any)
	require.Equal(t, map[string]any{
		"timeUnixNano":         strconv.FormatInt(e.t0.UnixNano(), 10),
		"originalTimeUnixNano": strconv.FormatInt(e.t0.UnixNano(), 10),
		"severityText":         "DEBUG",
		"severityNumber":       float64(5),
		"body":                 "enter checkout",
		"traceID":              traceAHex,
		"spanID":               span.SpanID(sid(1)).String(),
		"serviceName":          "checkout",
		"attributes":           map[string]any{"user": "alice"},
	}, first)

	code, b := e.do(t, http.MethodGet, "/api/v1/traces/abcd/logs", "")
	require.Equal(t, http.StatusOK, code, "unknown trace is an empty list: %s", b)
	require.JSONEq(t, `{"logs":[]}`, string(b))
	for _, bad := range []string{"/api/v1/traces/xyz/logs", "/api/v1/traces/" + traceAHex + "/logs?minLevel=loud", "/api/v1/traces/" + traceAHex + "/logs?spanID=12"} {
		code, b := e.do(t, http.MethodGet, bad, "")
		require.Equal(t, http.StatusBadRequest, code, "%s: %s", bad, b)
	}
}

func TestLogSearchRoute(t *testing.T) {
	e := newLogsEnv(t)
	code, b := e.do(t, http.MethodGet, "/api/v1/logs/search?q=declined", "")
	require.Equal(t, http.StatusOK, code, string(b))
	var got logsJSON
	require.NoError(t, json.Unmarshal(b, &got))
	require.Equal(t, []string{"card declined by issuer"}, got.bodies())
	require.Equal(t, traceAHex, got.Logs[0].TraceID, "a search hit links to its trace")
	require.Equal(t, span.SpanID(sid(2)).String(), got.Logs[0].SpanID)

	start := strconv.FormatInt(e.t0.Add(-time.Second).Unix(), 10)
	end := strconv.FormatInt(e.t0.Add(time.Minute).UnixMilli(), 10) // ms: told apart by magnitude
	code, b = e.do(t, http.MethodGet, "/api/v1/logs/search?limit=2&start="+start+"&end="+end, "")
	require.Equal(t, http.StatusOK, code, string(b))
	got = logsJSON{}
	require.NoError(t, json.Unmarshal(b, &got))
	require.Equal(t, []string{"health ok", "card declined by issuer"}, got.bodies(), "newest first, limited")
	require.Empty(t, got.Logs[0].TraceID, "a line without a trace has no traceID")

	for _, bad := range []string{"/api/v1/logs/search?q=" + url.QueryEscape(`body:"open`), "/api/v1/logs/search?limit=-1", "/api/v1/logs/search?start=yesterday"} {
		code, b := e.do(t, http.MethodGet, bad, "")
		require.Equal(t, http.StatusBadRequest, code, "%s: %s", bad, b)
	}
}

func TestLogLevelsRoute(t *testing.T) {
	e := newLogsEnv(t)
	code, b := e.do(t, http.MethodPost, "/api/v1/logs/levels", `{"service":"checkout","level":"debug","duration":"15m"}`)
	require.Equal(t, http.StatusOK, code, string(b))
	m := decodeJSON(t, b)
	require.Equal(t, "checkout", m["service"])
	require.Equal(t, "DEBUG", m["level"])
	now := time.Now()
	for i, st := range e.stores {
		require.True(t, st.Policy().Keep("checkout", logstore.SeverityDebug, false, false, now), "indexer %d", i)
		require.False(t, st.Policy().Keep("checkout", logstore.SeverityDebug, false, false, now.Add(16*time.Minute)), "indexer %d: expires", i)
	}
	code, b = e.do(t, http.MethodGet, "/api/v1/logs/levels", "")
	require.Equal(t, http.StatusOK, code, string(b))
	list := decodeJSON(t, b)["overrides"].([]any)
	require.Len(t, list, 1)
	require.Equal(t, "checkout", list[0].(map[string]any)["service"])

	for _, bad := range []string{
		`{"service":"checkout","level":"loud","duration":"15m"}`,
		`{"service":"checkout","level":"debug","duration":"soon"}`,
		`{"service":"checkout","level":"debug","duration":"48h"}`,
		`{"service":"","level":"debug","duration":"1m"}`,
		`not json`,
	} {
		code, b := e.do(t, http.MethodPost, "/api/v1/logs/levels", bad)
		require.Equal(t, http.StatusBadRequest, code, "%s: %s", bad, b)
	}
	code, _ = e.do(t, http.MethodPost, "/api/v1/logs/levels", `{"service":"checkout","level":"debug","duration":"0s"}`)
	require.Equal(t, http.StatusOK, code)
	require.False(t, e.stores[0].Policy().Keep("checkout", logstore.SeverityDebug, false, false, time.Now()), "duration 0 lifts it")

	req := httptest.NewRequest(http.MethodPut, "/api/v1/logs/levels", nil)
	rec := httptest.NewRecorder()
	e.api.Handler().ServeHTTP(rec, req)
	require.Equal(t, http.StatusMethodNotAllowed, rec.Code)
}

func TestLogLevelsPartialFailure(t *testing.T) {
	e := newLogsEnv(t, deadLogReader(t))
	code, b := e.do(t, http.MethodPost, "/api/v1/logs/levels", `{"service":"checkout","level":"debug","duration":"1m"}`)
	require.Equal(t, http.StatusServiceUnavailable, code, string(b))
	require.Contains(t, string(b), "2 of 3 indexers")
	// Reads degrade to the indexers that answered.
	code, b = e.do(t, http.MethodGet, "/api/v1/traces/"+traceAHex+"/logs", "")
	require.Equal(t, http.StatusOK, code)
	var got logsJSON
	require.NoError(t, json.Unmarshal(b, &got))
	require.Len(t, got.Logs, 3)
	require.NotEmpty(t, got.Warnings)
}

func TestLogRoutesWithoutLogReaders(t *testing.T) {
	api := New(DefaultConfig(), nil, nil, nil)
	for _, target := range []string{"/api/v1/traces/" + traceAHex + "/logs", "/loki/api/v1/query_range?query=%7B%7D"} {
		rec := httptest.NewRecorder()
		api.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
		require.Equal(t, http.StatusServiceUnavailable, rec.Code, target)
		require.Contains(t, rec.Header().Get("Content-Type"), "application/json")
	}
}

type lokiStreamsJSON struct {
	Status string `json:"status"`
	Data   struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Stream map[string]string `json:"stream"`
			Values [][]string        `json:"values"`
		} `json:"result"`
	} `json:"data"`
}

// lines flattens the streams to "ns line" in answer order per stream.
func (l lokiStreamsJSON) lines() []string {
	out := []string{}
	for _, s := range l.Data.Result {
		for _, v := range s.Values {
			out = append(out, v[1])
		}
	}
	return out
}

func TestLokiQueryRangeAsGrafanaSendsIt(t *testing.T) {
	e := newLogsEnv(t)
	start := strconv.FormatInt(e.t0.Add(-time.Hour).UnixNano(), 10)
	end := strconv.FormatInt(e.t0.Add(time.Hour).UnixNano(), 10)
	// Grafana's Go code: parameters sorted, no Accept header.
	grafana := func(query string, limit int, direction string) string {
		v := url.Values{}
		v.Set("direction", direction)
		v.Set("end", end)
		v.Set("limit", strconv.Itoa(limit))
		v.Set("query", query)
		v.Set("start", start)
		v.Set("step", "15000ms")
		return "/loki/api/v1/query_range?" + v.Encode()
	}
	cases := []struct {
		name, query, direction string
		limit                  int
		want                   []string
	}{
		{"trace to logs link", `{service_name="checkout"} |= "` + traceAHex + `"`, "backward", 1000, []string{"cart is slow", "enter checkout"}},
		{"trace to logs link, all services", `{} |= "` + traceAHex + `"`, "forward", 1000, []string{"enter checkout", "cart is slow", "card declined by issuer"}},
		{"level selector", `{level="error"}`, "forward", 1000, []string{"render failed", "card declined by issuer"}},
		{"line filters", `{service_name="payments"} |= "declined" != "health"`, "backward", 1000, []string{"card declined by issuer"}},
		{"label filter stage", `{service="checkout"} | trace_id="` + traceAHex + `"`, "forward", 1000, []string{"enter checkout", "cart is slow"}},
		{"limit", `{}`, "backward", 2, []string{"health ok", "card declined by issuer"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, b := e.do(t, http.MethodGet, grafana(c.query, c.limit, c.direction), "")
			require.Equal(t, http.StatusOK, code, string(b))
			var got lokiStreamsJSON
			require.NoError(t, json.Unmarshal(b, &got), string(b))
			require.Equal(t, "success", got.Status)
			require.Equal(t, "streams", got.Data.ResultType)
			require.ElementsMatch(t, c.want, got.lines())
			if len(got.Data.Result) == 1 {
				require.Equal(t, c.want, got.lines(), "order within a stream follows direction")
			}
		})
	}

	code, b := e.do(t, http.MethodGet, grafana(`{service_name="payments", level="error"}`, 100, "backward"), "")
	require.Equal(t, http.StatusOK, code)
	var got lokiStreamsJSON
	require.NoError(t, json.Unmarshal(b, &got))
	require.Len(t, got.Data.Result, 1)
	require.Equal(t, map[string]string{"service_name": "payments", "level": "error", "trace_id": traceAHex}, got.Data.Result[0].Stream)
	require.Equal(t, strconv.FormatInt(e.t0.Add(30*time.Millisecond).UnixNano(), 10), got.Data.Result[0].Values[0][0])

	// Instant query: /loki/api/v1/query?direction=backward&limit=..&query=..&time=<ns>
	code, b = e.do(t, http.MethodGet, "/loki/api/v1/query?direction=backward&limit=10&query="+url.QueryEscape(`{service_name="frontend"}`)+"&time="+end, "")
	require.Equal(t, http.StatusOK, code, string(b))
	got = lokiStreamsJSON{}
	require.NoError(t, json.Unmarshal(b, &got))
	require.Equal(t, []string{"render failed"}, got.lines())
}

func TestLokiErrorsAreLokiJSON(t *testing.T) {
	e := newLogsEnv(t)
	for _, q := range []string{
		`sum(count_over_time({service_name="x"}[1m]))`,
		`{service_name=~"check.*"}`,
		`{namespace="prod"}`,
		`{service_name="x"} | json`,
		`{service_name="x"} |~ "err.*"`,
		`{service_name="x"`,
		`{level="loud"}`,
	} {
		code, b := e.do(t, http.MethodGet, "/loki/api/v1/query_range?query="+url.QueryEscape(q), "")
		require.Equal(t, http.StatusBadRequest, code, "%s: %s", q, b)
		m := decodeJSON(t, b)
		require.Equal(t, "error", m["status"], q)
		require.NotEmpty(t, m["message"], q)
	}
	code, b := e.do(t, http.MethodGet, "/loki/api/v1/query_range?query=%7B%7D&direction=sideways", "")
	require.Equal(t, http.StatusBadRequest, code, string(b))
}

func TestLokiLabelsAndSeries(t *testing.T) {
	e := newLogsEnv(t)
	start := strconv.FormatInt(e.t0.Add(-time.Hour).UnixNano(), 10)
	end := strconv.FormatInt(e.t0.Add(time.Hour).UnixNano(), 10)
	rng := "start=" + start + "&end=" + end
	cases := []struct {
		target string
		want   string
	}{
		{"/loki/api/v1/labels?" + rng, `{"status":"success","data":["level","service_name"]}`},
		{"/loki/api/v1/label/service_name/values?" + rng, `{"status":"success","data":["checkout","frontend","payments"]}`},
		{"/loki/api/v1/label/level/values?" + rng, `{"status":"success","data":["debug","error","info","warn"]}`},
		{"/loki/api/v1/label/trace_id/values?" + rng, `{"status":"success","data":[]}`},
		{"/loki/api/v1/series?" + rng + "&match[]=" + url.QueryEscape(`{service_name="payments"}`),
			`{"status":"success","data":[{"service_name":"payments","level":"error"},{"service_name":"payments","level":"info"}]}`},
	}
	for _, c := range cases {
		code, b := e.do(t, http.MethodGet, c.target, "")
		require.Equal(t, http.StatusOK, code, "%s: %s", c.target, b)
		require.JSONEq(t, c.want, string(b), c.target)
	}
}

func TestParseLogQL(t *testing.T) {
	cases := []struct {
		in   string
		want logQuery
		ok   bool
	}{
		{`{}`, logQuery{}, true},
		{` { service_name = "a\"b" , level="warn" } |= "x" != ` + "`y`", logQuery{service: `a"b`, level: "warn", contains: []string{"x"}, notContains: []string{"y"}}, true},
		{`{detected_level="error"} | span_id="00000000000000a1"`, logQuery{level: "error", spanID: "00000000000000a1"}, true},
		{`{traceID="abc"}`, logQuery{traceID: "abc"}, true},
		{`{service="a", service="b"}`, logQuery{}, false},
		{`rate({}[1m])`, logQuery{}, false},
		{`{a="b"}`, logQuery{}, false},
		{`{service="a"} | logfmt`, logQuery{}, false},
		{`{service="a"} |= "unterminated`, logQuery{}, false},
		{`{service="a"} garbage`, logQuery{}, false},
		{``, logQuery{}, false},
	}
	for _, c := range cases {
		got, err := parseLogQL(c.in)
		if !c.ok {
			require.Error(t, err, c.in)
			require.Equal(t, http.StatusBadRequest, statusOf(err), c.in)
			continue
		}
		require.NoError(t, err, c.in)
		require.Equal(t, c.want, got, c.in)
	}
}

func FuzzParseLogQL(f *testing.F) {
	for _, s := range []string{`{}`, `{service_name="a"} |= "b" != "c"`, `{level="x"} | trace_id="y"`, `{a=~"b"}`, "{`x`}", `{service="\u00e9"}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := parseLogQL(s)
		if err != nil {
			require.Equal(t, http.StatusBadRequest, statusOf(err))
			return
		}
		require.NotContains(t, q.contains, "")
	})
}

func TestParseTimes(t *testing.T) {
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		in   string
		want time.Time
	}{
		{strconv.FormatInt(base.Unix(), 10), base},
		{strconv.FormatInt(base.UnixNano(), 10), base},
		{"1767323045.5", base.Add(500 * time.Millisecond)},
		{base.Format(time.RFC3339), base},
	} {
		got, err := parseLokiTime(c.in, time.Time{})
		require.NoError(t, err, c.in)
		require.Equal(t, c.want.UnixNano(), got.UnixNano(), c.in)
	}
	for _, c := range []struct {
		in   string
		want int64
	}{
		{strconv.FormatInt(base.Unix(), 10), base.UnixNano()},
		{strconv.FormatInt(base.UnixMilli(), 10), base.UnixNano()},
		{strconv.FormatInt(base.UnixMicro(), 10), base.UnixNano()},
		{strconv.FormatInt(base.UnixNano(), 10), base.UnixNano()},
		{base.Format(time.RFC3339Nano), base.UnixNano()},
	} {
		got, err := parseLogTime(c.in)
		require.NoError(t, err, c.in)
		require.Equal(t, c.want, got, c.in)
	}
}
