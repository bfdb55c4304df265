package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/url"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/threadline/threadline/app"
)

// traceClient is an OTLP/gRPC trace client of addr, closed with the test.
func traceClient(t *testing.T, addr string) collectortracepb.TraceServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return collectortracepb.NewTraceServiceClient(conn)
}

type sentTrace struct {
	id       string
	service  string
	op       string
	duration time.Duration
	err      bool
}

// topNConfig is the all-in-one keeping the topN slowest traces per key and
// window and every error trace, nothing by baseline, with windows that close
// soon after the traffic stops.
func topNConfig(dir string, topN int) app.AllInOneConfig {
	cfg := testConfig(dir)
	cfg.Indexer.Sampling.Baseline = 0
	cfg.Indexer.Sampling.TopN = topN
	cfg.Indexer.Indexer.DecisionMaxWait = time.Second
	cfg.Indexer.Indexer.WatermarkSlack = 0
	cfg.Indexer.Indexer.IdleAdvance = 500 * time.Millisecond
	return cfg
}

// TestSamplingAndREDThroughPipeline sends traffic with known ground truth
// through the whole all-in-one with the default policy (no baseline): after the
// window closes exactly the error traces plus the N slowest per (service,
// operation) are stored, each with its reason, and the RED metrics count every
// span sent, including those of dropped traces.
func TestSamplingAndREDThroughPipeline(t *testing.T) {
	a := startAllInOne(t, topNConfig(t.TempDir(), 2))

	client := traceClient(t, a.otlpGRPC)

	// One closed minute, ten minutes ago: the window closes once traffic stops.
	base := time.Now().Add(-10 * time.Minute).Truncate(time.Minute)
	var sent []sentTrace
	req := &collectortracepb.ExportTraceServiceRequest{}
	for _, svc := range []string{"order", "payment"} {
		rs := &tracepb.ResourceSpans{
			Resource:   &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: svc}}}}},
			ScopeSpans: []*tracepb.ScopeSpans{{}},
		}
		for o := range 3 {
			op := fmt.Sprintf("POST /op%d", o)
			for i := range 8 {
				tid, sid := make([]byte, 16), make([]byte, 8)
				_, _ = rand.Read(tid)
				_, _ = rand.Read(sid)
				st := sentTrace{id: hexID(tid), service: svc, op: op, duration: time.Duration(10+i*7+o) * time.Millisecond, err: i == 5}
				start := base.Add(time.Duration(i) * time.Second)
				sp := &tracepb.Span{TraceId: tid, SpanId: sid, Name: op, Kind: tracepb.Span_SPAN_KIND_SERVER,
					StartTimeUnixNano: uint64(start.UnixNano()), EndTimeUnixNano: uint64(start.Add(st.duration).UnixNano())}
				if st.err {
					sp.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: "boom"}
				}
				rs.ScopeSpans[0].Spans = append(rs.ScopeSpans[0].Spans, sp)
				sent = append(sent, st)
			}
		}
		req.ResourceSpans = append(req.ResourceSpans, rs)
	}
	_, err := client.Export(context.Background(), req)
	require.NoError(t, err)

	want := map[string]string{}
	groups := map[string][]sentTrace{}
	for _, s := range sent {
		if s.err {
			want[s.id] = "error"
		} else {
			groups[s.service+s.op] = append(groups[s.service+s.op], s)
		}
	}
	for _, g := range groups {
		sort.Slice(g, func(i, j int) bool { return g[i].duration > g[j].duration })
		for _, s := range g[:2] {
			want[s.id] = "latency_topn"
		}
	}

	type result struct {
		Traces []struct {
			TraceID     string   `json:"traceID"`
			KeptReasons []string `json:"keptReasons"`
		} `json:"traces"`
	}
	var res result
	q := url.Values{"start": {fmt.Sprint(base.Add(-time.Minute).Unix())}, "end": {fmt.Sprint(base.Add(2 * time.Minute).Unix())}, "limit": {"1000"}}
	require.Eventually(t, func() bool {
		res = result{}
		return getJSON(t, a.query+"/api/v1/search?"+q.Encode(), &res) == 200 && len(res.Traces) >= len(want)
	}, 30*time.Second, 100*time.Millisecond, "kept traces never all appeared")
	time.Sleep(time.Second) // nothing more may appear
	res = result{}
	require.Equal(t, 200, getJSON(t, a.query+"/api/v1/search?"+q.Encode(), &res))
	got := map[string]string{}
	for _, tr := range res.Traces {
		require.Len(t, tr.KeptReasons, 1, "trace %s", tr.TraceID)
		got[tr.TraceID] = tr.KeptReasons[0]
	}
	require.Equal(t, want, got, "stored = errors + the true top-2 per key, with reasons")

	// RED counts every span sent, kept or not.
	for _, svc := range []string{"order", "payment"} {
		for o := range 3 {
			var red struct {
				Series []struct {
					Count  float64 `json:"count"`
					Errors float64 `json:"errors"`
				} `json:"series"`
			}
			rq := url.Values{"service": {svc}, "operation": {fmt.Sprintf("POST /op%d", o)},
				"start": {fmt.Sprint(base.Unix())}, "end": {fmt.Sprint(base.Add(time.Minute).Unix())}, "step": {"1m"}}
			require.Eventually(t, func() bool {
				red.Series = nil
				if getJSON(t, a.query+"/api/v1/metrics/red?"+rq.Encode(), &red) != 200 {
					return false
				}
				var n float64
				for _, p := range red.Series {
					n += p.Count
				}
				return n == 8
			}, 20*time.Second, 100*time.Millisecond, "RED count for %s %d", svc, o)
			var errs float64
			for _, p := range red.Series {
				errs += p.Errors
			}
			require.Equal(t, float64(1), errs)
		}
	}
}

