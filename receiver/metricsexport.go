package receiver

// The OTLP metrics receivers: gRPC MetricsService/Export and HTTP
// POST /v1/metrics (protobuf and JSON).
//
// Unlike spans, metric requests are fully decoded: metrics are orders of
// magnitude lower volume (a few points per series per export interval), and
// the decode is what validates them. Validation policy:
//   - A metric without a name cannot be stored or matched: its data points
//     are rejected (partial success, rejected_data_points).
//   - An exemplar whose trace ID is not 16 bytes (or is all zero), or whose
//     span ID is not 8 bytes, is dropped on its own. The data point's value
//     is still good data; only the link is broken, and rejecting the point
//     would lose a sample of the metric over a bad annotation. The client
//     gets a partial-success warning (rejected_data_points 0) naming the
//     number of dropped exemplars.
//   - OTLP/JSON IDs that are not 32 / 16 hex digits make the request
//     malformed (400): the JSON mapping itself is broken, not just an ID.

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	otlpmetrics "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

// MetricsPublisher produces one Kafka record holding data, an encoded
// ExportMetricsServiceRequest (wire-identical to MetricsData) with points
// data points, and returns once it is acknowledged. data is only valid during
// the call. As for traces, a nil error is the only thing that lets the
// receiver tell a client its points were accepted; errors wrapping
// ErrBackpressure are answered as retryable overload.
type MetricsPublisher interface {
	PublishMetrics(ctx context.Context, data []byte, points int) error
}

const (
	metricsServiceName = "opentelemetry.proto.collector.metrics.v1.MetricsService"
	signalMetrics      = "metrics"
)

// metricsExport is the metrics signal's state: its publisher and counters.
type metricsExport struct {
	pub      MetricsPublisher
	received *prometheus.CounterVec // transport
	accepted *prometheus.CounterVec // transport
	refused  *prometheus.CounterVec // transport, reason
	dropped  *prometheus.CounterVec // transport
}

// WithMetrics enables the OTLP metrics receivers (gRPC MetricsService/Export
// and HTTP POST /v1/metrics), publishing to pub. Without them the collector
// answers Unimplemented / 404 for metrics.
func WithMetrics(pub MetricsPublisher) Option {
	return func(r *Receiver) error {
		if pub == nil {
			return errors.New("nil MetricsPublisher")
		}
		me := &metricsExport{
			pub: pub,
			received: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "threadline_receiver_metric_points_received_total",
				Help: "Metric data points in OTLP requests that decoded, before validation and publishing.",
			}, []string{"transport"}),
			accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "threadline_receiver_metric_points_accepted_total",
				Help: "Metric data points acknowledged by Kafka and reported to the client as accepted.",
			}, []string{"transport"}),
			refused: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "threadline_receiver_metric_points_refused_total",
				Help: "Metric data points not accepted, by reason (invalid, backpressure, unavailable, canceled).",
			}, []string{"transport", "reason"}),
			dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "threadline_receiver_exemplars_dropped_total",
				Help: "Exemplars dropped from accepted data points because their trace or span ID was invalid.",
			}, []string{"transport"}),
		}
		for _, t := range []string{transportGRPC, transportHTTP} {
			me.received.WithLabelValues(t)
			me.accepted.WithLabelValues(t)
			me.dropped.WithLabelValues(t)
			for _, rs := range []string{reasonInvalid, reasonBackpressure, reasonUnavailable, reasonCanceled} {
				me.refused.WithLabelValues(t, rs)
			}
		}
		r.metricsExp = me
		return nil
	}
}

// mountMetrics registers the metrics endpoints on the gRPC server and mux;
// a no-op without WithMetrics.
func (r *Receiver) mountMetrics(mux *http.ServeMux) {
	if r.metricsExp == nil {
		return
	}
	registerRawExport(r.grpcServer, metricsServiceName, &rawExportService{r: r, signal: signalMetrics, export: r.exportMetrics})
	mux.Handle("/v1/metrics", r.httpExportHandler(signalMetrics, metricsJSONToProto, r.exportMetrics))
}

// registerMetricsExport registers the metrics signal's counters; a no-op
// without WithMetrics or with a nil reg.
func (r *Receiver) registerMetricsExport(reg prometheus.Registerer) error {
	if r.metricsExp == nil || reg == nil {
		return nil
	}
	me := r.metricsExp
	for _, c := range []prometheus.Collector{me.received, me.accepted, me.refused, me.dropped} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metric: %w", err)
		}
	}
	return nil
}

// metricsJSONToProto converts an OTLP/JSON ExportMetricsServiceRequest to
// its protobuf encoding, hex exemplar IDs included.
func metricsJSONToProto(body []byte) ([]byte, error) {
	var req colmetricspb.ExportMetricsServiceRequest
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("decode OTLP/JSON metrics: %w", err)
	}
	if err := span.FixJSONIDs(&req); err != nil {
		return nil, fmt.Errorf("decode OTLP/JSON metrics: %w", err)
	}
	out, err := proto.Marshal(&req)
	if err != nil {
		return nil, fmt.Errorf("encode metrics: %w", err)
	}
	return out, nil
}

// metricsCheck is what validation found in one request.
type metricsCheck struct {
	points, rejected, dropped int
}

