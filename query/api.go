// Package query is Threadline's stateless read API: the Tempo and Jaeger HTTP
// APIs that Grafana's data sources (and the UI) call, served by fanning every
// request out to all indexers over the gRPC read API and merging the answers.
//
// Fan-out is unconditional because a trace's spans can sit on more than one
// indexer after a Kafka rebalance: data stays where it was written. An indexer
// that fails or times out does not fail the request; the answer is built from
// the indexers that replied and the gap is reported the way each API can carry
// it (Tempo's PARTIAL status, Jaeger's errors field), logged and counted. Only
// when every indexer fails does the request fail (502, or 503 when they are
// all unavailable).
//
// Route families:
//   - Tempo: /api/v2/traces/{id}, /api/search, /api/search/tags,
//     /api/v2/search/tags, /api/search/tag/{tag}/values,
//     /api/v2/search/tag/{tag}/values, /api/echo, /api/status/buildinfo.
//   - Jaeger: /api/services, /api/services/{service}/operations,
//     /api/operations, /api/traces, /api/dependencies.
//   - Shared: /api/traces/{id} answers Tempo's protobuf Trace when the client
//     accepts application/protobuf (Grafana's Tempo data source) and Jaeger
//     JSON otherwise.
//
// Tempo routes answer errors in plain text, as Tempo does; Jaeger routes answer
// Jaeger's {"data":null,...,"errors":[{"code","msg"}]} envelope.
package query

import (
	"compress/gzip"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	logspb "github.com/threadline/threadline/proto/logs/v1"
	metricspb "github.com/threadline/threadline/proto/metrics/v1"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
)

// API serves the Tempo- and Jaeger-compatible HTTP API over a set of indexers.
type API struct {
	cfg     Config
	readers []readerpb.ReaderClient
	logger  *slog.Logger
	metrics *metrics
	now     func() time.Time
	// logReaders serve the log routes (logs.go, loki.go); see WithLogReaders.
	logReaders []logspb.LogReaderClient
	// alerts serves the alert routes (alerts.go); see WithAlerts.
	alerts *alertsState
	// metricReaders serve the received-metrics routes and MetricSource
	// (metrictraces.go); see WithMetricReaders.
	metricReaders []metricspb.MetricReaderClient
}

// New returns an API over readers, one client per indexer. A zero field of cfg
// takes its default. Metrics are registered on reg when it is not nil.
func New(cfg Config, readers []readerpb.ReaderClient, logger *slog.Logger, reg prometheus.Registerer, opts ...Option) *API {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &API{
		cfg:     cfg.withDefaults(),
		readers: readers,
		logger:  logger,
		metrics: newMetrics(reg),
		now:     time.Now,
	}
	for _, o := range opts {
		o(a)
	}
	return a
}

// route is one registered path with the methods it answers.
type route struct {
	pattern string
	handler http.HandlerFunc
}

func (a *API) routes() []route {
	return []route{
		// Tempo.
		{"/api/echo", a.echo},
		{"/api/status/buildinfo", a.buildInfo},
		{"/api/v2/traces/{id}", a.tempoTraceV2},
		{"/api/search", a.tempoSearch},
		{"/api/search/tags", a.tempoTags},
		{"/api/v2/search/tags", a.tempoTagsV2},
		{"/api/search/tag/{tag}/values", a.tempoTagValues},
		{"/api/v2/search/tag/{tag}/values", a.tempoTagValuesV2},
		// Shared: Tempo protobuf or Jaeger JSON by Accept.
		{"/api/traces/{id}", a.traceByID},
		// Jaeger.
		{"/api/traces", a.jaegerSearch},
		{"/api/services", a.jaegerServices},
		{"/api/services/{service}/operations", a.jaegerServiceOperations},
		{"/api/operations", a.jaegerOperations},
		{"/api/dependencies", a.jaegerDependencies},
		// Native (the UI), see native.go.
		{"/api/v1/search", a.nativeSearch},
		{"/api/v1/traces/{id}", a.nativeTraceByID},
		// Logs (the UI) and the Loki subset (Grafana), see logs.go and loki.go.
		{"/api/v1/traces/{id}/logs", a.traceLogs},
		{"/api/v1/logs/search", a.logSearch},
		{"/api/v1/logs/levels", a.logLevels},
		{"POST /api/v1/logs/levels", a.setLogLevel},
		{"/loki/api/v1/query_range", a.lokiQueryRange},
		{"/loki/api/v1/query", a.lokiQueryInstant},
		{"/loki/api/v1/labels", a.lokiLabels},
		{"/loki/api/v1/label/{name}/values", a.lokiLabelValues},
		{"/loki/api/v1/series", a.lokiSeries},
		// RED metrics and their Prometheus exposition, see red.go.
		{"/api/v1/metrics/red", a.redQuery},
		{"/api/v1/metrics/prometheus", a.redPrometheus},
		// Received OTLP metrics → traces, see metrictraces.go.
		{"/api/v1/metrics/traces", a.metricTraces},
		// Alerts and the Alertmanager webhook, see alerts.go.
		{"POST /api/v1/alertmanager", a.alertmanagerWebhook},
		{"/api/v1/alerts", a.alertEvents},
		{"/api/v1/alerts/{id}/traces", a.alertTraces},
	}
}

