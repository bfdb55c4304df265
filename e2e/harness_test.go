package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/threadline/threadline/app"
	"github.com/threadline/threadline/health"
)

// Bleve starts its analysis workers at package init, for the process.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/blevesearch/bleve_index_api.AnalysisWorker"))
}

// allInOne is an in-process all-in-one on loopback ports chosen by the kernel.
type allInOne struct {
	otlpGRPC, otlpHTTP, query string
	stop                      func()
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// testConfig is the all-in-one's default config on free ports with short waits.
func testConfig(dataDir string) app.AllInOneConfig {
	cfg := app.DefaultAllInOneConfig()
	cfg.Indexer.DataDir = dataDir
	cfg.Collector.Receiver.GRPCAddr = "127.0.0.1:0"
	cfg.Collector.Receiver.HTTPAddr = "127.0.0.1:0"
	cfg.Embedded.Addr = "127.0.0.1:0"
	cfg.Embedded.SyncWrites = false // a process crash keeps the page cache; tests need not fsync
	cfg.Indexer.GRPCAddr = "127.0.0.1:0"
	cfg.Query.HTTPAddr = "127.0.0.1:0"
	cfg.Query.Query.MaxSearchLimit = 100000
	cfg.Indexer.Indexer.DecisionWait = 300 * time.Millisecond
	cfg.Indexer.Sampling.Baseline = 1 // these tests check the pipeline, not the sampling policy
	cfg.Indexer.Consumer.CommitInterval = 200 * time.Millisecond
	return cfg
}

func startAllInOne(t *testing.T, cfg app.AllInOneConfig) *allInOne {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.NewAllInOne(ctx, cfg, quietLogger(), health.New("test"))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	qa, err := a.Query().Addr(ctx)
	require.NoError(t, err)
	g, h := a.Collector().Receiver().Addrs()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(60 * time.Second):
			t.Fatal("all-in-one did not shut down within 60s")
		}
	}
	t.Cleanup(stop)
	aio := &allInOne{otlpGRPC: g.String(), otlpHTTP: h.String(), query: "http://" + qa.String(), stop: stop}
	aio.waitReady(t)
	return aio
}

func (a *allInOne) waitReady(t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool {
		resp, err := http.Get(a.query + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond, "all-in-one never became ready")
}

// getTrace fetches a trace the way Grafana's Tempo data source does (protobuf),
// raw (as received, without clock-skew adjustment), and returns its spans, or
// nil when the API answers 404.
func getTrace(t *testing.T, base, id string) *tracepb.TracesData {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/api/v2/traces/"+id+"?raw=true", nil)
	require.NoError(t, err)
	req.Header.Set("Accept", "application/protobuf")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if resp.StatusCode == http.StatusNotFound {
		return nil
	}
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	// TraceByIDResponse{Trace trace = 1}; Trace is wire-compatible with TracesData.
	td := &tracepb.TracesData{}
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		require.GreaterOrEqual(t, n, 0)
		body = body[n:]
		if num == 1 && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(body)
			require.GreaterOrEqual(t, m, 0)
			require.NoError(t, proto.Unmarshal(v, td))
			body = body[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, body)
		require.GreaterOrEqual(t, m, 0)
		body = body[m:]
	}
	return td
}

func countSpans(td *tracepb.TracesData) int {
	n := 0
	for _, rs := range td.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			n += len(ss.GetSpans())
		}
	}
	return n
}

// waitTrace polls until the trace has want spans (trace assembly waits for the
// trace to be quiet first).
func waitTrace(t *testing.T, base, id string, want int) *tracepb.TracesData {
	t.Helper()
	var td *tracepb.TracesData
	require.Eventually(t, func() bool {
		td = getTrace(t, base, id)
		return td != nil && countSpans(td) >= want
	}, 30*time.Second, 50*time.Millisecond, "trace %s never had %d spans", id, want)
	require.Equal(t, want, countSpans(td), "trace %s has more spans than sent", id)
	return td
}

func getJSON(t *testing.T, url string, into any) int {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if into != nil && resp.StatusCode == http.StatusOK {
		require.NoError(t, json.Unmarshal(body, into), string(body))
	}
	return resp.StatusCode
}

func postBody(t *testing.T, url, contentType string, body []byte, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", contentType)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, b
}

func hexID(b []byte) string { return fmt.Sprintf("%x", b) }

func get(t *testing.T, url string) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, b
}

// metricValue reads a counter or gauge (summed over its series) from h's registry.
func metricValue(t *testing.T, h *health.Health, name string) float64 {
	t.Helper()
	mfs, err := h.Registry().Gather()
	require.NoError(t, err)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}
