package query

// Received OTLP metrics → traces, over every indexer's metric store
// (proto/metrics/v1):
//   - GET /api/v1/metrics/traces?metric=&match=&start=&end=&limit=
//     the traces behind a metric's exemplars, ranked: errors first, then
//     slowest; traces no indexer holds (dropped by the sampler, or past
//     retention) come last with found=false, newest exemplar first.
//   - (*API).MetricSource(): the ruler's view of received metrics for rules
//     of kind metric.
//
// match is the label matchers, either logfmt (service.name=checkout
// http.route="/pay") or a JSON object ({"service.name":"checkout"}).
// start and end are unix seconds or RFC 3339; end is inclusive to the
// second and defaults to now, start to an hour before end.

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/threadline/threadline/alerting"
	metricspb "github.com/threadline/threadline/proto/metrics/v1"
	"github.com/threadline/threadline/span"
)

// WithMetricReaders serves the received-metrics routes and MetricSource over
// these clients, one per indexer. Without it those routes answer 503 and
// MetricSource reports an error.
func WithMetricReaders(readers []metricspb.MetricReaderClient) Option {
	return func(a *API) { a.metricReaders = readers }
}

const (
	defaultMetricTraces = 20
	maxMetricTraces     = 100
	// metricTraceFetchFactor: the ranking looks at up to this many times
	// limit distinct traces (the newest exemplars' ones), because fetching
	// every trace a busy metric ever linked would cost a GetTrace each.
	metricTraceFetchFactor = 4
	maxMetricTraceFetch    = 200
	// maxExemplarScan caps the exemplars asked of each indexer.
	maxExemplarScan = 2000
	// maxMetricTracesPerPoint caps the trace IDs MetricSource attaches.
	maxMetricTracesPerPoint = 100
	defaultMetricRange      = time.Hour
)

var errMetricsDisabled = &httpError{code: http.StatusServiceUnavailable,
	err: errors.New("received metrics are not enabled on this query service (no metric readers configured)")}

// fanOutMetrics is fanOut over the metric readers.
func fanOutMetrics[T any](ctx context.Context, a *API, method string, call func(context.Context, metricspb.MetricReaderClient) (T, error)) fanOutResult[T] {
	return fanOutTo(ctx, a, method, a.metricReaders, call)
}

// parseMatchers reads logfmt or a JSON object of label equality matchers.
func parseMatchers(s string) (map[string]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	if strings.HasPrefix(s, "{") {
		var m map[string]string
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			return nil, badRequest("invalid match %q: want a JSON object of strings or logfmt: %v", truncate(s), err)
		}
		return m, nil
	}
	m, err := parseLogfmtTags(s)
	if err != nil {
		return nil, badRequest("invalid match %q: %v", truncate(s), err)
	}
	return m, nil
}

type metricTracesQuery struct {
	metric     string
	matchers   map[string]string
	start, end time.Time // [start, end)
	limit      int
}

func (a *API) parseMetricTraces(r *http.Request) (metricTracesQuery, error) {
	qv := r.URL.Query()
	q := metricTracesQuery{metric: qv.Get("metric"), limit: defaultMetricTraces}
	if q.metric == "" {
		return q, badRequest("metric is required")
	}
	var err error
	if q.matchers, err = parseMatchers(qv.Get("match")); err != nil {
		return q, err
	}
	if q.end, err = parseTimeParam(r, "end", a.now()); err != nil {
		return q, err
	}
	if q.start, err = parseTimeParam(r, "start", q.end.Add(-defaultMetricRange)); err != nil {
		return q, err
	}
	if q.end.Before(q.start) {
		return q, badRequest("invalid range: end is before start")
	}
	q.end = q.end.Add(time.Second) // inclusive for whole-second callers
	if v := qv.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return q, badRequest("invalid limit %q: want a positive integer", truncate(v))
		}
		q.limit = min(n, maxMetricTraces)
	}
	return q, nil
}

type metricExemplarJSON struct {
	Metric       string            `json:"metric"`
	Labels       map[string]string `json:"labels"`
	Value        float64           `json:"value"`
	Time         string            `json:"time"`
	TimeUnixNano string            `json:"timeUnixNano"`
	SpanID       string            `json:"spanID,omitempty"`
}