// validateMetrics removes what cannot be stored (see the file comment) from
// req in place and counts it.
func validateMetrics(req *colmetricspb.ExportMetricsServiceRequest) metricsCheck {
	var c metricsCheck
	for _, rm := range req.GetResourceMetrics() {
		for _, sm := range rm.GetScopeMetrics() {
			kept := sm.Metrics[:0]
			for _, m := range sm.GetMetrics() {
				n := forEachPoint(m, func(ex []*otlpmetrics.Exemplar) []*otlpmetrics.Exemplar {
					good := ex[:0]
					for _, e := range ex {
						if validExemplarIDs(e) {
							good = append(good, e)
						} else {
							c.dropped++
						}
					}
					clear(ex[len(good):])
					return good
				})
				if m.GetName() == "" {
					c.rejected += n
					continue
				}
				c.points += n
				kept = append(kept, m)
			}
			clear(sm.Metrics[len(kept):])
			sm.Metrics = kept
		}
	}
	return c
}

func validExemplarIDs(e *otlpmetrics.Exemplar) bool {
	if t := e.GetTraceId(); len(t) != 0 {
		if id, err := span.TraceIDFromBytes(t); err != nil || id.IsZero() {
			return false
		}
	}
	if s := e.GetSpanId(); len(s) != 0 {
		if id, err := span.SpanIDFromBytes(s); err != nil || id.IsZero() {
			return false
		}
	}
	return true
}

// forEachPoint calls fix with every data point's exemplars (storing what it
// returns) and returns the number of data points of m.
func forEachPoint(m *otlpmetrics.Metric, fix func([]*otlpmetrics.Exemplar) []*otlpmetrics.Exemplar) int {
	switch d := m.GetData().(type) {
	case *otlpmetrics.Metric_Gauge:
		for _, p := range d.Gauge.GetDataPoints() {
			p.Exemplars = fix(p.Exemplars)
		}
		return len(d.Gauge.GetDataPoints())
	case *otlpmetrics.Metric_Sum:
		for _, p := range d.Sum.GetDataPoints() {
			p.Exemplars = fix(p.Exemplars)
		}
		return len(d.Sum.GetDataPoints())
	case *otlpmetrics.Metric_Histogram:
		for _, p := range d.Histogram.GetDataPoints() {
			p.Exemplars = fix(p.Exemplars)
		}
		return len(d.Histogram.GetDataPoints())
	case *otlpmetrics.Metric_ExponentialHistogram:
		for _, p := range d.ExponentialHistogram.GetDataPoints() {
			p.Exemplars = fix(p.Exemplars)
		}
		return len(d.ExponentialHistogram.GetDataPoints())
	case *otlpmetrics.Metric_Summary:
		return len(d.Summary.GetDataPoints())
	}
	return 0
}

// exportMetrics validates one encoded ExportMetricsServiceRequest, publishes
// it as one record and builds the response. It must not keep req.
func (r *Receiver) exportMetrics(ctx context.Context, transport string, req []byte) (proto.Message, error) {
	var msg colmetricspb.ExportMetricsServiceRequest
	if err := proto.Unmarshal(req, &msg); err != nil {
		return nil, newExportError(errMalformed, fmt.Sprintf("decode ExportMetricsServiceRequest: %v", err), err)
	}
	c := validateMetrics(&msg)
	me := r.metricsExp
	me.received.WithLabelValues(transport).Add(float64(c.points + c.rejected))
	if c.rejected > 0 {
		me.refused.WithLabelValues(transport, reasonInvalid).Add(float64(c.rejected))
	}
	if c.dropped > 0 {
		me.dropped.WithLabelValues(transport).Add(float64(c.dropped))
	}

	if c.points > 0 {
		data := req
		if c.rejected > 0 || c.dropped > 0 {
			var err error
			if data, err = proto.Marshal(&msg); err != nil {
				return nil, newExportError(errUnavailable, fmt.Sprintf("encode metrics: %v", err), err)
			}
		}
		if err := me.pub.PublishMetrics(ctx, data, c.points); err != nil {
			ee := classifyPublishError(ctx, err)
			if ee.reason == reasonUnavailable {
				ee.msg = fmt.Sprintf("Kafka did not acknowledge the metric points; retry later: %v", err)
			}
			me.refused.WithLabelValues(transport, ee.reason).Add(float64(c.points))
			if ee.reason == reasonUnavailable {
				r.logger.Warn("otlp metrics export refused: publish to kafka failed", "transport", transport, "points", c.points, "err", err)
			} else {
				r.logger.Debug("otlp metrics export refused", "reason", ee.reason, "transport", transport, "points", c.points, "err", err)
			}
			return nil, ee
		}
		me.accepted.WithLabelValues(transport).Add(float64(c.points))
	}

	resp := &colmetricspb.ExportMetricsServiceResponse{}
	switch {
	case c.rejected > 0:
		m := fmt.Sprintf("%d data points rejected: metrics without a name", c.rejected)
		if c.dropped > 0 {
			m += fmt.Sprintf("; %d exemplars dropped: invalid trace or span ID", c.dropped)
		}
		resp.PartialSuccess = &colmetricspb.ExportMetricsPartialSuccess{RejectedDataPoints: int64(c.rejected), ErrorMessage: m}
	case c.dropped > 0:
		resp.PartialSuccess = &colmetricspb.ExportMetricsPartialSuccess{
			ErrorMessage: fmt.Sprintf("accepted all data points, but dropped %d exemplars with an invalid trace or span ID", c.dropped),
		}
	}
	return resp, nil
}
