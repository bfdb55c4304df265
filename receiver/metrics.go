package receiver

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Label values. Signals and transports are fixed sets so series stay bounded.
const (
	signalTraces = "traces"
	signalLogs   = "logs"

	transportGRPC = "grpc"
	transportHTTP = "http"

	// Why spans were refused (spans_refused_total{reason}).
	reasonInvalid      = "invalid"      // rejected by validation, reported as partial success
	reasonMalformed    = "malformed"    // the request did not decode
	reasonBackpressure = "backpressure" // the Kafka producer buffer was full
	reasonUnavailable  = "unavailable"  // Kafka did not acknowledge
	reasonCanceled     = "canceled"     // the client gave up before Kafka acknowledged
)

type metrics struct {
	spansReceived *prometheus.CounterVec   // transport
	spansAccepted *prometheus.CounterVec   // transport
	spansRefused  *prometheus.CounterVec   // transport, reason
	spansRepaired *prometheus.CounterVec   // transport
	logsReceived  *prometheus.CounterVec   // transport
	logsAccepted  *prometheus.CounterVec   // transport
	logsRefused   *prometheus.CounterVec   // transport, reason
	logsRepaired  *prometheus.CounterVec   // transport
	requests      *prometheus.CounterVec   // signal, transport, status
	duration      *prometheus.HistogramVec // signal, transport
	inflight      prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		spansReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_receiver_spans_received_total",
			Help: "Spans in OTLP requests that decoded, before validation and publishing.",
		}, []string{"transport"}),
		spansAccepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_receiver_spans_accepted_total",
			Help: "Spans acknowledged by Kafka and reported to the client as accepted.",
		}, []string{"transport"}),
		spansRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_receiver_spans_refused_total",
			Help: "Spans not accepted, by reason (invalid, malformed, backpressure, unavailable, canceled). Spans of requests refused before decoding (overload, size) are not counted here; see requests_total.",
		}, []string{"transport", "reason"}),
		spansRepaired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_receiver_spans_repaired_total",
			Help: "Accepted spans whose invalid UTF-8 strings were replaced with U+FFFD (the client gets a partial-success warning).",
		}, []string{"transport"}),
		logsReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_receiver_log_records_received_total",
			Help: "Log records in OTLP requests that decoded, before validation and publishing.",
		}, []string{"transport"}),
		logsAccepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_receiver_log_records_accepted_total",
			Help: "Log records acknowledged by Kafka and reported to the client as accepted.",
		}, []string{"transport"}),
		logsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_receiver_log_records_refused_total",
			Help: "Log records not accepted, by reason (invalid, backpressure, unavailable, canceled). Records of requests refused before decoding are not counted here; see requests_total.",
		}, []string{"transport", "reason"}),
		logsRepaired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_receiver_log_records_repaired_total",
			Help: "Accepted log records whose invalid UTF-8 strings were replaced with U+FFFD (the client gets a partial-success warning).",
		}, []string{"transport"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_receiver_requests_total",
			Help: "OTLP export requests by signal, transport and answer (gRPC code name or HTTP status).",
		}, []string{"signal", "transport", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                           "threadline_receiver_request_duration_seconds",
			Help:                           "OTLP export request latency, including the wait for Kafka acknowledgements.",
			Buckets:                        []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
			NativeHistogramBucketFactor:    1.1,
			NativeHistogramMaxBucketNumber: 100,
		}, []string{"signal", "transport"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "threadline_receiver_inflight_requests",
			Help: "OTLP export requests being processed (bounded by otlp-max-inflight-requests).",
		}),
	}
	for _, t := range []string{transportGRPC, transportHTTP} {
		m.spansReceived.WithLabelValues(t)
		m.spansAccepted.WithLabelValues(t)
		m.spansRepaired.WithLabelValues(t)
		m.logsReceived.WithLabelValues(t)
		m.logsAccepted.WithLabelValues(t)
		m.logsRepaired.WithLabelValues(t)
		for _, r := range []string{reasonInvalid, reasonMalformed, reasonBackpressure, reasonUnavailable, reasonCanceled} {
			m.spansRefused.WithLabelValues(t, r)
			m.logsRefused.WithLabelValues(t, r)
		}
	}
	return m
}

// register adds the collectors to reg; a nil reg registers nothing.
func (m *metrics) register(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{m.spansReceived, m.spansAccepted, m.spansRefused, m.spansRepaired,
		m.logsReceived, m.logsAccepted, m.logsRefused, m.logsRepaired, m.requests, m.duration, m.inflight} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metric: %w", err)
		}
	}
	return nil
}

// inflightLimiter caps concurrent requests without queueing: a request that
// finds no free slot is refused at once, because a queue would hold its body
// in memory and its client would time out anyway.
type inflightLimiter struct {
	slots chan struct{}
	gauge prometheus.Gauge
}

func newInflightLimiter(n int, gauge prometheus.Gauge) *inflightLimiter {
	return &inflightLimiter{slots: make(chan struct{}, n), gauge: gauge}
}

func (l *inflightLimiter) tryAcquire() bool {
	select {
	case l.slots <- struct{}{}:
		l.gauge.Inc()
		return true
	default:
		return false
	}
}

func (l *inflightLimiter) release() {
	<-l.slots
	l.gauge.Dec()
}
