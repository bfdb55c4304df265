package query

import (
	"compress/gzip"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	traceAHex = "0af7651916cd43dd8448eb211c80319c"
	traceBHex = "00000000000000004bf92f3577b34da6"
)

var (
	t0     = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	traceA = mustTraceID(traceAHex)
	traceB = mustTraceID(traceBHex)
)

func mustTraceID(s string) span.TraceID {
	id, err := span.ParseTraceID(s)
	if err != nil {
		panic(err)
	}
	return id
}

func sid(b byte) []byte { return []byte{0, 0, 0, 0, 0, 0, 0xa0, b} }

func ns(d time.Duration) uint64 { return uint64(t0.Add(d).UnixNano()) }

type spanOpt func(*tracepb.Span)

func mkSpan(tid span.TraceID, id, parent byte, name string, kind tracepb.Span_SpanKind, from, to time.Duration, opts ...spanOpt) *tracepb.Span {
	s := &tracepb.Span{
		TraceId: tid[:], SpanId: sid(id), Name: name, Kind: kind,
		StartTimeUnixNano: ns(from), EndTimeUnixNano: ns(to), Flags: 1,
	}
	if parent != 0 {
		s.ParentSpanId = sid(parent)
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// fixture returns two shards that split trace A (checkout → payments) the way
// a rebalance does, with span a2 stored on both, and trace B on the second.
func fixture() (shard, shard) {
	checkout0 := newResource("checkout", strAttr("host.name", "web-1"))
	checkout1 := newResource("checkout", strAttr("host.name", "web-1")) // equal, other indexer
	payments := newResource("payments")
	frontend := newResource("frontend")
	sc0 := newScope("io.opentelemetry.http", "1.2.0")
	sc1 := newScope("io.opentelemetry.http", "1.2.0")

	a1 := mkSpan(traceA, 1, 0, "POST /pay", tracepb.Span_SPAN_KIND_SERVER, 0, 250*time.Millisecond, func(s *tracepb.Span) {
		s.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: "card declined"}
		s.Attributes = []*commonpb.KeyValue{strAttr("http.method", "POST"),
			{Key: "http.status_code", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: 502}}}}
		s.Events = []*tracepb.Span_Event{{Name: "exception", TimeUnixNano: ns(200 * time.Millisecond),
			Attributes: []*commonpb.KeyValue{strAttr("exception.message", "boom")}}}
	})
	a2 := mkSpan(traceA, 2, 1, "charge", tracepb.Span_SPAN_KIND_CLIENT, 10*time.Millisecond, 210*time.Millisecond)
	a3 := mkSpan(traceA, 3, 2, "Charge", tracepb.Span_SPAN_KIND_SERVER, 20*time.Millisecond, 200*time.Millisecond, func(s *tracepb.Span) {
		s.Links = []*tracepb.Span_Link{{TraceId: traceB[:], SpanId: sid(9)}}
	})
	a4 := mkSpan(traceA, 4, 3, "db.query", tracepb.Span_SPAN_KIND_INTERNAL, 30*time.Millisecond, 60*time.Millisecond, func(s *tracepb.Span) {
		s.Attributes = []*commonpb.KeyValue{strAttr("db.system", "postgres")}
	})
	b1 := mkSpan(traceB, 9, 0, "GET /", tracepb.Span_SPAN_KIND_SERVER, time.Second, time.Second+50*time.Millisecond)

	s0 := shard{
		spans:   []span.Span{{Span: a1, Resource: checkout0, Scope: sc0}, {Span: a2, Resource: checkout0, Scope: sc0}},
		reasons: map[span.TraceID][]string{traceA: {"error"}},
	}
	s1 := shard{
		spans: []span.Span{
			{Span: proto.Clone(a2).(*tracepb.Span), Resource: checkout1, Scope: sc1},
			{Span: a3, Resource: payments, Scope: sc1},
			{Span: a4, Resource: payments, Scope: sc1},
			{Span: b1, Resource: frontend, Scope: sc1},
		},
		reasons: map[span.TraceID][]string{traceA: {"latency_topn"}, traceB: {"baseline"}},
	}
	return s0, s1
}

type env struct {
	srv *httptest.Server
	api *API
	reg *prometheus.Registry
}