// Register mounts every route on mux. Patterns carry no method so that a
// catch-all "/" mounted beside them (the UI) cannot capture a POST to an API
// path: the API itself answers 405.
func (a *API) Register(mux *http.ServeMux) {
	for _, rt := range a.routes() {
		mux.Handle(rt.pattern, a.instrument(rt.pattern, rt.handler))
	}
}

// Handler returns a handler serving only the API routes.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	a.Register(mux)
	return mux
}

// instrument adds the method check, panic containment, and request metrics.
func (a *API) instrument(pattern string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				// A handler bug must cost one request, not the process.
				a.logger.Error("query handler panic", "route", pattern, "panic", fmt.Sprint(p))
				if rec.status == 0 {
					writeText(rec, r, http.StatusInternalServerError, "internal error")
				}
			}
			code := rec.status
			if code == 0 {
				code = http.StatusOK
			}
			a.metrics.requests.WithLabelValues(pattern, strconv.Itoa(code)).Inc()
			a.metrics.latency.WithLabelValues(pattern).Observe(time.Since(start).Seconds())
		}()
		// A pattern that names its method ("POST /x") also answers it.
		if r.Method != http.MethodGet && r.Method != http.MethodHead && !strings.HasPrefix(pattern, r.Method+" ") {
			rec.Header().Set("Allow", "GET, HEAD")
			writeText(rec, r, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed; use GET")
			return
		}
		if msg := invalidUTF8(r); msg != "" {
			writeText(rec, r, http.StatusBadRequest, msg)
			return
		}
		h(rec, r)
	})
}

// invalidUTF8 says which part of the request is not valid UTF-8, or "": a
// service name, tag or query must be text, and cannot reach the indexers
// otherwise (protobuf strings are UTF-8; the read call failed, and the
// client was told the indexers had).
func invalidUTF8(r *http.Request) string {
	if !utf8.ValidString(r.URL.Path) {
		return "the path is not valid UTF-8"
	}
	for k, vs := range r.URL.Query() {
		if !utf8.ValidString(k) {
			return "a query parameter's name is not valid UTF-8"
		}
		for _, v := range vs {
			if !utf8.ValidString(v) {
				return fmt.Sprintf("query parameter %q is not valid UTF-8", k)
			}
		}
	}
	return ""
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// gzipMinBytes is the smallest body worth compressing: below it the gzip
// header and the CPU cost outweigh the saving.
const gzipMinBytes = 1024

// writeBody writes a complete response, gzip-compressed when the client
// accepts it (Grafana always sends Accept-Encoding: gzip; trace JSON compresses
// about tenfold).
func writeBody(w http.ResponseWriter, r *http.Request, status int, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Add("Vary", "Accept-Encoding")
	if len(body) >= gzipMinBytes && acceptsGzip(r) {
		h.Set("Content-Encoding", "gzip")
		h.Del("Content-Length")
		w.WriteHeader(status)
		if r.Method == http.MethodHead {
			return
		}
		zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
		if err != nil {
			return
		}
		_, _ = zw.Write(body)
		_ = zw.Close()
		return
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

func acceptsGzip(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept-Encoding") {
		for part := range strings.SplitSeq(v, ",") {
			name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
			if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
				continue
			}
			// "gzip;q=0" refuses gzip explicitly.
			if q, ok := strings.CutPrefix(strings.TrimSpace(params), "q="); ok {
				if f, err := strconv.ParseFloat(q, 64); err == nil && f == 0 {
					return false
				}
			}
			return true
		}
	}
	return false
}

func writeText(w http.ResponseWriter, r *http.Request, status int, msg string) {
	writeBody(w, r, status, "text/plain; charset=utf-8", []byte(msg+"\n"))
}