// TestFutureDatedTraceThroughPipeline: a trace from a client whose clock runs
// an hour fast, between two batches of one window, neither closes that window
// nor waits for its own hour: it is ranked as of its records' Kafka timestamp
// (set by the collector, kept by the broker). The window is left open (a
// watermark slack of 5 minutes) and closed by the graceful shutdown's flush;
// a second all-in-one on the same data dir serves what was stored.
func TestFutureDatedTraceThroughPipeline(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.Indexer.Sampling.Baseline = 0
	cfg.Indexer.Sampling.TopN = 3
	cfg.Indexer.Indexer.DecisionMaxWait = time.Second
	cfg.Indexer.Indexer.WatermarkSlack = 5 * time.Minute
	a := startAllInOne(t, cfg)

	client := traceClient(t, a.otlpGRPC)
	base := time.Now().Add(-2 * time.Minute).Truncate(time.Minute)
	sent := 0
	send := func(start time.Time, d time.Duration) string {
		tid, sid := make([]byte, 16), make([]byte, 8)
		_, _ = rand.Read(tid)
		_, _ = rand.Read(sid)
		_, err := client.Export(context.Background(), &collectortracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
			Resource: resourceOf("kitchen", "host-k"),
			ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{TraceId: tid, SpanId: sid, Name: "cook", Kind: tracepb.Span_SPAN_KIND_SERVER,
				StartTimeUnixNano: uint64(start.UnixNano()), EndTimeUnixNano: uint64(start.Add(d).UnixNano())}}}},
		}}})
		require.NoError(t, err)
		sent++
		return hexID(tid)
	}
	decided := func() { // every trace sent is offered, and the watermark advanced after
		require.Eventually(t, func() bool {
			n := scrape(t, a.query, "threadline_sampling_held_traces")
			for _, o := range []string{"dropped", "dropped_evicted", "dropped_late", "kept_topn"} {
				n += scrape(t, a.query, `threadline_sampling_decisions_total{outcome="`+o+`"}`)
			}
			return n == float64(sent)
		}, 30*time.Second, 50*time.Millisecond)
		time.Sleep(300 * time.Millisecond)
	}
	var ids []string
	batch := func(slowest time.Duration) {
		for i := range 5 {
			ids = append(ids, send(base.Add(time.Duration(len(ids))*time.Second), slowest-time.Duration(i)*slowest/10))
		}
		decided()
	}
	batch(50 * time.Millisecond)
	future := send(time.Now().Add(time.Hour), time.Millisecond)
	decided()
	batch(500 * time.Millisecond) // slower: the window's top 3 are the first three of these
	require.Equal(t, 1.0, scrape(t, a.query, "threadline_indexer_future_dated_traces_total"))
	require.Zero(t, scrape(t, a.query, `threadline_sampling_decisions_total{outcome="dropped_late"}`))
	a.stop() // the flush keeps what the heaps hold

	b := startAllInOne(t, testConfig(dir))
	var res struct {
		Traces []struct {
			TraceID     string   `json:"traceID"`
			KeptReasons []string `json:"keptReasons"`
		} `json:"traces"`
	}
	q := url.Values{"start": {fmt.Sprint(base.Add(-time.Minute).Unix())}, "end": {fmt.Sprint(time.Now().Add(2 * time.Hour).Unix())}, "limit": {"100"}}
	require.Equal(t, 200, getJSON(t, b.query+"/api/v1/search?"+q.Encode(), &res))
	got := map[string][]string{}
	for _, tr := range res.Traces {
		got[tr.TraceID] = tr.KeptReasons
	}
	topn := []string{"latency_topn"}
	require.Equal(t, map[string][]string{ids[5]: topn, ids[6]: topn, ids[7]: topn, future: topn}, got,
		"the window's three slowest, and the future-dated trace alone in the window of its arrival")
}