func newEnv(t testing.TB, readers []readerpb.ReaderClient) *env {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := DefaultConfig()
	cfg.ReaderTimeout = 2 * time.Second
	cfg.Version, cfg.Revision = "1.2.3", "abc123"
	api := New(cfg, readers, slog.New(slog.DiscardHandler), reg)
	api.now = func() time.Time { return t0.Add(time.Hour) }
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	return &env{srv: srv, api: api, reg: reg}
}

func splitEnv(t *testing.T) *env {
	s0, s1 := fixture()
	return newEnv(t, startReaders(t, s0, s1))
}

// grafana sends a request with the headers a real Grafana 10 sends and
// returns status, headers and the decompressed body.
func (e *env) grafana(t *testing.T, path, accept string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.srv.URL+path, nil)
	require.NoError(t, err)
	req.Header.Set("User-Agent", "Grafana/10.4.0")
	req.Header.Set("Accept-Encoding", "gzip")
	req.Header.Set("X-Grafana-Org-Id", "1")
	req.Header.Set("X-Forwarded-For", "10.0.0.1")
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var body io.Reader = resp.Body
	if resp.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(resp.Body)
		require.NoError(t, err)
		body = zr
	}
	b, err := io.ReadAll(body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, b
}

const browserAccept = "application/json, text/plain, */*"

func decodeJSON(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m), string(b))
	return m
}

func spanIDsOf(td *tracepb.TracesData) []string {
	var ids []string
	for _, s := range span.FromTracesData(td) {
		ids = append(ids, hex.EncodeToString(s.GetSpanId()))
	}
	return ids
}

func TestTempoTraceByIDProtobufMergesReaders(t *testing.T) {
	e := splitEnv(t)
	for _, path := range []string{"/api/traces/" + traceAHex, "/api/traces/" + strings.ToUpper(traceAHex) + "?start=1767225000&end=1767226000"} {
		code, h, body := e.grafana(t, path, "application/protobuf")
		require.Equal(t, http.StatusOK, code, string(body))
		require.Equal(t, "application/protobuf", h.Get("Content-Type"))
		var td tracepb.TracesData
		require.NoError(t, proto.Unmarshal(body, &td))
		// a2 is on both indexers and appears once; checkout's two equal
		// resources from two indexers are one ResourceSpans again.
		require.Equal(t, []string{"000000000000a001", "000000000000a002", "000000000000a003", "000000000000a004"}, spanIDsOf(&td))
		require.Len(t, td.GetResourceSpans(), 2)
		require.Equal(t, "checkout", span.FromTracesData(&td)[0].ServiceName())
	}
}

func TestTempoTraceByIDV2(t *testing.T) {
	e := splitEnv(t)
	t.Run("protobuf", func(t *testing.T) {
		code, h, body := e.grafana(t, "/api/v2/traces/"+traceAHex, "application/protobuf")
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, "application/protobuf", h.Get("Content-Type"))
		// TraceByIDResponse: field 1 is the Trace (wire-identical to TracesData),
		// no status field when complete.
		num, typ, n := protowire.ConsumeTag(body)
		require.Equal(t, protowire.Number(1), num)
		require.Equal(t, protowire.BytesType, typ)
		inner, m := protowire.ConsumeBytes(body[n:])
		require.Positive(t, m)
		require.Len(t, body, n+m, "no status or message when complete")
		var td tracepb.TracesData
		require.NoError(t, proto.Unmarshal(inner, &td))
		require.Len(t, spanIDsOf(&td), 4)
	})
	t.Run("json", func(t *testing.T) {
		code, h, body := e.grafana(t, "/api/v2/traces/"+traceAHex, "application/json")
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, "application/json", h.Get("Content-Type"))
		m := decodeJSON(t, body)
		require.Equal(t, "COMPLETE", m["status"])
		rs := m["trace"].(map[string]any)["resourceSpans"].([]any)
		require.Len(t, rs, 2)
		sp := rs[0].(map[string]any)["scopeSpans"].([]any)[0].(map[string]any)["spans"].([]any)[0].(map[string]any)
		require.Equal(t, traceAHex, sp["traceId"], "Tempo JSON IDs are hex")
		require.Equal(t, "000000000000a001", sp["spanId"])
		require.Equal(t, "SPAN_KIND_SERVER", sp["kind"])
		require.Equal(t, strconv.FormatUint(ns(0), 10), sp["startTimeUnixNano"])
		require.Equal(t, "STATUS_CODE_ERROR", sp["status"].(map[string]any)["code"])
	})
	t.Run("not found", func(t *testing.T) {
		code, h, body := e.grafana(t, "/api/v2/traces/0123456789abcdef0123456789abcdef", "application/protobuf")
		require.Equal(t, http.StatusNotFound, code)
		require.Contains(t, h.Get("Content-Type"), "text/plain")
		require.Contains(t, string(body), "not found")
	})
}

