package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/threadline/threadline/app"
	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/health"
)

// TestDistributedRoles runs the roles as a distributed deployment would — one
// collector, two indexers in one consumer group, one query service — against a
// shared broker: the indexers split the partitions, and the query service fans
// out and returns every trace whole.
func TestDistributedRoles(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	emb := bus.DefaultEmbeddedConfig()
	emb.Addr, emb.DataDir, emb.SyncWrites = "127.0.0.1:0", t.TempDir(), false
	broker, err := bus.StartEmbedded(ctx, emb, bus.DefaultConfig().Topics(), quietLogger())
	require.NoError(t, err)

	var runs []func() error
	var indexerAddrs []string
	spansWritten := []func() float64{}
	var readyURLs []string
	for range 2 {
		cfg := app.DefaultIndexerConfig()
		cfg.DataDir, cfg.GRPCAddr = t.TempDir(), "127.0.0.1:0"
		cfg.Kafka.Brokers = []string{broker.Addr()}
		cfg.Sampling.Baseline = 1
		cfg.Indexer.DecisionWait = 300 * time.Millisecond
		h := health.New("test")
		ix, err := app.NewIndexer(cfg, quietLogger(), h)
		require.NoError(t, err)
		indexerAddrs = append(indexerAddrs, ix.ReadAddr())
		runs = append(runs, func() error { return ix.Run(ctx) })
		spansWritten = append(spansWritten, func() float64 { return metricValue(t, h, "threadline_indexer_spans_written_total") })
		mux := http.NewServeMux()
		h.Register(mux)
		srv := httptest.NewServer(mux)
		t.Cleanup(srv.Close)
		readyURLs = append(readyURLs, srv.URL+"/readyz")
	}
	ccfg := app.DefaultCollectorConfig()
	ccfg.Kafka.Brokers = []string{broker.Addr()}
	ccfg.Receiver.GRPCAddr, ccfg.Receiver.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	coll, err := app.NewCollector(ccfg, quietLogger(), health.New("test"))
	require.NoError(t, err)
	runs = append(runs, func() error { return coll.Run(ctx) })
	qcfg := app.DefaultQueryConfig()
	qcfg.HTTPAddr, qcfg.Indexers = "127.0.0.1:0", indexerAddrs
	q, err := app.NewQuery(qcfg, quietLogger(), health.New("test"))
	require.NoError(t, err)
	runs = append(runs, func() error { return q.Run(ctx) })

	errs := make(chan error, len(runs))
	for _, run := range runs {
		go func() { errs <- run() }()
	}
	t.Cleanup(func() {
		cancel()
		for range runs {
			require.NoError(t, <-errs)
		}
		broker.Close()
	})

	qa, err := q.Addr(ctx)
	require.NoError(t, err)
	base := "http://" + qa.String()
	grpcAddr, _ := coll.Receiver().Addrs()
	conn, err := grpc.NewClient(grpcAddr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	// Wait for the group to settle: both indexers own partitions (readyz).
	for _, u := range readyURLs {
		require.Eventually(t, func() bool { return getJSON(t, u, nil) == 200 }, 30*time.Second, 100*time.Millisecond)
	}
	req, ids := makeRequest(40, 3)
	require.Eventually(t, func() bool {
		_, err := collectortracepb.NewTraceServiceClient(conn).Export(ctx, req)
		return err == nil
	}, 30*time.Second, 200*time.Millisecond)
	for _, id := range ids {
		waitTrace(t, base, hexID(id), 3)
	}
	require.Eventually(t, func() bool { return spansWritten[0]()+spansWritten[1]() >= 120 }, 10*time.Second, 50*time.Millisecond)
	require.Positive(t, spansWritten[0](), "indexer 0 owns partitions")
	require.Positive(t, spansWritten[1](), "indexer 1 owns partitions")
}