type metricTraceJSON struct {
	alertTraceJSON
	Exemplar metricExemplarJSON `json:"exemplar"`
}

// mergeExemplars keeps the newest exemplar of each trace, newest first.
func mergeExemplars(answers []*metricspb.QueryExemplarsResponse) []*metricspb.Exemplar {
	best := map[string]*metricspb.Exemplar{}
	for _, ans := range answers {
		for _, e := range ans.GetExemplars() {
			if len(e.GetTraceId()) != len(span.TraceID{}) {
				continue
			}
			k := string(e.GetTraceId())
			if cur, ok := best[k]; !ok || e.GetTimeUnixNano() > cur.GetTimeUnixNano() {
				best[k] = e
			}
		}
	}
	out := make([]*metricspb.Exemplar, 0, len(best))
	for _, e := range best {
		out = append(out, e)
	}
	slices.SortFunc(out, func(x, y *metricspb.Exemplar) int {
		if c := cmp.Compare(y.GetTimeUnixNano(), x.GetTimeUnixNano()); c != 0 {
			return c
		}
		return strings.Compare(string(x.GetTraceId()), string(y.GetTraceId()))
	})
	return out
}

func exemplarJSON(e *metricspb.Exemplar) metricExemplarJSON {
	out := metricExemplarJSON{Metric: e.GetMetric(), Labels: map[string]string{}, Value: e.GetValue(),
		Time:         time.Unix(0, int64(min(e.GetTimeUnixNano(), math.MaxInt64))).UTC().Format(time.RFC3339Nano),
		TimeUnixNano: strconv.FormatUint(e.GetTimeUnixNano(), 10)}
	for _, l := range e.GetLabels() {
		out.Labels[l.GetName()] = l.GetValue()
	}
	if len(e.GetSpanId()) > 0 {
		out.SpanID = hex.EncodeToString(e.GetSpanId())
	}
	return out
}

// metricTraces serves GET /api/v1/metrics/traces.
func (a *API) metricTraces(w http.ResponseWriter, r *http.Request) {
	if len(a.metricReaders) == 0 {
		nativeError(w, r, errMetricsDisabled)
		return
	}
	q, err := a.parseMetricTraces(r)
	if err != nil {
		nativeError(w, r, err)
		return
	}
	req := &metricspb.QueryExemplarsRequest{Metric: q.metric, Matchers: q.matchers,
		StartUnixNano: q.start.UnixNano(), EndUnixNano: q.end.UnixNano(), Limit: maxExemplarScan}
	res := fanOutMetrics(r.Context(), a, "QueryExemplars", func(ctx context.Context, rd metricspb.MetricReaderClient) (*metricspb.QueryExemplarsResponse, error) {
		return rd.QueryExemplars(ctx, req)
	})
	if err := res.failed(); err != nil {
		nativeError(w, r, logFailure(err))
		return
	}
	out := struct {
		Traces   []metricTraceJSON `json:"traces"`
		Warnings []string          `json:"warnings,omitempty"`
	}{Traces: []metricTraceJSON{}}
	if res.partial() {
		out.Warnings = append(out.Warnings, res.partialMessage())
	}

	exemplars := mergeExemplars(res.ok)
	if n := min(q.limit*metricTraceFetchFactor, maxMetricTraceFetch); len(exemplars) > n {
		exemplars = exemplars[:n]
	}
	ids := make([]span.TraceID, len(exemplars))
	for i, e := range exemplars {
		copy(ids[i][:], e.GetTraceId())
	}
	traces, ferrs := a.fetchTraces(r.Context(), ids, 0, 0)
	for _, fe := range ferrs {
		out.Warnings = append(out.Warnings, fmt.Sprintf("trace %s: %s", fe.TraceID, fe.Msg))
	}
	for i, e := range exemplars {
		hexID := ids[i].String()
		t := metricTraceJSON{alertTraceJSON: alertTraceJSON{TraceID: hexID, KeptReasons: []string{}}, Exemplar: exemplarJSON(e)}
		if traces[i] != nil {
			t.alertTraceJSON = summarizeTrace(hexID, *traces[i])
		}
		out.Traces = append(out.Traces, t)
	}
	rankMetricTraces(out.Traces)
	if len(out.Traces) > q.limit {
		out.Traces = out.Traces[:q.limit]
	}
	writeJSON(w, r, http.StatusOK, out)
}