func TestJaegerTrace(t *testing.T) {
	e := splitEnv(t)
	code, h, body := e.grafana(t, "/api/traces/"+traceAHex, browserAccept)
	require.Equal(t, http.StatusOK, code, string(body))
	require.Equal(t, "application/json", h.Get("Content-Type"))
	require.Equal(t, "gzip", h.Get("Content-Encoding"), "Grafana sends Accept-Encoding: gzip")
	var resp struct {
		Data   []jaegerTraceJSON `json:"data"`
		Total  int               `json:"total"`
		Errors []jaegerError     `json:"errors"`
	}
	require.NoError(t, json.Unmarshal(body, &resp))
	require.Equal(t, 1, resp.Total)
	require.Empty(t, resp.Errors)
	tr := resp.Data[0]
	require.Equal(t, traceAHex, tr.TraceID)
	require.Len(t, tr.Spans, 4)
	require.Len(t, tr.Processes, 2)

	root := tr.Spans[0]
	require.Equal(t, "000000000000a001", root.SpanID)
	require.Equal(t, "POST /pay", root.OperationName)
	require.Equal(t, uint64(t0.UnixMicro()), root.StartTime, "µs")
	require.Equal(t, uint64(250_000), root.Duration, "µs")
	require.Empty(t, root.References)
	require.Equal(t, uint32(1), root.Flags)
	tags := map[string]any{}
	for _, kv := range root.Tags {
		tags[kv.Key+"/"+kv.Type] = kv.Value
	}
	require.Equal(t, map[string]any{
		"http.method/string":             "POST",
		"http.status_code/int64":         float64(502),
		"span.kind/string":               "server",
		"threadline.logical_time/int64":  float64(1),
		"otel.status_code/string":        "ERROR",
		"error/bool":                     true,
		"otel.status_description/string": "card declined",
		"otel.library.name/string":       "io.opentelemetry.http",
		"otel.library.version/string":    "1.2.0",
	}, tags)
	require.Equal(t, []jaegerLog{{Timestamp: uint64(t0.Add(200 * time.Millisecond).UnixMicro()), Fields: []jaegerKV{
		{Key: "event", Type: "string", Value: "exception"},
		{Key: "exception.message", Type: "string", Value: "boom"},
	}}}, root.Logs)
	proc := tr.Processes[root.ProcessID]
	require.Equal(t, "checkout", proc.ServiceName)
	require.Equal(t, []jaegerKV{{Key: "host.name", Type: "string", Value: "web-1"}}, proc.Tags)

	server := tr.Spans[2]
	require.Equal(t, "Charge", server.OperationName)
	require.Equal(t, []jaegerReference{
		{RefType: "CHILD_OF", TraceID: traceAHex, SpanID: "000000000000a002"},
		{RefType: "FOLLOWS_FROM", TraceID: traceBHex, SpanID: "000000000000a009"},
	}, server.References)
	require.Equal(t, "payments", tr.Processes[server.ProcessID].ServiceName)
	require.Equal(t, tr.Spans[1].ProcessID, root.ProcessID, "spans of one resource share a process")

	// The raw JSON carries every field Jaeger clients read.
	raw := decodeJSON(t, body)
	for _, k := range []string{"data", "total", "limit", "offset", "errors"} {
		require.Contains(t, raw, k)
	}
	rawSpan := raw["data"].([]any)[0].(map[string]any)["spans"].([]any)[0].(map[string]any)
	for _, k := range []string{"traceID", "spanID", "operationName", "references", "startTime", "duration", "tags", "logs", "processID", "warnings", "flags"} {
		require.Contains(t, rawSpan, k)
	}
}

