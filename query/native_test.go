package query

import (
	"encoding/json"
	"math"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
)

func TestNativeSearch(t *testing.T) {
	e := splitEnv(t)
	type result struct {
		Traces []nativeSummary `json:"traces"`
	}
	cases := []struct {
		name   string
		query  url.Values
		status int
		want   []string // trace IDs, newest first
	}{
		{"all", url.Values{}, 200, []string{traceBHex, traceAHex}},
		{"errors only", url.Values{"errorsOnly": {"true"}}, 200, []string{traceAHex}},
		{"errors off", url.Values{"errorsOnly": {"false"}}, 200, []string{traceBHex, traceAHex}},
		{"service", url.Values{"service": {"payments"}}, 200, []string{traceAHex}},
		{"service and operation", url.Values{"service": {"frontend"}, "operation": {"GET /"}}, 200, []string{traceBHex}},
		{"operation mismatch", url.Values{"service": {"frontend"}, "operation": {"charge"}}, 200, []string{}},
		{"logfmt tags", url.Values{"tags": {`db.system=postgres`}}, 200, []string{traceAHex}},
		{"min duration", url.Values{"minDuration": {"100ms"}}, 200, []string{traceAHex}},
		{"max duration", url.Values{"maxDuration": {"100ms"}}, 200, []string{traceBHex}},
		{"limit", url.Values{"limit": {"1"}}, 200, []string{traceBHex}},
		{"bad duration", url.Values{"minDuration": {"fast"}}, 400, nil},
		{"bad range", url.Values{"minDuration": {"2s"}, "maxDuration": {"1s"}}, 400, nil},
		{"bad errorsOnly", url.Values{"errorsOnly": {"maybe"}}, 400, nil},
		{"bad reason", url.Values{"keptReason": {"vibes"}}, 400, nil},
		{"bad tags", url.Values{"tags": {`novalue`}}, 400, nil},
		{"bad start", url.Values{"start": {"yesterday"}}, 400, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, hdr, body := e.grafana(t, "/api/v1/search?"+tc.query.Encode(), "")
			require.Equal(t, tc.status, code, string(body))
			require.Contains(t, hdr.Get("Content-Type"), "application/json")
			if tc.status != 200 {
				var er struct{ Error string }
				require.NoError(t, json.Unmarshal(body, &er))
				require.NotEmpty(t, er.Error)
				return
			}
			var res result
			require.NoError(t, json.Unmarshal(body, &res))
			got := []string{}
			for _, tr := range res.Traces {
				got = append(got, tr.TraceID)
			}
			require.Equal(t, tc.want, got)
		})
	}

	t.Run("summary fields", func(t *testing.T) {
		code, _, body := e.grafana(t, "/api/v1/search?service=checkout", "")
		require.Equal(t, 200, code)
		var raw struct {
			Traces []map[string]any `json:"traces"`
		}
		require.NoError(t, json.Unmarshal(body, &raw))
		require.Len(t, raw.Traces, 1)
		tr := raw.Traces[0]
		require.Equal(t, "checkout", tr["rootServiceName"])
		require.Equal(t, "POST /pay", tr["rootTraceName"])
		// 64-bit nanoseconds travel as a string so JavaScript keeps them exact.
		require.Equal(t, "1767225600000000000", tr["startTimeUnixNano"])
		require.InDelta(t, 250.0, tr["durationMs"], 0.001)
		require.EqualValues(t, 1, tr["errorCount"])
		// Both indexers hold part of the trace; counts add up.
		require.GreaterOrEqual(t, tr["spanCount"], float64(4))
		require.Equal(t, []any{"error", "latency_topn"}, tr["keptReasons"])
		require.Equal(t, []any{"checkout", "payments"}, tr["services"])
	})

	t.Run("kept reason", func(t *testing.T) {
		for reason, want := range map[string]string{"baseline": traceBHex, "error": traceAHex} {
			code, _, body := e.grafana(t, "/api/v1/search?keptReason="+reason, "")
			require.Equal(t, 200, code)
			var res result
			require.NoError(t, json.Unmarshal(body, &res))
			ids := []string{}
			for _, tr := range res.Traces {
				ids = append(ids, tr.TraceID)
			}
			require.Contains(t, ids, want, reason)
			for _, tr := range res.Traces {
				require.Contains(t, tr.KeptReasons, reason)
			}
		}
	})
}

func TestNativeSearchPartial(t *testing.T) {
	s0, s1 := fixture()
	readers := startReaders(t, s0, s1)
	e := newEnv(t, append(readers, deadReader(t)))
	code, _, body := e.grafana(t, "/api/v1/search", "")
	require.Equal(t, 200, code, string(body))
	var res nativeSearchResponse
	require.NoError(t, json.Unmarshal(body, &res))
	require.Len(t, res.Traces, 2)
	require.Len(t, res.Warnings, 1)
	require.Contains(t, res.Warnings[0], "1 of 3 indexers failed")

	e = newEnv(t, nil)
	code, _, _ = e.grafana(t, "/api/v1/search", "")
	require.Equal(t, http.StatusServiceUnavailable, code)
}