// TestLateRootThroughPipeline: a request that outlasts the decision wait,
// through the real collector, broker and indexer (no alert rules). Its
// quick database call arrives first, and the trace is decided without its
// root and dropped: another trace's orphan call of the same name outranks
// it (top 1). When the root arrives 8 s of event time later, the trace is
// decided again by its root, kept, and the dropped call is fetched again
// from Kafka: all three spans are served.
func TestLateRootThroughPipeline(t *testing.T) {
	a := startAllInOne(t, topNConfig(t.TempDir(), 1))
	client := traceClient(t, a.otlpGRPC)
	export := func(tid []byte, spans ...*tracepb.Span) {
		for _, sp := range spans {
			sp.TraceId = tid
		}
		_, err := client.Export(context.Background(), &collectortracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
			Resource: resourceOf("checkout", "host-c"), ScopeSpans: []*tracepb.ScopeSpans{{Spans: spans}},
		}}})
		require.NoError(t, err)
	}
	ns := func(t time.Time) uint64 { return uint64(t.UnixNano()) }
	w := time.Now().Add(-3 * time.Minute).Truncate(time.Minute) // closes once traffic stops
	slow, other := make([]byte, 16), make([]byte, 16)
	_, _ = rand.Read(slow)
	_, _ = rand.Read(other)
	root, call, bank := []byte{0, 0, 0, 0, 0, 0, 0, 1}, []byte{0, 0, 0, 0, 0, 0, 0, 2}, []byte{0, 0, 0, 0, 0, 0, 0, 3}

	export(other, &tracepb.Span{SpanId: []byte{9, 9, 9, 9, 9, 9, 9, 9}, ParentSpanId: []byte{8, 8, 8, 8, 8, 8, 8, 8}, Name: "SELECT",
		StartTimeUnixNano: ns(w.Add(time.Second)), EndTimeUnixNano: ns(w.Add(time.Second + 40*time.Millisecond))})
	export(slow, &tracepb.Span{SpanId: call, ParentSpanId: root, Name: "SELECT",
		StartTimeUnixNano: ns(w.Add(2 * time.Second)), EndTimeUnixNano: ns(w.Add(2*time.Second + 5*time.Millisecond))})
	require.Eventually(t, func() bool {
		return scrape(t, a.query, `threadline_sampling_decisions_total{outcome="dropped"}`)+
			scrape(t, a.query, `threadline_sampling_decisions_total{outcome="dropped_evicted"}`) == 1
	}, 30*time.Second, 50*time.Millisecond, "the partial trace is dropped")

	export(slow,
		&tracepb.Span{SpanId: root, Name: "POST /pay", Kind: tracepb.Span_SPAN_KIND_SERVER,
			StartTimeUnixNano: ns(w.Add(2 * time.Second)), EndTimeUnixNano: ns(w.Add(10 * time.Second))},
		&tracepb.Span{SpanId: bank, ParentSpanId: root, Name: "authorize", Kind: tracepb.Span_SPAN_KIND_CLIENT,
			StartTimeUnixNano: ns(w.Add(2*time.Second + 10*time.Millisecond)), EndTimeUnixNano: ns(w.Add(9 * time.Second))})
	td := waitTrace(t, a.query, hexID(slow), 3)
	names := map[string]bool{}
	for _, rs := range td.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				names[sp.GetName()] = true
			}
		}
	}
	require.Equal(t, map[string]bool{"POST /pay": true, "SELECT": true, "authorize": true}, names)
	require.Equal(t, 1.0, scrape(t, a.query, `threadline_indexer_late_roots_total{outcome="refetched"}`))
}