func TestTraceByIDErrors(t *testing.T) {
	e := splitEnv(t)
	tests := []struct {
		name, path, accept string
		code               int
		want               string
	}{
		{"tempo bad id", "/api/traces/not-hex", "application/protobuf", 400, "invalid trace ID"},
		{"tempo zero id", "/api/traces/0000", "application/protobuf", 400, "invalid trace ID"},
		{"tempo too long", "/api/v2/traces/" + strings.Repeat("a", 33), "", 400, "invalid trace ID"},
		{"tempo bad start", "/api/v2/traces/" + traceAHex + "?start=x", "", 400, "invalid start"},
		{"tempo start after end", "/api/v2/traces/" + traceAHex + "?start=20&end=10", "", 400, "is after end"},
		{"tempo absent", "/api/traces/" + strings.Repeat("1", 32), "application/protobuf", 404, "not found"},
		{"jaeger bad id", "/api/traces/zz", browserAccept, 400, "invalid trace ID"},
		{"jaeger absent", "/api/traces/" + strings.Repeat("1", 32), browserAccept, 404, "not found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, h, body := e.grafana(t, tc.path, tc.accept)
			require.Equal(t, tc.code, code, string(body))
			require.Contains(t, string(body), tc.want)
			if tc.accept == browserAccept {
				m := decodeJSON(t, body)
				require.Nil(t, m["data"])
				errs := m["errors"].([]any)
				require.Equal(t, float64(tc.code), errs[0].(map[string]any)["code"])
			} else {
				require.Contains(t, h.Get("Content-Type"), "text/plain")
			}
		})
	}
}

func searchTraces(t *testing.T, body []byte) []map[string]any {
	t.Helper()
	m := decodeJSON(t, body)
	require.Contains(t, m, "metrics")
	var out []map[string]any
	for _, tr := range m["traces"].([]any) {
		out = append(out, tr.(map[string]any))
	}
	return out
}

func TestTempoSearch(t *testing.T) {
	e := splitEnv(t)
	start, end := strconv.FormatInt(t0.Add(-time.Hour).Unix(), 10), strconv.FormatInt(t0.Add(time.Hour).Unix(), 10)
	rng := "&limit=20&start=" + start + "&end=" + end
	tests := []struct {
		name  string
		query string
		want  []string
	}{
		{"empty TraceQL", "q=" + url.QueryEscape("{}"), []string{traceBHex, traceAHex}},
		{"grafana TraceQL", "q=" + url.QueryEscape(`{ resource.service.name = "checkout" && name = "POST /pay" && duration > 100ms && status = error }`), []string{traceAHex}},
		{"TraceQL duration too long", "q=" + url.QueryEscape(`{ resource.service.name = "checkout" && duration > 1s }`), nil},
		{"TraceQL span attr", "q=" + url.QueryEscape(`{ span.db.system = "postgres" }`), []string{traceAHex}},
		{"TraceQL unscoped attr", "q=" + url.QueryEscape(`{.db.system="postgres"}`), []string{traceAHex}},
		{"TraceQL same span", "q=" + url.QueryEscape(`{ resource.service.name = "payments" && name = "POST /pay" }`), nil},
		{"logfmt tags with leading space", "tags=" + url.QueryEscape(` service.name="checkout" name="POST /pay"`), []string{traceAHex}},
		{"logfmt across spans", "tags=" + url.QueryEscape(`name=Charge db.system=postgres`), []string{traceAHex}},
		{"TraceQL not across spans", "q=" + url.QueryEscape(`{ name = "Charge" && span.db.system = "postgres" }`), nil},
		{"logfmt error", "tags=" + url.QueryEscape(`error=true`), []string{traceAHex}},
		{"minDuration", "tags=&minDuration=100ms&maxDuration=1s", []string{traceAHex}},
		{"maxDuration", "maxDuration=100ms", []string{traceBHex}},
		{"limit", "q={}&limit=1", []string{traceBHex}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := "/api/search?" + tc.query
			if !strings.Contains(tc.query, "limit=") {
				path += rng
			}
			code, _, body := e.grafana(t, path, browserAccept)
			require.Equal(t, http.StatusOK, code, string(body))
			var got []string
			for _, tr := range searchTraces(t, body) {
				got = append(got, tr["traceID"].(string))
			}
			require.Equal(t, tc.want, got)
		})
	}

	t.Run("response shape", func(t *testing.T) {
		code, _, body := e.grafana(t, "/api/search?q="+url.QueryEscape(`{ name = "POST /pay" }`)+rng, browserAccept)
		require.Equal(t, http.StatusOK, code)
		m := decodeJSON(t, body)
		tr := m["traces"].([]any)[0].(map[string]any)
		// Summaries from both indexers merged: the root from the one holding
		// it, the extent of the whole trace.
		require.Equal(t, map[string]any{
			"traceID":           traceAHex,
			"rootServiceName":   "checkout",
			"rootTraceName":     "POST /pay",
			"startTimeUnixNano": strconv.FormatUint(ns(0), 10),
			"durationMs":        float64(250),
		}, tr)
		metrics := m["metrics"].(map[string]any)
		require.Equal(t, float64(2), metrics["totalJobs"])
		require.Equal(t, float64(2), metrics["completedJobs"])
	})
}

