package bus

import (
	"fmt"

	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

// ExemplarBatch is the exemplar links of one trace: an encoded OTLP
// MetricsData holding only the data points that carry exemplars of the
// trace, each with only those exemplars. Points keep their values, so the
// record is a faithful (if partial) OTLP export any tool can read.
type ExemplarBatch struct {
	ID   span.TraceID
	Data []byte
}

// SplitExemplars regroups an encoded MetricsData (or the wire-identical
// ExportMetricsServiceRequest) by the trace IDs of its exemplars, in order of
// each ID's first exemplar. Exemplars without a valid trace ID are left out;
// a request without any yields no batch.
//
// Metrics are decoded rather than split on the wire: they are orders of
// magnitude fewer than spans, and the decoded form keeps this obviously
// correct (temporality, monotonicity and units copied with each metric).
func SplitExemplars(data []byte) ([]ExemplarBatch, error) {
	md := &metricspb.MetricsData{}
	if err := proto.Unmarshal(data, md); err != nil {
		return nil, fmt.Errorf("decode metrics for exemplar links: %w", err)
	}
	var (
		byID  = map[span.TraceID]*exemplarBuilder{}
		order []*exemplarBuilder
	)
	builder := func(id span.TraceID) *exemplarBuilder {
		b := byID[id]
		if b == nil {
			b = &exemplarBuilder{id: id, md: &metricspb.MetricsData{}}
			byID[id] = b
			order = append(order, b)
		}
		return b
	}
	for _, rm := range md.GetResourceMetrics() {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				at := location{rm, sm, m}
				switch d := m.GetData().(type) {
				case *metricspb.Metric_Gauge:
					splitPoints(d.Gauge.GetDataPoints(), func(id span.TraceID) *[]*metricspb.NumberDataPoint {
						return &builder(id).metric(at).GetGauge().DataPoints
					})
				case *metricspb.Metric_Sum:
					splitPoints(d.Sum.GetDataPoints(), func(id span.TraceID) *[]*metricspb.NumberDataPoint {
						return &builder(id).metric(at).GetSum().DataPoints
					})
				case *metricspb.Metric_Histogram:
					splitPoints(d.Histogram.GetDataPoints(), func(id span.TraceID) *[]*metricspb.HistogramDataPoint {
						return &builder(id).metric(at).GetHistogram().DataPoints
					})
				case *metricspb.Metric_ExponentialHistogram:
					splitPoints(d.ExponentialHistogram.GetDataPoints(), func(id span.TraceID) *[]*metricspb.ExponentialHistogramDataPoint {
						return &builder(id).metric(at).GetExponentialHistogram().DataPoints
					})
				}
				// Summaries carry no exemplars.
			}
		}
	}
	out := make([]ExemplarBatch, 0, len(order))
	for _, b := range order {
		enc, err := proto.Marshal(b.md)
		if err != nil {
			return nil, fmt.Errorf("encode exemplar links of trace %s: %w", b.id, err)
		}
		out = append(out, ExemplarBatch{ID: b.id, Data: enc})
	}
	return out, nil
}

// exemplarPoint is a data point kind that carries exemplars.
type exemplarPoint interface {
	*metricspb.NumberDataPoint | *metricspb.HistogramDataPoint | *metricspb.ExponentialHistogramDataPoint
	proto.Message
	GetExemplars() []*metricspb.Exemplar
}

// splitPoints appends, to the points dst returns for each trace, a copy of
// every point carrying exemplars of that trace, with only those exemplars.
func splitPoints[P exemplarPoint](points []P, dst func(span.TraceID) *[]P) {
	for _, p := range points {
		for id, exs := range groupExemplars(p.GetExemplars()) {
			c := proto.CloneOf(p)
			setExemplars(c, exs)
			out := dst(id)
			*out = append(*out, c)
		}
	}
}

// setExemplars replaces a point's exemplars.
func setExemplars[P exemplarPoint](p P, exs []*metricspb.Exemplar) {
	switch p := any(p).(type) {
	case *metricspb.NumberDataPoint:
		p.Exemplars = exs
	case *metricspb.HistogramDataPoint:
		p.Exemplars = exs
	case *metricspb.ExponentialHistogramDataPoint:
		p.Exemplars = exs
	}
}

// groupExemplars groups exemplars by valid trace ID. Points have a handful
// of exemplars, so the map is small; map order does not matter because each
// trace gets its own record.
func groupExemplars(exs []*metricspb.Exemplar) map[span.TraceID][]*metricspb.Exemplar {
	if len(exs) == 0 {
		return nil
	}
	var out map[span.TraceID][]*metricspb.Exemplar
	for _, e := range exs {
		id, err := span.TraceIDFromBytes(e.GetTraceId())
		if err != nil {
			continue
		}
		if out == nil {
			out = map[span.TraceID][]*metricspb.Exemplar{}
		}
		out[id] = append(out[id], e)
	}
	return out
}

// location is where a data point sits in the source request.
type location struct {
	rm *metricspb.ResourceMetrics
	sm *metricspb.ScopeMetrics
	m  *metricspb.Metric
}

// exemplarBuilder assembles one trace's MetricsData in source order: the
// source is walked once, so consecutive points of one metric share one
// output metric (and resource and scope).
type exemplarBuilder struct {
	id   span.TraceID
	md   *metricspb.MetricsData
	last location // source of the output's last resource/scope/metric
	rm   *metricspb.ResourceMetrics
	sm   *metricspb.ScopeMetrics
	m    *metricspb.Metric
}

// metric returns the output metric for a point at src, starting a new
// resource, scope or metric where src differs from the last one.
func (b *exemplarBuilder) metric(src location) *metricspb.Metric {
	if b.rm == nil || b.last.rm != src.rm {
		b.rm = &metricspb.ResourceMetrics{Resource: src.rm.GetResource(), SchemaUrl: src.rm.GetSchemaUrl()}
		b.md.ResourceMetrics = append(b.md.ResourceMetrics, b.rm)
		b.sm, b.m = nil, nil
	}
	if b.sm == nil || b.last.sm != src.sm {
		b.sm = &metricspb.ScopeMetrics{Scope: src.sm.GetScope(), SchemaUrl: src.sm.GetSchemaUrl()}
		b.rm.ScopeMetrics = append(b.rm.ScopeMetrics, b.sm)
		b.m = nil
	}
	if b.m == nil || b.last.m != src.m {
		m := src.m
		b.m = &metricspb.Metric{Name: m.GetName(), Description: m.GetDescription(), Unit: m.GetUnit(), Metadata: m.GetMetadata()}
		switch d := m.GetData().(type) {
		case *metricspb.Metric_Gauge:
			b.m.Data = &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{}}
		case *metricspb.Metric_Sum:
			b.m.Data = &metricspb.Metric_Sum{Sum: &metricspb.Sum{AggregationTemporality: d.Sum.GetAggregationTemporality(), IsMonotonic: d.Sum.GetIsMonotonic()}}
		case *metricspb.Metric_Histogram:
			b.m.Data = &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{AggregationTemporality: d.Histogram.GetAggregationTemporality()}}
		case *metricspb.Metric_ExponentialHistogram:
			b.m.Data = &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{AggregationTemporality: d.ExponentialHistogram.GetAggregationTemporality()}}
		}
		b.sm.Metrics = append(b.sm.Metrics, b.m)
	}
	b.last = src
	return b.m
}
