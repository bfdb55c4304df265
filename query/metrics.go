package query

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests     *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	readerErrors *prometheus.CounterVec
	partial      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_query_http_requests_total",
			Help: "HTTP requests to the query API by route and status code.",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "threadline_query_http_request_duration_seconds",
			Help:    "Latency of query API requests by route.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route"}),
		readerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_query_reader_errors_total",
			Help: "Failed calls to one indexer's read API, by gRPC method.",
		}, []string{"method"}),
		partial: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_query_partial_responses_total",
			Help: "Fan-outs answered from only some indexers because others failed, by gRPC method.",
		}, []string{"method"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.latency, m.readerErrors, m.partial)
	}
	return m
}