func TestBadParameters(t *testing.T) {
	e := splitEnv(t)
	tests := []struct {
		path string
		want string
	}{
		{"/api/search?minDuration=fast", "invalid minDuration"},
		{"/api/search?maxDuration=-1s", "invalid maxDuration"},
		{"/api/search?minDuration=2s&maxDuration=1s", "minDuration is greater than maxDuration"},
		{"/api/search?start=200&end=100", "is after end"},
		{"/api/search?start=yesterday", "invalid start"},
		{"/api/search?limit=-1", "invalid limit"},
		{"/api/search?limit=ten", "invalid limit"},
		{"/api/search?tags=" + url.QueryEscape(`service.name="unterminated`), "unterminated"},
		{"/api/search?tags=" + url.QueryEscape(`novalue`), "has no =value"},
		{"/api/search?q=" + url.QueryEscape(`{ name = "a" } | count() > 2`), "supported TraceQL"},
		{"/api/search?q=" + url.QueryEscape(`{ name = "a" || name = "b" }`), "|| is not supported"},
		{"/api/search?q=" + url.QueryEscape(`{ kind = server }`), "unsupported field"},
		{"/api/search?q=" + url.QueryEscape(`{ duration > soon }`), "bad duration"},
		{"/api/search?q=" + url.QueryEscape(`{ name != "x" }`), "only = is"},
		{"/api/search?q=" + url.QueryEscape(`name = "x"`), "must start with {"},
		{"/api/v2/search/tags?scope=galaxy", "invalid scope"},
		{"/api/search/tag/service.name/values?limit=-5", "invalid limit"},
		{"/api/traces?operation=x", "parameter 'service' is required"},
		{"/api/traces?service=checkout&tags=" + url.QueryEscape(`{"k":`), "malformed 'tags'"},
		{"/api/traces?service=checkout&tag=nocolon", "malformed 'tag'"},
		{"/api/traces?service=checkout&minDuration=1x", "invalid minDuration"},
		{"/api/traces?service=checkout&minDuration=2s&maxDuration=1s", "'maxDuration' should be greater"},
		{"/api/traces?service=checkout&start=5&end=1", "'start' is after 'end'"},
		{"/api/traces?service=checkout&end=-1", "invalid 'end'"},
		{"/api/traces?service=checkout&lookback=forever", "invalid 'lookback'"},
		{"/api/traces?traceID=nothex", "invalid traceID"},
		{"/api/operations", "parameter 'service' is required"},
		{"/api/dependencies?endTs=abc", "invalid 'endTs'"},
		{"/api/dependencies?lookback=-1", "invalid 'lookback'"},
		// Found by FuzzTraceAPIs: the indexers were asked, and the client
		// got a 502 saying they had failed.
		{"/api/v1/search?service=c%80", `query parameter "service" is not valid UTF-8`},
		{"/api/services/%FF/operations", "the path is not valid UTF-8"},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			code, _, body := e.grafana(t, tc.path, browserAccept)
			require.Equal(t, http.StatusBadRequest, code, string(body))
			require.Contains(t, string(body), tc.want)
		})
	}
}

