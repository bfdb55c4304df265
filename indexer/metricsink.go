package indexer

import (
	"context"
	"fmt"
	"time"

	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/protobuf/proto"
)

// MetricSink stores received OTLP metrics: series for alert rules over them,
// exemplars as metric → trace links. Writes must be idempotent (replays).
type MetricSink interface {
	Write(ctx context.Context, md *metricspb.MetricsData) error
}

// handleMetricRecord stores a record of the metrics topic before its offset
// can be committed. Metrics are far fewer than spans, so the write happens on
// the poll loop; a store that keeps failing costs the record, counted and
// logged, rather than stalling the partition's spans and logs behind it.
func (ix *Indexer) handleMetricRecord(value []byte) error {
	if ix.metrics == nil {
		return nil // no metric store: consumed and dropped
	}
	md := &metricspb.MetricsData{}
	if err := proto.Unmarshal(value, md); err != nil {
		return fmt.Errorf("decode metrics: %w", err)
	}
	var err error
	for attempt := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = ix.metrics.Write(ctx, md)
		cancel()
		if err == nil {
			return nil
		}
		ix.m.writeErrors.Inc()
		time.Sleep(time.Duration(attempt+1) * 200 * time.Millisecond)
	}
	return fmt.Errorf("write metrics: %w", err)
}