// rankMetricTraces orders found traces errors first, then slowest; traces
// not found follow, newest exemplar first. The sort is stable over the
// newest-first exemplar order.
func rankMetricTraces(ts []metricTraceJSON) {
	slices.SortStableFunc(ts, func(x, y metricTraceJSON) int {
		if x.Found != y.Found {
			if x.Found {
				return -1
			}
			return 1
		}
		if !x.Found {
			return 0
		}
		if x.Error != y.Error {
			if x.Error {
				return -1
			}
			return 1
		}
		return cmp.Compare(y.DurationMs, x.DurationMs)
	})
}

// MetricSource returns the ruler's view of received OTLP metrics, merged
// across every indexer.
//
// The rule's metric name may end in a function, name:fn (OTel instrument
// names cannot contain a colon, so there is no ambiguity):
//   - no function: a gauge's or sum's value; a histogram's p99 estimate
//   - :rate   per second: a sum's increase, a histogram's observations
//   - :count  a histogram's observations per point interval
//   - :avg    a histogram's mean observation per point interval
//   - :p50, :p90, :p95, :p99   a histogram quantile, interpolated within
//     the explicit bucket (as Prometheus's histogram_quantile does)
//
// Cumulative series are differenced point to point (a drop is a counter
// reset); delta points stand alone. Every matching series contributes its
// points; the engine takes the newest sample, so matchers should name one
// series. The exemplars' trace IDs in the window ride on the newest point.
func (a *API) MetricSource() alerting.MetricSource { return metricSource{a: a} }

type metricSource struct{ a *API }

var _ alerting.MetricSource = metricSource{}

