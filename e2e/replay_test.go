package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/url"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestKill9DuringWindowSameDecisions: traffic for one sampling window is sent
// in two halves with a SIGKILL between them, while the window is still open
// (its top-N traces held, their Kafka records uncommitted). After restart and
// replay, exactly the errors and the true top-N are stored and RED counts every
// span exactly once — as if nothing had happened.
func TestKill9DuringWindowSameDecisions(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin, err := buildThreadline()
	require.NoError(t, err)
	dir := t.TempDir()
	ports := map[string]string{"grpc": freePort(t), "http": freePort(t), "kafka": freePort(t), "indexer": freePort(t), "query": freePort(t)}
	flags := []string{"--sampling-baseline", "0", "--sampling-topn", "3", "--decision-max-wait", "1s",
		// Windows close only once traffic stops, not because time passes:
		// 10 s without a new trace, more than the restart, replay and
		// second half take.
		"--watermark-slack", "10m", "--watermark-idle-advance", "10s"}
	p := startProcess(t, bin, dir, ports, flags...)

	base := time.Now().Add(-20 * time.Minute).Truncate(time.Minute)
	var sent []sentTrace
	batch := func(from, to int) *collectortracepb.ExportTraceServiceRequest {
		req := &collectortracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{
			{Resource: resourceOf("kitchen", "host-k"), ScopeSpans: []*tracepb.ScopeSpans{{}}},
		}}
		for i := from; i < to; i++ {
			tid, sid := make([]byte, 16), make([]byte, 8)
			_, _ = rand.Read(tid)
			_, _ = rand.Read(sid)
			st := sentTrace{id: hexID(tid), service: "kitchen", op: fmt.Sprintf("cook %d", i%2), duration: time.Duration(5+(i*37)%97) * time.Millisecond, err: i%9 == 4}
			start := base.Add(time.Duration(i) * 100 * time.Millisecond)
			sp := &tracepb.Span{TraceId: tid, SpanId: sid, Name: st.op, Kind: tracepb.Span_SPAN_KIND_SERVER,
				StartTimeUnixNano: uint64(start.UnixNano()), EndTimeUnixNano: uint64(start.Add(st.duration).UnixNano())}
			if st.err {
				sp.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR}
			}
			req.ResourceSpans[0].ScopeSpans[0].Spans = append(req.ResourceSpans[0].ScopeSpans[0].Spans, sp)
			sent = append(sent, st)
		}
		return req
	}
	export := func(addr string, req *collectortracepb.ExportTraceServiceRequest) {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		defer conn.Close()
		_, err = collectortracepb.NewTraceServiceClient(conn).Export(context.Background(), req)
		require.NoError(t, err)
	}
	export(p.otlpGRPC, batch(0, 60))
	time.Sleep(1500 * time.Millisecond) // decided: errors written, top-N held, the rest dropped
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	_ = p.cmd.Wait()

	p2 := startProcess(t, bin, dir, ports, flags...)
	export(p2.otlpGRPC, batch(60, 120))

	want := map[string]string{}
	groups := map[string][]sentTrace{}
	for _, s := range sent {
		if s.err {
			want[s.id] = "error"
		} else {
			groups[s.op] = append(groups[s.op], s)
		}
	}
	for _, g := range groups {
		sort.Slice(g, func(i, j int) bool { return g[i].duration > g[j].duration })
		for _, s := range g[:3] {
			want[s.id] = "latency_topn"
		}
	}
	q := url.Values{"start": {fmt.Sprint(base.Add(-time.Minute).Unix())}, "end": {fmt.Sprint(base.Add(2 * time.Minute).Unix())}, "limit": {"1000"}}
	type result struct {
		Traces []struct {
			TraceID     string   `json:"traceID"`
			KeptReasons []string `json:"keptReasons"`
		} `json:"traces"`
	}
	var res result
	require.Eventually(t, func() bool {
		res = result{}
		return getJSON(t, p2.query+"/api/v1/search?"+q.Encode(), &res) == 200 && len(res.Traces) >= len(want)
	}, 60*time.Second, 200*time.Millisecond)
	time.Sleep(time.Second)
	res = result{}
	require.Equal(t, 200, getJSON(t, p2.query+"/api/v1/search?"+q.Encode(), &res))
	got := map[string]string{}
	for _, tr := range res.Traces {
		got[tr.TraceID] = tr.KeptReasons[0]
	}
	require.Equal(t, want, got, "the same decisions as without the crash")

	for o := range 2 {
		rq := url.Values{"service": {"kitchen"}, "operation": {fmt.Sprintf("cook %d", o)},
			"start": {fmt.Sprint(base.Unix())}, "end": {fmt.Sprint(base.Add(time.Minute).Unix())}, "step": {"1m"}}
		var count float64
		require.Eventually(t, func() bool {
			var red struct {
				Series []struct {
					Count float64 `json:"count"`
				} `json:"series"`
			}
			if getJSON(t, p2.query+"/api/v1/metrics/red?"+rq.Encode(), &red) != 200 {
				return false
			}
			count = 0
			for _, pt := range red.Series {
				count += pt.Count
			}
			return count >= 60
		}, 30*time.Second, 200*time.Millisecond)
		time.Sleep(1500 * time.Millisecond) // a double count would show up by now
		require.Equal(t, float64(60), count, "every span counted once, across the crash")
	}
	require.NoError(t, p2.cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, p2.cmd.Wait())
}