func TestNativeTrace(t *testing.T) {
	e := splitEnv(t)
	for _, path := range []string{"/api/v1/traces/" + traceAHex, "/api/v1/traces/" + traceAHex + "?raw=true"} {
		t.Run(path, func(t *testing.T) {
			code, _, body := e.grafana(t, path, "")
			require.Equal(t, 200, code, string(body))
			var tr nativeTrace
			require.NoError(t, json.Unmarshal(body, &tr))
			require.Equal(t, traceAHex, tr.TraceID)
			require.Equal(t, []string{"error", "latency_topn"}, tr.KeptReasons)
			require.Equal(t, path != "/api/v1/traces/"+traceAHex, tr.Raw)
			// The span stored on both indexers appears once; start order.
			require.Len(t, tr.Spans, 4)
			names := []string{}
			for _, s := range tr.Spans {
				names = append(names, s.Name)
			}
			require.Equal(t, []string{"POST /pay", "charge", "Charge", "db.query"}, names)

			root := tr.Spans[0]
			require.Equal(t, "000000000000a001", root.SpanID)
			require.Empty(t, root.ParentSpanID)
			require.Equal(t, "server", root.Kind)
			require.Equal(t, "checkout", root.Service)
			require.Equal(t, map[string]any{"service.name": "checkout", "host.name": "web-1"}, root.Resource)
			// Adjusted, the spans are numbered as one trace (logical
			// timestamps), though two indexers hold parts of it.
			logical := []any{}
			for _, s := range tr.Spans {
				if v, ok := s.Attributes["threadline.logical_time"]; ok {
					logical = append(logical, v)
				}
			}
			if tr.Raw {
				require.Empty(t, logical)
			} else {
				require.ElementsMatch(t, []any{float64(1), float64(2), float64(3), float64(4)}, logical)
			}
			delete(root.Attributes, "threadline.logical_time")
			require.Equal(t, map[string]any{"http.method": "POST", "http.status_code": float64(502)}, root.Attributes)
			require.Equal(t, nativeStatus{Code: "error", Message: "card declined"}, root.Status)
			require.Equal(t, nativeScope{Name: "io.opentelemetry.http", Version: "1.2.0"}, root.Scope)
			require.Equal(t, "1767225600000000000", root.StartTimeUnixNano)
			require.Equal(t, "1767225600250000000", root.EndTimeUnixNano)
			require.Equal(t, []nativeEvent{{Name: "exception", TimeUnixNano: "1767225600200000000",
				Attributes: map[string]any{"exception.message": "boom"}}}, root.Events)

			charge := tr.Spans[2]
			require.Equal(t, "000000000000a002", charge.ParentSpanID)
			require.Equal(t, "payments", charge.Service)
			require.Equal(t, "unset", charge.Status.Code)
			require.Equal(t, []nativeLink{{TraceID: traceBHex, SpanID: "000000000000a009", Attributes: map[string]any{}}}, charge.Links)
			require.NotNil(t, charge.Events)
		})
	}

	cases := []struct {
		path   string
		status int
	}{
		{"/api/v1/traces/ffffffffffffffffffffffffffffffff", 404},
		{"/api/v1/traces/nothex", 400},
		{"/api/v1/traces/" + traceAHex + "?raw=perhaps", 400},
	}
	for _, tc := range cases {
		code, _, body := e.grafana(t, tc.path, "")
		require.Equal(t, tc.status, code, tc.path)
		require.Contains(t, string(body), `"error"`)
	}

	// Only GET: a POST is answered 405 by the API, not a UI catch-all.
	resp, err := http.Post(e.srv.URL+"/api/v1/search", "application/json", nil)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
}

func TestAnyValueJSON(t *testing.T) {
	str := func(s string) *commonpb.AnyValue {
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: s}}
	}
	i64 := func(n int64) *commonpb.AnyValue {
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: n}}
	}
	f64 := func(f float64) *commonpb.AnyValue {
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: f}}
	}
	cases := []struct {
		name string
		in   *commonpb.AnyValue
		want string // JSON
	}{
		{"string", str(`<img src=x onerror=alert(1)>`), `"\u003cimg src=x onerror=alert(1)\u003e"`},
		{"bool", &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: true}}, `true`},
		{"int", i64(-42), `-42`},
		{"safe int", i64(1<<53 - 1), `9007199254740991`},
		{"big int", i64(1 << 60), `"1152921504606846976"`},
		{"negative big int", i64(-(1 << 60)), `"-1152921504606846976"`},
		{"double", f64(1.5), `1.5`},
		{"nan", f64(math.NaN()), `"NaN"`},
		{"inf", f64(math.Inf(-1)), `"-Inf"`},
		{"bytes", &commonpb.AnyValue{Value: &commonpb.AnyValue_BytesValue{BytesValue: []byte{1, 2, 3}}}, `"AQID"`},
		{"array", &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{
			Values: []*commonpb.AnyValue{str("a"), i64(1)}}}}, `["a",1]`},
		{"kvlist", &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: &commonpb.KeyValueList{
			Values: []*commonpb.KeyValue{{Key: "k", Value: str("v")}, {Key: "n", Value: nil}}}}}, `{"k":"v","n":null}`},
		{"empty", nil, `null`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(anyValueJSON(tc.in))
			require.NoError(t, err)
			require.JSONEq(t, tc.want, string(b))
		})
	}
}