// QueryMetric fans QuerySeries (and QueryExemplars) out to every indexer.
// A partial answer is an error, as for RED: a missing indexer's points would
// read as a gap or a reset, and the engine keeps the alert's state on errors.
func (s metricSource) QueryMetric(ctx context.Context, name string, matchers map[string]string, start, end time.Time) ([]alerting.MetricPoint, error) {
	a := s.a
	if len(a.metricReaders) == 0 {
		return nil, errMetricsDisabled
	}
	metric, fn := alerting.SplitMetricFunc(name)
	// Look back one extra window so the first point in range has a
	// predecessor to difference against.
	lookback := start.Add(-max(end.Sub(start), time.Minute))
	req := &metricspb.QuerySeriesRequest{Metric: metric, Matchers: matchers, StartUnixNano: lookback.UnixNano(), EndUnixNano: end.UnixNano()}
	res := fanOutMetrics(ctx, a, "QuerySeries", func(ctx context.Context, rd metricspb.MetricReaderClient) (*metricspb.QuerySeriesResponse, error) {
		return rd.QuerySeries(ctx, req)
	})
	if err := res.failed(); err != nil {
		return nil, fmt.Errorf("query series %s: %w", metric, err)
	}
	if res.partial() {
		return nil, fmt.Errorf("query series %s: partial answer: %s", metric, res.partialMessage())
	}
	var out []alerting.MetricPoint
	for _, ser := range mergeSeries(res.ok) {
		pts, err := seriesValues(ser, fn)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", name, err)
		}
		for _, p := range pts {
			if !p.T.Before(start) && p.T.Before(end) {
				out = append(out, p)
			}
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	slices.SortStableFunc(out, func(x, y alerting.MetricPoint) int { return x.T.Compare(y.T) })

	ereq := &metricspb.QueryExemplarsRequest{Metric: metric, Matchers: matchers, StartUnixNano: start.UnixNano(), EndUnixNano: end.UnixNano(), Limit: maxMetricTracesPerPoint}
	eres := fanOutMetrics(ctx, a, "QueryExemplars", func(ctx context.Context, rd metricspb.MetricReaderClient) (*metricspb.QueryExemplarsResponse, error) {
		return rd.QueryExemplars(ctx, ereq)
	})
	// Exemplars are optional: the value stands without them.
	for i, e := range mergeExemplars(eres.ok) {
		if i == maxMetricTracesPerPoint {
			break
		}
		var id span.TraceID
		copy(id[:], e.GetTraceId())
		out[len(out)-1].Traces = append(out[len(out)-1].Traces, id)
	}
	return out, nil
}

// mergeSeries unions the series of every indexer by (metric, kind, labels),
// their points by time (a point on two indexers after a rebalance or replay
// appears once), oldest first.
func mergeSeries(answers []*metricspb.QuerySeriesResponse) []*metricspb.Series {
	byKey := map[string]*metricspb.Series{}
	var keys []string
	for _, ans := range answers {
		for _, ser := range ans.GetSeries() {
			var b strings.Builder
			fmt.Fprintf(&b, "%q/%d", ser.GetMetric(), ser.GetKind())
			for _, l := range ser.GetLabels() {
				fmt.Fprintf(&b, "/%q=%q", l.GetName(), l.GetValue())
			}
			k := b.String()
			cur, ok := byKey[k]
			if !ok {
				cur = &metricspb.Series{Metric: ser.GetMetric(), Labels: ser.GetLabels(), Kind: ser.GetKind(),
					Temporality: ser.GetTemporality(), Monotonic: ser.GetMonotonic(), Unit: ser.GetUnit()}
				byKey[k] = cur
				keys = append(keys, k)
			}
			cur.Points = append(cur.Points, ser.GetPoints()...)
		}
	}
	slices.Sort(keys)
	out := make([]*metricspb.Series, 0, len(keys))
	for _, k := range keys {
		ser := byKey[k]
		slices.SortStableFunc(ser.Points, func(x, y *metricspb.Point) int { return cmp.Compare(x.GetTimeUnixNano(), y.GetTimeUnixNano()) })
		ser.Points = slices.CompactFunc(ser.Points, func(x, y *metricspb.Point) bool { return x.GetTimeUnixNano() == y.GetTimeUnixNano() })
		out = append(out, ser)
	}
	return out
}

// interval is what a series gained over one point's interval.
type interval struct {
	t       time.Time
	seconds float64 // 0 when unknown
	value   float64 // gauge/sum value, or a sum's increase
	count   float64
	sum     float64
	bounds  []float64
	buckets []float64 // nil without explicit buckets
}

func nsToTime(ns uint64) time.Time { return time.Unix(0, int64(min(ns, math.MaxInt64))) }

// intervals turns a series' points into per-interval increments: delta
// points as they are; cumulative points minus their predecessor (a drop,
// or a changed start time, is a reset: the point counts from its start).
func intervals(ser *metricspb.Series) []interval {
	cumulative := ser.GetTemporality() == metricspb.Temporality_TEMPORALITY_CUMULATIVE
	out := make([]interval, 0, len(ser.GetPoints()))
	var prev *metricspb.Point
	for _, p := range ser.GetPoints() {
		iv := interval{t: nsToTime(p.GetTimeUnixNano()), value: p.GetValue(), count: float64(p.GetCount()), sum: p.GetSum(), bounds: p.GetExplicitBounds()}
		for _, c := range p.GetBucketCounts() {
			iv.buckets = append(iv.buckets, float64(c))
		}
		if p.GetStartTimeUnixNano() != 0 && p.GetStartTimeUnixNano() < p.GetTimeUnixNano() {
			iv.seconds = float64(p.GetTimeUnixNano()-p.GetStartTimeUnixNano()) / 1e9
		}
		if cumulative && prev != nil && !isReset(prev, p) {
			iv.seconds = float64(p.GetTimeUnixNano()-prev.GetTimeUnixNano()) / 1e9
			iv.value -= prev.GetValue()
			iv.count -= float64(prev.GetCount())
			iv.sum -= prev.GetSum()
			for i, c := range prev.GetBucketCounts() {
				iv.buckets[i] -= float64(c)
			}
		}
		prev = p
		out = append(out, iv)
	}
	return out
}

func isReset(prev, p *metricspb.Point) bool {
	if p.GetStartTimeUnixNano() != 0 && prev.GetStartTimeUnixNano() != 0 && p.GetStartTimeUnixNano() != prev.GetStartTimeUnixNano() {
		return true
	}
	if p.GetValue() < prev.GetValue() || p.GetCount() < prev.GetCount() || p.GetTimeUnixNano() <= prev.GetTimeUnixNano() {
		return true
	}
	if !slices.Equal(p.GetExplicitBounds(), prev.GetExplicitBounds()) || len(p.GetBucketCounts()) != len(prev.GetBucketCounts()) {
		return true
	}
	for i, c := range p.GetBucketCounts() {
		if c < prev.GetBucketCounts()[i] {
			return true
		}
	}
	return false
}

// seriesValues applies fn to a series, one sample per point.
func seriesValues(ser *metricspb.Series, fn string) ([]alerting.MetricPoint, error) {
	kind := ser.GetKind()
	isHist := kind == metricspb.Kind_KIND_HISTOGRAM || kind == metricspb.Kind_KIND_EXPONENTIAL_HISTOGRAM || kind == metricspb.Kind_KIND_SUMMARY
	if fn == "" && isHist {
		fn = "p99"
	}
	var out []alerting.MetricPoint
	switch {
	case fn == "":
		// The value as sent: a gauge, or a sum's (running) total.
		for _, p := range ser.GetPoints() {
			out = append(out, alerting.MetricPoint{T: nsToTime(p.GetTimeUnixNano()), Value: p.GetValue()})
		}
	case fn == "rate":
		if kind == metricspb.Kind_KIND_GAUGE {
			return nil, errors.New(":rate applies to sums and histograms, not gauges")
		}
		for _, iv := range intervals(ser) {
			if iv.seconds <= 0 {
				continue
			}
			v := iv.value
			if isHist {
				v = iv.count
			}
			out = append(out, alerting.MetricPoint{T: iv.t, Value: v / iv.seconds})
		}
	case !isHist:
		return nil, fmt.Errorf(":%s applies to histograms only", fn)
	case fn == "count" || fn == "avg":
		for _, iv := range intervals(ser) {
			v := iv.count
			if fn == "avg" {
				if iv.count == 0 {
					continue
				}
				v = iv.sum / iv.count
			}
			out = append(out, alerting.MetricPoint{T: iv.t, Value: v})
		}
	default:
		if kind != metricspb.Kind_KIND_HISTOGRAM {
			return nil, fmt.Errorf("%s needs explicit histogram buckets; use :avg, :count or :rate", fn)
		}
		q := alerting.MetricFuncs[fn]
		for _, iv := range intervals(ser) {
			if v, ok := bucketQuantile(q, iv.bounds, iv.buckets); ok {
				out = append(out, alerting.MetricPoint{T: iv.t, Value: v})
			}
		}
	}
	return out, nil
}

// bucketQuantile estimates quantile q from explicit buckets (counts has
// len(bounds)+1 entries) by linear interpolation within the bucket that
// holds the rank. The lowest bucket is taken to start at 0 (or its bound
// when that is negative); a rank in the overflow bucket answers the highest
// bound. ok is false without observations.
func bucketQuantile(q float64, bounds, counts []float64) (float64, bool) {
	if len(bounds) == 0 || len(counts) != len(bounds)+1 {
		return 0, false
	}
	total := 0.0
	for _, c := range counts {
		total += c
	}
	if total <= 0 {
		return 0, false
	}
	rank := q * total
	seen := 0.0
	for i, c := range counts {
		if c <= 0 || seen+c < rank {
			seen += c
			continue
		}
		if i == len(bounds) {
			return bounds[len(bounds)-1], true
		}
		upper := bounds[i]
		lower := math.Min(0, upper)
		if i > 0 {
			lower = bounds[i-1]
		}
		return lower + (upper-lower)*(rank-seen)/c, true
	}
	return bounds[len(bounds)-1], true
}
