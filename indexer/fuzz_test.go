package indexer

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/alerting"
	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/clockskew"
	"github.com/threadline/threadline/index"
	"github.com/threadline/threadline/logstore"
	"github.com/threadline/threadline/metricstore"
	"github.com/threadline/threadline/red"
	"github.com/threadline/threadline/sampling"
)

// FuzzHandleRecords feeds arbitrary records of every topic to an indexer
// wired as the app wires it (span, RED, log and metric stores, the tail
// sampler, alert rules for exemplars). Kafka holds whatever any producer
// wrote: a record the indexer cannot take must be skipped, never crash it,
// for a crash would replay the same record at every restart. Once stopped,
// the indexer must have let go of every record, so that all offsets can be
// committed.
func FuzzHandleRecords(f *testing.F) {
	logger := slog.New(slog.DiscardHandler)
	spans, err := index.Open(f.TempDir(), logger, nil, index.DefaultOptions())
	require.NoError(f, err)
	rs, err := red.Open(f.TempDir(), logger, nil, red.DefaultOptions())
	require.NoError(f, err)
	logs, err := logstore.Open(f.TempDir(), logger, nil, logstore.DefaultOptions())
	require.NoError(f, err)
	metrics, err := metricstore.Open(f.TempDir(), logger, nil, metricstore.DefaultOptions())
	require.NoError(f, err)
	groups, err := alerting.ParseRules([]byte(exemplarRules))
	require.NoError(f, err)
	dec, err := sampling.NewTailSampler(sampling.DefaultConfig(), prometheus.NewRegistry())
	require.NoError(f, err)
	cfg := testConfig()
	ix, err := New(cfg, Parts{Store: spans, Decider: dec, Observer: rs, Logs: logs, Metrics: metrics,
		Alerting: alerting.NewMetricRules(groups), Stages: []Stage{skewStage{clockskew.RepairClockSkew(clockskew.DefaultConfig())}}}, logger, prometheus.NewRegistry())
	require.NoError(f, err)
	ledger := bus.NewLedger()
	stop := runIndexer(f, ix, 30*time.Second)
	f.Cleanup(func() {
		stop()
		require.NoError(f, metrics.Close())
		require.NoError(f, logs.Close())
		require.NoError(f, rs.Close()) // its last flush lets go of the records it counted
		require.NoError(f, spans.Close())
		require.Zero(f, ledger.Pending(), "records still held after the indexer and its stores stopped")
	})

	topics := []string{cfg.TracesTopic, cfg.LogsTopic, cfg.MetricsTopic, cfg.ExemplarsTopic}
	id := traceID(1)
	key := id.AppendHex(nil)
	w := time.Now().Add(-time.Minute)
	marshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		require.NoError(f, err)
		return b
	}
	checkout := &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "checkout"}}}}}
	traces := marshal(tracesData(id,
		rescueSpan{id: 1, service: "checkout", op: "POST /pay", start: w, end: w.Add(time.Second)},
		rescueSpan{id: 2, parent: 1, service: "bank", op: "authorize", start: w.Add(time.Millisecond), end: w.Add(900 * time.Millisecond)}))
	logsData := marshal(&logspb.LogsData{ResourceLogs: []*logspb.ResourceLogs{{Resource: checkout, ScopeLogs: []*logspb.ScopeLogs{{LogRecords: []*logspb.LogRecord{{
		TimeUnixNano: uint64(w.UnixNano()), SeverityNumber: logspb.SeverityNumber_SEVERITY_NUMBER_ERROR, TraceId: id[:], SpanId: []byte{0, 0, 0, 0, 0, 0, 0, 1},
		Body: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "card declined"}},
	}}}}}}})
	point := &metricspb.HistogramDataPoint{TimeUnixNano: uint64(w.UnixNano()), Count: 1, Sum: proto.Float64(900),
		Exemplars: []*metricspb.Exemplar{{TraceId: id[:], TimeUnixNano: uint64(w.UnixNano()), Value: &metricspb.Exemplar_AsDouble{AsDouble: 900}}}}
	metric := &metricspb.Metric{Name: "checkout.duration", Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{DataPoints: []*metricspb.HistogramDataPoint{point}}}}
	metricsData := marshal(&metricspb.MetricsData{ResourceMetrics: []*metricspb.ResourceMetrics{{Resource: checkout,
		ScopeMetrics: []*metricspb.ScopeMetrics{{Metrics: []*metricspb.Metric{metric}}}}}})
	for i, v := range [][]byte{traces, logsData, metricsData, metricsData} {
		f.Add(uint8(i), key, v)
		f.Add(uint8(i), []byte(nil), v)
		f.Add(uint8(i), key, v[:len(v)/2])
	}
	f.Add(uint8(0), key, []byte{0x0a, 0x80})
	f.Add(uint8(1), []byte("not a trace id"), []byte{0xff, 0xff})

	var offset int64
	f.Fuzz(func(t *testing.T, topic uint8, key, value []byte) {
		r := &kgo.Record{Topic: topics[int(topic)%len(topics)], Key: key, Value: value, Offset: offset, Timestamp: time.Now()}
		offset++
		ix.HandleRecords(context.Background(), []*kgo.Record{r}, []*bus.Ticket{ledger.Begin(r)})
	})
}
