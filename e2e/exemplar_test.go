package e2e

import (
	"bufio"
	"context"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// TestExemplarTracesOfAlertingMetricKept: exemplar traces of an alerting
// metric are kept even when neither slow nor failing. The OTel SDK sends
// fast, successful traces and a histogram whose exemplars point at some of
// them; the alert rules name that metric; no baseline and top-1 would drop
// them all. Two orders: the metric is exported after the traces were already
// decided and dropped (the usual production case: metric export intervals
// are longer than decision-wait), and before the trace's spans arrive.
func TestExemplarTracesOfAlertingMetricKept(t *testing.T) {
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.yaml")
	require.NoError(t, os.WriteFile(rules, []byte(`
groups:
  - name: checkout
    rules:
      - alert: CheckoutSlow
        expr: {kind: metric, name: checkout.duration, matchers: {service.name: checkout}, op: ">", threshold: 5000}
`), 0o600))
	cfg := testConfig(filepath.Join(dir, "data"))
	cfg.Indexer.Sampling.Baseline = 0
	cfg.Indexer.Sampling.TopN = 1
	cfg.Query.Alerts.RulesFile = rules
	a := startAllInOne(t, cfg)

	ctx := context.Background()
	res := resource.NewWithAttributes("", attribute.String("service.name", "checkout"))
	texp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(a.otlpGRPC), otlptracegrpc.WithInsecure())
	require.NoError(t, err)
	tp := sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithSyncer(texp))
	mexp, err := otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpoint(a.otlpGRPC), otlpmetricgrpc.WithInsecure())
	require.NoError(t, err)
	reader := sdkmetric.NewPeriodicReader(mexp, sdkmetric.WithInterval(time.Hour)) // exported by ForceFlush
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithReader(reader),
		sdkmetric.WithExemplarFilter(exemplar.TraceBasedFilter))
	hist, err := mp.Meter("e2e").Float64Histogram("checkout.duration", metric.WithUnit("ms"))
	require.NoError(t, err)
	other, err := mp.Meter("e2e").Float64Histogram("checkout.bytes") // no rule evaluates it
	require.NoError(t, err)
	tr := tp.Tracer("e2e")

	// The slowest trace comes first and takes the one top-N slot, so every
	// later (fast) trace is dropped at once.
	_, slow := tr.Start(ctx, "POST /pay")
	time.Sleep(30 * time.Millisecond)
	slow.End()

	// Phase 1: three exemplar traces (values in distinct histogram buckets,
	// so the SDK's bucket-aligned reservoir keeps one exemplar each), three
	// plain fast traces, one fast trace with an exemplar of a metric no rule
	// evaluates.
	pinned := map[string]bool{}
	var plain []string
	for i, v := range []float64{30, 60, 90} {
		sctx, sp := tr.Start(ctx, "POST /pay")
		hist.Record(sctx, v, metric.WithAttributes(attribute.String("route", "/pay")))
		sp.End()
		pinned[sp.SpanContext().TraceID().String()] = true
		_, sp = tr.Start(ctx, "POST /pay")
		sp.End()
		plain = append(plain, sp.SpanContext().TraceID().String())
		if i == 0 {
			sctx, sp = tr.Start(ctx, "POST /pay")
			other.Record(sctx, 1)
			sp.End()
			plain = append(plain, sp.SpanContext().TraceID().String())
		}
	}
	// Wait until the indexer decided (and dropped) the seven fast traces.
	require.Eventually(t, func() bool {
		return scrape(t, a.query, `threadline_indexer_traces_total{decision="dropped"}`) >= 7
	}, 30*time.Second, 50*time.Millisecond, "fast traces never dropped")
	exported := time.Now()
	require.NoError(t, mp.ForceFlush(ctx))

	// Phase 2: the metric is exported while the trace is still open, so its
	// exemplar reaches the indexer before any of its spans.
	sctx, sp := tr.Start(ctx, "POST /pay")
	hist.Record(sctx, 40, metric.WithAttributes(attribute.String("route", "/refund")))
	require.NoError(t, mp.ForceFlush(ctx))
	time.Sleep(200 * time.Millisecond)
	sp.End()
	early := sp.SpanContext().TraceID().String()
	pinned[early] = true

	type result struct {
		Traces []struct {
			TraceID     string   `json:"traceID"`
			KeptReasons []string `json:"keptReasons"`
		} `json:"traces"`
	}
	q := url.Values{"start": {strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10)}, "end": {strconv.FormatInt(time.Now().Add(time.Minute).Unix(), 10)}, "limit": {"1000"}}
	got := map[string][]string{}
	require.Eventually(t, func() bool {
		var res result
		if getJSON(t, a.query+"/api/v1/search?"+q.Encode(), &res) != http.StatusOK {
			return false
		}
		clear(got)
		for _, tr := range res.Traces {
			got[tr.TraceID] = tr.KeptReasons
		}
		for id := range pinned {
			if got[id] == nil {
				return false
			}
		}
		return true
	}, 30*time.Second, 50*time.Millisecond, "exemplar traces never all kept")
	t.Logf("dropped traces kept %s after their metric export", time.Since(exported))
	time.Sleep(500 * time.Millisecond) // nothing else may appear
	var final result
	require.Equal(t, http.StatusOK, getJSON(t, a.query+"/api/v1/search?"+q.Encode(), &final))
	for _, tr := range final.Traces {
		if tr.TraceID == slow.SpanContext().TraceID().String() {
			require.Equal(t, []string{"latency_topn"}, tr.KeptReasons, "the slowest trace is kept for latency once its window closes")
			continue
		}
		require.True(t, pinned[tr.TraceID], "trace %s (%v) is not an exemplar trace", tr.TraceID, tr.KeptReasons)
		require.Equal(t, []string{"exemplar"}, tr.KeptReasons, "trace %s", tr.TraceID)
	}
	for _, id := range plain {
		require.Nil(t, getTrace(t, a.query, id), "plain fast trace %s kept", id)
	}
	td := getTrace(t, a.query, early)
	require.NotNil(t, td)
	require.Equal(t, 1, countSpans(td))
	require.Equal(t, 3.0, scrape(t, a.query, `threadline_indexer_exemplar_pins_total{outcome="refetched"}`))
	require.Equal(t, 1.0, scrape(t, a.query, `threadline_indexer_exemplar_pins_total{outcome="early"}`)+
		scrape(t, a.query, `threadline_indexer_exemplar_pins_total{outcome="assembling"}`))
	require.Zero(t, scrape(t, a.query, `threadline_indexer_exemplar_pins_total{outcome="refetch_failed"}`))
	t.Logf("refetch (fetch from Kafka, skew repair, write) per dropped trace: %.1f ms on average",
		1000*scrape(t, a.query, "threadline_indexer_exemplar_refetch_duration_seconds_sum")/scrape(t, a.query, "threadline_indexer_exemplar_refetch_duration_seconds_count"))
	require.NoError(t, tp.Shutdown(ctx))
	require.NoError(t, mp.Shutdown(ctx))
}

// scrape reads one sample (name with labels, as exposed) from /metrics.
func scrape(t *testing.T, base, series string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err, line)
			return f
		}
	}
	require.NoError(t, sc.Err())
	return 0
}