func TestTempoTags(t *testing.T) {
	e := splitEnv(t)
	code, _, body := e.grafana(t, "/api/search/tags", browserAccept)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, map[string]any{"tagNames": []any{"db.system", "host.name", "http.method", "http.status_code", "service.name"}}, decodeJSON(t, body))

	code, _, body = e.grafana(t, "/api/v2/search/tags", browserAccept)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"scopes":[
		{"name":"resource","tags":["host.name","service.name"]},
		{"name":"span","tags":["db.system","http.method","http.status_code"]},
		{"name":"intrinsic","tags":["duration","name","status","traceDuration"]}]}`, string(body))

	code, _, body = e.grafana(t, "/api/v2/search/tags?scope=span", browserAccept)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"scopes":[{"name":"span","tags":["db.system","http.method","http.status_code"]}]}`, string(body))

	code, _, body = e.grafana(t, "/api/search/tag/service.name/values", browserAccept)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"tagValues":["checkout","frontend","payments"]}`, string(body))

	tests := []struct{ tag, want string }{
		{"resource.service.name", `{"tagValues":[{"type":"string","value":"checkout"},{"type":"string","value":"frontend"},{"type":"string","value":"payments"}]}`},
		{"span.db.system", `{"tagValues":[{"type":"string","value":"postgres"}]}`},
		{".db.system", `{"tagValues":[{"type":"string","value":"postgres"}]}`},
		{"name", `{"tagValues":[{"type":"string","value":"Charge"},{"type":"string","value":"GET /"},{"type":"string","value":"POST /pay"},{"type":"string","value":"charge"},{"type":"string","value":"db.query"}]}`},
		// The store answers every status intrinsic, as Tempo does.
		{"status", `{"tagValues":[{"type":"keyword","value":"error"},{"type":"keyword","value":"ok"},{"type":"keyword","value":"unset"}]}`},
		{"duration", `{"tagValues":[]}`},
		{"span.nothing", `{"tagValues":[]}`},
	}
	for _, tc := range tests {
		t.Run(tc.tag, func(t *testing.T) {
			code, _, body := e.grafana(t, "/api/v2/search/tag/"+tc.tag+"/values", browserAccept)
			require.Equal(t, http.StatusOK, code)
			require.JSONEq(t, tc.want, string(body))
		})
	}
}

func TestEchoAndBuildInfo(t *testing.T) {
	e := splitEnv(t)
	code, h, body := e.grafana(t, "/api/echo", browserAccept)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "echo", string(body))
	require.Contains(t, h.Get("Content-Type"), "text/plain")

	code, _, body = e.grafana(t, "/api/status/buildinfo", browserAccept)
	require.Equal(t, http.StatusOK, code)
	m := decodeJSON(t, body)
	require.Equal(t, "1.2.3", m["version"])
	require.Equal(t, "abc123", m["revision"])
	for _, k := range []string{"branch", "buildUser", "buildDate", "goVersion"} {
		require.Contains(t, m, k)
	}
	require.True(t, strings.HasPrefix(m["goVersion"].(string), "go"))
}

func TestJaegerListsAndSearch(t *testing.T) {
	e := splitEnv(t)
	code, _, body := e.grafana(t, "/api/services", browserAccept)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"data":["checkout","frontend","payments"],"total":3,"limit":0,"offset":0,"errors":null}`, string(body))

	code, _, body = e.grafana(t, "/api/services/checkout/operations", browserAccept)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"data":["POST /pay","charge"],"total":2,"limit":0,"offset":0,"errors":null}`, string(body))

	code, _, body = e.grafana(t, "/api/operations?service=payments", browserAccept)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"data":[{"name":"Charge","spanKind":"server"},{"name":"db.query","spanKind":"internal"}],"total":2,"limit":0,"offset":0,"errors":null}`, string(body))

	code, _, body = e.grafana(t, "/api/operations?service=payments&spanKind=server", browserAccept)
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"data":[{"name":"Charge","spanKind":"server"}],"total":1,"limit":0,"offset":0,"errors":null}`, string(body))

	us := func(d time.Duration) string { return strconv.FormatInt(t0.Add(d).UnixMicro(), 10) }
	window := "&start=" + us(-time.Hour) + "&end=" + us(time.Hour) + "&lookback=custom"
	tests := []struct {
		name, query string
		want        []string
	}{
		{"service", "service=checkout", []string{traceAHex}},
		{"operation", "service=frontend&operation=" + url.QueryEscape("GET /"), []string{traceBHex}},
		{"tags json", "service=payments&tags=" + url.QueryEscape(`{"db.system":"postgres"}`), []string{traceAHex}},
		{"tags json error", "service=checkout&tags=" + url.QueryEscape(`{"error":"true"}`), []string{traceAHex}},
		{"tag legacy", "service=payments&tag=db.system:postgres", []string{traceAHex}},
		{"tags no match", "service=payments&tags=" + url.QueryEscape(`{"db.system":"mysql"}`), []string{}},
		{"minDuration on one span", "service=payments&minDuration=100ms", []string{traceAHex}},
		{"maxDuration excludes", "service=checkout&maxDuration=100ms", []string{}},
		{"limit", "service=checkout&limit=1", []string{traceAHex}},
		{"other window", "service=checkout&start=" + us(2*time.Hour) + "&end=" + us(3*time.Hour), []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := "/api/traces?" + tc.query
			if !strings.Contains(tc.query, "start=") {
				path += window
			}
			code, _, body := e.grafana(t, path, browserAccept)
			require.Equal(t, http.StatusOK, code, string(body))
			var resp struct {
				Data   []jaegerTraceJSON `json:"data"`
				Errors []jaegerError     `json:"errors"`
			}
			require.NoError(t, json.Unmarshal(body, &resp))
			require.Empty(t, resp.Errors)
			got := []string{}
			for _, tr := range resp.Data {
				got = append(got, tr.TraceID)
				require.NotEmpty(t, tr.Spans)
			}
			require.Equal(t, tc.want, got)
		})
	}

	t.Run("by traceID", func(t *testing.T) {
		code, _, body := e.grafana(t, "/api/traces?traceID="+traceAHex+"&traceID="+traceBHex, browserAccept)
		require.Equal(t, http.StatusOK, code)
		var resp struct {
			Data []jaegerTraceJSON `json:"data"`
		}
		require.NoError(t, json.Unmarshal(body, &resp))
		require.Len(t, resp.Data, 2)
		require.Len(t, resp.Data[0].Spans, 4)
	})

	t.Run("dependencies", func(t *testing.T) {
		endTs := strconv.FormatInt(t0.Add(time.Hour).UnixMilli(), 10)
		lookback := strconv.FormatInt((2 * time.Hour).Milliseconds(), 10)
		code, _, body := e.grafana(t, "/api/dependencies?endTs="+endTs+"&lookback="+lookback, browserAccept)
		require.Equal(t, http.StatusOK, code, string(body))
		// checkout's client span calls payments' server span across indexers.
		require.JSONEq(t, `{"data":[{"parent":"checkout","child":"payments","callCount":1}],"total":1,"limit":0,"offset":0,"errors":null}`, string(body))
	})
}

func TestPartialFailure(t *testing.T) {
	s0, s1 := fixture()
	readers := startReaders(t, s0, s1)
	e := newEnv(t, []readerpb.ReaderClient{readers[0], deadReader(t)})

	// Tempo v2 marks the answer PARTIAL (Grafana shows it) and still returns
	// the spans the live indexer holds.
	code, _, body := e.grafana(t, "/api/v2/traces/"+traceAHex, "application/protobuf")
	require.Equal(t, http.StatusOK, code, string(body))
	fields := map[protowire.Number][]byte{}
	var statusVal uint64
	for b := body; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		require.Positive(t, n)
		b = b[n:]
		if typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(b)
			statusVal, b = v, b[m:]
			continue
		}
		v, m := protowire.ConsumeBytes(b)
		fields[num], b = v, b[m:]
	}
	require.Equal(t, uint64(tempoStatusPartial), statusVal)
	require.Contains(t, string(fields[4]), "1 of 2 indexers failed")
	var td tracepb.TracesData
	require.NoError(t, proto.Unmarshal(fields[1], &td))
	require.Equal(t, []string{"000000000000a001", "000000000000a002"}, spanIDsOf(&td))

	// Jaeger carries the gap in errors.
	code, _, body = e.grafana(t, "/api/traces/"+traceAHex, browserAccept)
	require.Equal(t, http.StatusOK, code)
	m := decodeJSON(t, body)
	require.Len(t, m["data"], 1)
	require.Contains(t, m["errors"].([]any)[0].(map[string]any)["msg"], "partial result")

	// Search reports completed jobs.
	code, _, body = e.grafana(t, "/api/search?q={}", browserAccept)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, float64(1), decodeJSON(t, body)["metrics"].(map[string]any)["completedJobs"])

	// A trace that only the dead indexer could hold is not declared absent.
	code, _, _ = e.grafana(t, "/api/traces/"+traceBHex, "application/protobuf")
	require.Equal(t, http.StatusServiceUnavailable, code)

	require.Equal(t, float64(1), counterValue(t, e.api.metrics.partial.WithLabelValues("SearchTraces")))
	require.GreaterOrEqual(t, counterValue(t, e.api.metrics.readerErrors.WithLabelValues("GetTrace")), float64(3))
}

func TestAllReadersFail(t *testing.T) {
	e := newEnv(t, []readerpb.ReaderClient{deadReader(t), deadReader(t)})
	code, _, body := e.grafana(t, "/api/search?q={}", browserAccept)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, string(body), "indexer 0")
	require.Contains(t, string(body), "indexer 1")

	code, _, body = e.grafana(t, "/api/services", browserAccept)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, float64(503), decodeJSON(t, body)["errors"].([]any)[0].(map[string]any)["code"])

	none := newEnv(t, nil)
	code, _, body = none.grafana(t, "/api/services", browserAccept)
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, string(body), "no indexers configured")
}

func TestMethodsAndMetrics(t *testing.T) {
	e := splitEnv(t)
	for _, path := range []string{"/api/echo", "/api/search", "/api/traces/" + traceAHex, "/api/services"} {
		resp, err := http.Post(e.srv.URL+path, "application/json", strings.NewReader("{}"))
		require.NoError(t, err)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, path)
		require.Equal(t, "GET, HEAD", resp.Header.Get("Allow"))
	}
	resp, err := http.Head(e.srv.URL + "/api/echo")
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	code, _, _ := e.grafana(t, "/api/echo", "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, float64(2), counterValue(t, e.api.metrics.requests.WithLabelValues("/api/echo", "200")))
	require.Equal(t, float64(1), counterValue(t, e.api.metrics.requests.WithLabelValues("/api/echo", "405")))
	families, err := e.reg.Gather()
	require.NoError(t, err)
	var names []string
	for _, f := range families {
		names = append(names, f.GetName())
	}
	require.Contains(t, names, "threadline_query_http_request_duration_seconds")
}

// TestSharedMuxWithUI mounts the API beside a catch-all UI handler, as the
// binaries do, and checks the UI cannot capture API paths.
func TestSharedMuxWithUI(t *testing.T) {
	s0, s1 := fixture()
	api := New(DefaultConfig(), startReaders(t, s0, s1), nil, nil)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ui") })
	api.Register(mux)
	for _, tc := range []struct {
		method, path string
		code         int
		body         string
	}{
		{http.MethodGet, "/", 200, "ui"},
		{http.MethodGet, "/trace/" + traceAHex, 200, "ui"},
		{http.MethodGet, "/search", 200, "ui"},
		{http.MethodGet, "/api/echo", 200, "echo"},
		{http.MethodPost, "/api/echo", 405, "not allowed"},
	} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		require.Equal(t, tc.code, rec.Code, tc.path)
		require.Contains(t, rec.Body.String(), tc.body, tc.path)
	}
}

func TestConfigValidate(t *testing.T) {
	require.NoError(t, DefaultConfig().Validate())
	bad := DefaultConfig()
	bad.ReaderTimeout = 0
	bad.DefaultSearchLimit = 5000
	err := bad.Validate()
	require.ErrorContains(t, err, "query.reader-timeout must be positive")
	require.ErrorContains(t, err, "query.default-search-limit must be between")
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}
