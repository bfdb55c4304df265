package query

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	readerpb "github.com/threadline/threadline/proto/reader/v1"
)

func TestParseTraceQL(t *testing.T) {
	ms := int64(time.Millisecond)
	tests := []struct {
		q    string
		want *readerpb.SearchRequest
	}{
		{"{}", &readerpb.SearchRequest{Tags: map[string]string{}, SameSpan: true}},
		{"  { }  ", &readerpb.SearchRequest{Tags: map[string]string{}, SameSpan: true}},
		{`{ resource.service.name = "x" && name = "y" && duration > 100ms && status = error }`, &readerpb.SearchRequest{
			Tags: map[string]string{"service.name": "x", "name": "y", "status": "error"}, SameSpan: true, SpanMinDurationNanos: 100*ms + 1}},
		{`{span.http.method="GET"&&.peer="a \"b\""&&duration<=2s&&duration>=1s}`, &readerpb.SearchRequest{
			Tags: map[string]string{"http.method": "GET", "peer": `a "b"`}, SameSpan: true,
			SpanMinDurationNanos: 1000 * ms, SpanMaxDurationNanos: 2000 * ms}},
		{"{ span.http.status_code = 500 && traceDuration < 1s }", &readerpb.SearchRequest{
			Tags: map[string]string{"http.status_code": "500"}, SameSpan: true, MaxDurationNanos: 1000*ms - 1}},
		{"{ name = `raw` }", &readerpb.SearchRequest{Tags: map[string]string{"name": "raw"}, SameSpan: true}},
	}
	for _, tc := range tests {
		t.Run(tc.q, func(t *testing.T) {
			got, err := parseTraceQL(tc.q)
			require.NoError(t, err)
			require.True(t, proto.Equal(tc.want, got), "got %v", got)
		})
	}
	for _, bad := range []string{
		"", "{", "}", "{ name = }", `{ name = "a" && }`, `{ name = "a" }{}`, `{ name = "a" } | by(x)`,
		`{ name =~ "a.*" }`, `{ status = bad }`, `{ name = y }`, `{ duration > "1s" }`, `{ duration < 0s }`,
		`{ duration > 2s && duration < 1s }`, `{ name = "a" && name = "b" }`, `{ .x = "unterminated }`,
		`{ resource. = "x" }`, `{ true }`, `{ .x = nope }`, `{ name = "a" } >> { name = "b" }`,
	} {
		t.Run("bad "+bad, func(t *testing.T) {
			_, err := parseTraceQL(bad)
			require.ErrorIs(t, err, errTraceQL)
			require.Contains(t, err.Error(), "supported TraceQL")
		})
	}
}

func TestParseLogfmtTags(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
	}{
		{"", map[string]string{}},
		{"   ", map[string]string{}},
		{` service.name="telemetrygen" name="lets-go"`, map[string]string{"service.name": "telemetrygen", "name": "lets-go"}},
		{`a=1 b=two c="x y" d=""`, map[string]string{"a": "1", "b": "two", "c": "x y", "d": ""}},
		{`k="say \"hi\""`, map[string]string{"k": `say "hi"`}},
		{`k=1 k=2`, map[string]string{"k": "2"}},
		{"http.url=/a/b?c", map[string]string{"http.url": "/a/b?c"}},
	}
	for _, tc := range tests {
		got, err := parseLogfmtTags(tc.in)
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
	for _, bad := range []string{`novalue`, `=x`, `k="open`, `k="a"b`, `k=a"b`, `k=a=b`, `"k"=v`, `k="\q"`} {
		_, err := parseLogfmtTags(bad)
		require.Error(t, err, bad)
		require.True(t, strings.HasPrefix(err.Error(), "tags: "), err.Error())
	}
}

func FuzzParseTraceQL(f *testing.F) {
	for _, s := range []string{
		"{}", `{ resource.service.name = "x" && name = "y" && duration > 100ms && status = error }`,
		`{.a="b"}`, "{ name = `x` }", `{ duration >= 1s && duration <= 2s }`, `{ "`, "{ a = \"\\", "{ traceDuration < 1ns }",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		req, err := parseTraceQL(q)
		if err != nil {
			require.ErrorIs(t, err, errTraceQL)
			return
		}
		require.True(t, req.GetSameSpan())
		if req.GetSpanMaxDurationNanos() != 0 {
			require.LessOrEqual(t, req.GetSpanMinDurationNanos(), req.GetSpanMaxDurationNanos())
		}
		require.GreaterOrEqual(t, req.GetSpanMinDurationNanos(), int64(0))
		for k := range req.GetTags() {
			require.NotEmpty(t, k)
		}
	})
}

func FuzzParseLogfmtTags(f *testing.F) {
	for _, s := range []string{
		` service.name="telemetrygen" name="lets-go"`, `a=1 b="x y"`, `k="\"`, `k=`, `=`, "k=\"\\u00e9\" z=1", "\t a=b\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tags, err := parseLogfmtTags(s)
		if err != nil {
			require.Nil(t, tags)
			return
		}
		for k := range tags {
			require.NotEmpty(t, k)
			require.NotContains(t, k, "=")
			require.NotContains(t, k, " ")
		}
	})
}

func TestMergeSummaries(t *testing.T) {
	id := func(b byte) []byte { return []byte{b, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} }
	a := &readerpb.SearchResponse{Traces: []*readerpb.TraceSummary{
		// Only children of trace 1 here: no real root.
		{TraceId: id(1), RootServiceName: "payments", RootSpanName: "Charge", StartUnixNano: 120, DurationNanos: 100, SpanCount: 2, KeptReasons: []string{"latency_topn"}, Services: []string{"payments"}},
		{TraceId: id(2), RootServiceName: "old", StartUnixNano: 10, DurationNanos: 5, SpanCount: 1},
	}}
	b := &readerpb.SearchResponse{Traces: []*readerpb.TraceSummary{
		{TraceId: id(1), RootServiceName: "checkout", RootSpanName: "POST /pay", StartUnixNano: 100, DurationNanos: 50, SpanCount: 1, ErrorCount: 1, KeptReasons: []string{"error"}, Services: []string{"checkout"}},
		{TraceId: id(3), RootServiceName: "new", StartUnixNano: 500, DurationNanos: 5, SpanCount: 1},
	}}
	got := mergeSummaries([]*readerpb.SearchResponse{a, b}, 2)
	require.Len(t, got, 2)
	require.Equal(t, id(3), got[0].GetTraceId(), "newest first")
	m := got[1]
	require.Equal(t, "checkout", m.GetRootServiceName(), "root from the earliest-starting summary")
	require.Equal(t, "POST /pay", m.GetRootSpanName())
	require.Equal(t, int64(100), m.GetStartUnixNano())
	require.Equal(t, int64(120), m.GetDurationNanos(), "100 → 220")
	require.Equal(t, uint32(3), m.GetSpanCount())
	require.Equal(t, uint32(1), m.GetErrorCount())
	require.Equal(t, []string{"error", "latency_topn"}, m.GetKeptReasons())
	require.Equal(t, []string{"checkout", "payments"}, m.GetServices())
	// Inputs are not modified.
	require.Equal(t, uint32(2), a.GetTraces()[0].GetSpanCount())
}
