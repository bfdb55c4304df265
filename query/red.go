package query

// Span-derived RED metrics, merged across indexers. Routes:
//   - GET /api/v1/metrics/red?service=&operation=&start=&end=&step=
//     start/end: unix seconds or RFC3339 (default: the last hour); step: a Go
//     duration or bare seconds (as Grafana sends it), default 10s, rounded up to whole indexer buckets. Answers
//     {"series":[{"t","count","errors","rate","errorRate","p50","p90","p99",
//     "traceIDs"}]}, one point per step including empty ones; rate is spans/s,
//     percentiles are milliseconds, traceIDs are kept traces (errors first,
//     then slowest). Indexers' histograms are summed before percentiles are
//     computed, never percentiles averaged.
//   - GET /api/v1/metrics/prometheus: OpenMetrics 1.0 text for Prometheus to
//     scrape: threadline_span_requests_total, threadline_span_errors_total and
//     the threadline_span_duration_seconds histogram, labelled service,
//     operation, span_kind, status_code, counted since each indexer started
//     and summed over indexers. Histogram buckets carry the latest kept
//     trace as an exemplar {trace_id="…"}, so Grafana can jump from a latency
//     panel to the trace. Prometheus needs no feature flag to ingest
//     OpenMetrics exemplars; enable them in Grafana's Prometheus data source
//     (Exemplars → internal link to the Tempo/Jaeger data source, label trace_id).

import (
	"bytes"
	"context"
	"encoding/hex"
	"math"
	"net/http"
	"slices"
	"strconv"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/red"
	"github.com/threadline/threadline/span"
)

// openMetricsContentType is what Prometheus negotiates for OpenMetrics 1.0.
const openMetricsContentType = "application/openmetrics-text; version=1.0.0; charset=utf-8"

const (
	defaultREDStep  = 10 * time.Second
	defaultREDRange = time.Hour
	// redTraceIDsPerStep caps the trace IDs of one merged step.
	redTraceIDsPerStep = 20
)

type redPoint struct {
	T         int64    `json:"t"`
	Count     uint64   `json:"count"`
	Errors    uint64   `json:"errors"`
	Rate      float64  `json:"rate"`
	ErrorRate float64  `json:"errorRate"`
	P50       float64  `json:"p50"`
	P90       float64  `json:"p90"`
	P99       float64  `json:"p99"`
	TraceIDs  []string `json:"traceIDs"`
}

type redResponse struct {
	Series []redPoint `json:"series"`
	// Warnings names indexers that failed when others answered.
	Warnings []string `json:"warnings,omitempty"`
}

// parseTimeParam reads unix seconds (integer or fractional) or RFC3339.
func parseTimeParam(r *http.Request, name string, def time.Time) (time.Time, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if f < 0 || f > math.MaxInt64/float64(time.Second) || math.IsNaN(f) {
			return time.Time{}, badRequest("invalid %s %q: out of range", name, truncate(v))
		}
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*1e9)), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, badRequest("invalid %s %q: want unix seconds or RFC3339", name, truncate(v))
	}
	return t, nil
}

func parseREDRequest(r *http.Request, now time.Time) (*readerpb.REDRequest, error) {
	qv := r.URL.Query()
	end, err := parseTimeParam(r, "end", now)
	if err != nil {
		return nil, err
	}
	start, err := parseTimeParam(r, "start", end.Add(-defaultREDRange))
	if err != nil {
		return nil, err
	}
	if !end.After(start) {
		return nil, badRequest("invalid range: end %s is not after start %s", end.UTC().Format(time.RFC3339), start.UTC().Format(time.RFC3339))
	}
	step := defaultREDStep
	if v := qv.Get("step"); v != "" {
		// A Go duration, or bare seconds as Prometheus and Grafana send it.
		if secs, perr := strconv.ParseFloat(v, 64); perr == nil {
			step, err = time.Duration(secs*float64(time.Second)), nil
		} else {
			step, err = time.ParseDuration(v)
		}
		if err != nil || step < time.Second {
			return nil, badRequest("invalid step %q: want a duration of at least 1s, such as 10s, 1m or 60", truncate(v))
		}
	}
	if n := end.Sub(start) / step; n >= red.MaxSteps {
		return nil, badRequest("range of %s at step %s exceeds %d points; use a larger step", end.Sub(start), step, red.MaxSteps)
	}
	return &readerpb.REDRequest{
		Service:       qv.Get("service"),
		Operation:     qv.Get("operation"),
		StartUnixNano: start.UnixNano(),
		EndUnixNano:   end.UnixNano(),
		StepNanos:     int64(step),
	}, nil
}

// redQuery serves GET /api/v1/metrics/red.
func (a *API) redQuery(w http.ResponseWriter, r *http.Request) {
	req, err := parseREDRequest(r, a.now())
	if err != nil {
		nativeError(w, r, err)
		return
	}
	res := fanOut(r.Context(), a, "QueryRED", func(ctx context.Context, rd readerpb.ReaderClient) (*readerpb.REDResponse, error) {
		return rd.QueryRED(ctx, req)
	})
	if err := res.failed(); err != nil {
		code := failureStatus(err)
		if allCode(err, codes.InvalidArgument) {
			code = http.StatusBadRequest
		}
		nativeError(w, r, &httpError{code: code, err: err})
		return
	}
	out, err := mergeRED(req, res.ok)
	if err != nil {
		nativeError(w, r, err)
		return
	}
	if res.partial() {
		out.Warnings = []string{"partial result: " + res.partialMessage()}
	}
	writeJSON(w, r, http.StatusOK, out)
}

func allCode(err error, c codes.Code) bool {
	for _, e := range unwrapJoined(err) {
		if status.Code(e) != c {
			return false
		}
	}
	return true
}

// mergeRED sums the indexers' points per step and derives rates and
// percentiles from the summed histograms.
func mergeRED(req *readerpb.REDRequest, answers []*readerpb.REDResponse) (redResponse, error) {
	first := answers[0]
	for _, ans := range answers[1:] {
		if !slices.Equal(ans.GetBucketBoundsSeconds(), first.GetBucketBoundsSeconds()) || ans.GetStepNanos() != first.GetStepNanos() || ans.GetStartUnixNano() != first.GetStartUnixNano() {
			return redResponse{}, &httpError{code: http.StatusBadGateway, err: errIncompatibleRED}
		}
	}
	step, start := first.GetStepNanos(), first.GetStartUnixNano()
	if step <= 0 {
		return redResponse{}, &httpError{code: http.StatusBadGateway, err: errIncompatibleRED}
	}
	nb := len(first.GetBucketBoundsSeconds()) + 1
	type acc struct {
		count, errors uint64
		hist          []uint64
		traces        []red.TraceRef
	}
	steps := map[int64]*acc{}
	for _, ans := range answers {
		for _, p := range ans.GetPoints() {
			if len(p.GetBucketCounts()) != nb {
				return redResponse{}, &httpError{code: http.StatusBadGateway, err: errIncompatibleRED}
			}
			a := steps[p.GetStartUnixNano()]
			if a == nil {
				a = &acc{hist: make([]uint64, nb)}
				steps[p.GetStartUnixNano()] = a
			}
			a.count += p.GetCount()
			a.errors += p.GetErrors()
			for i, c := range p.GetBucketCounts() {
				a.hist[i] += c
			}
			for _, tr := range p.GetTraces() {
				id, err := span.TraceIDFromBytes(tr.GetTraceId())
				if err != nil {
					continue
				}
				a.traces = append(a.traces, red.TraceRef{ID: id, Error: tr.GetError(), Duration: time.Duration(tr.GetDurationNanos())})
			}
		}
	}
	// Percentiles need our bounds; an indexer of another release is refused above.
	useOwn := slices.Equal(first.GetBucketBoundsSeconds(), red.BoundsSeconds())
	out := redResponse{Series: []redPoint{}}
	for t := start; t < req.GetEndUnixNano(); t += step {
		p := redPoint{T: t / int64(time.Second), TraceIDs: []string{}}
		if a := steps[t]; a != nil {
			p.Count, p.Errors = a.count, a.errors
			p.Rate = float64(a.count) / time.Duration(step).Seconds()
			if a.count > 0 {
				p.ErrorRate = float64(a.errors) / float64(a.count)
			}
			if useOwn {
				ms := func(q float64) float64 { return float64(red.Quantile(a.hist, q)) / float64(time.Millisecond) }
				p.P50, p.P90, p.P99 = ms(0.5), ms(0.9), ms(0.99)
			}
			for _, tr := range red.RankTraces(a.traces, redTraceIDsPerStep) {
				p.TraceIDs = append(p.TraceIDs, tr.ID.String())
			}
		}
		out.Series = append(out.Series, p)
	}
	if !useOwn {
		return redResponse{}, &httpError{code: http.StatusBadGateway, err: errIncompatibleRED}
	}
	return out, nil
}

var errIncompatibleRED = &redError{"indexers answered RED metrics with different histogram bounds or steps; run one release"}

type redError struct{ msg string }

func (e *redError) Error() string { return e.msg }

// redPrometheus serves GET /api/v1/metrics/prometheus. A scrape fails (503)
// unless every indexer answers: a partial sum would look like a counter
// reset to Prometheus and turn into a false rate spike.
func (a *API) redPrometheus(w http.ResponseWriter, r *http.Request) {
	res := fanOut(r.Context(), a, "REDTotals", func(ctx context.Context, rd readerpb.ReaderClient) (*readerpb.REDTotalsResponse, error) {
		return rd.REDTotals(ctx, &readerpb.REDTotalsRequest{})
	})
	if len(res.errs) > 0 || len(res.ok) == 0 {
		err := res.failed()
		if err == nil {
			err = &redError{res.partialMessage()}
		}
		writeText(w, r, http.StatusServiceUnavailable, "span metrics unavailable: "+err.Error())
		return
	}
	body, err := openMetricsBody(res.ok)
	if err != nil {
		writeText(w, r, statusOf(err), err.Error())
		return
	}
	writeBody(w, r, http.StatusOK, openMetricsContentType, body)
}

type seriesID struct{ service, operation, kind, status string }

// openMetricsBody sums the indexers' series and encodes them with the
// reference OpenMetrics encoder.
func openMetricsBody(answers []*readerpb.REDTotalsResponse) ([]byte, error) {
	bounds := answers[0].GetBucketBoundsSeconds()
	type acc struct {
		count, errors uint64
		sum           float64
		hist          []uint64
		ex            []*readerpb.REDExemplar
	}
	merged := map[seriesID]*acc{}
	var ids []seriesID
	for _, ans := range answers {
		if !slices.Equal(ans.GetBucketBoundsSeconds(), bounds) {
			return nil, &httpError{code: http.StatusBadGateway, err: errIncompatibleRED}
		}
		for _, s := range ans.GetSeries() {
			if len(s.GetBucketCounts()) != len(bounds)+1 {
				return nil, &httpError{code: http.StatusBadGateway, err: errIncompatibleRED}
			}
			id := seriesID{s.GetService(), s.GetOperation(), s.GetSpanKind(), s.GetStatusCode()}
			m := merged[id]
			if m == nil {
				m = &acc{hist: make([]uint64, len(bounds)+1), ex: make([]*readerpb.REDExemplar, len(bounds)+1)}
				merged[id] = m
				ids = append(ids, id)
			}
			m.count += s.GetCount()
			m.errors += s.GetErrors()
			m.sum += s.GetSumSeconds()
			for i, c := range s.GetBucketCounts() {
				m.hist[i] += c
			}
			for _, e := range s.GetExemplars() {
				if b := int(e.GetBucket()); b < len(m.ex) && (m.ex[b] == nil || e.GetTimeUnixNano() > m.ex[b].GetTimeUnixNano()) {
					m.ex[b] = e
				}
			}
		}
	}
	slices.SortFunc(ids, func(a, b seriesID) int {
		for _, c := range [][2]string{{a.service, b.service}, {a.operation, b.operation}, {a.kind, b.kind}, {a.status, b.status}} {
			if c[0] != c[1] {
				if c[0] < c[1] {
					return -1
				}
				return 1
			}
		}
		return 0
	})
	requests := &dto.MetricFamily{
		Name: proto.String("threadline_span_requests_total"),
		Help: proto.String("Spans received, from every span before sampling, since the indexers started."),
		Type: dto.MetricType_COUNTER.Enum(),
	}
	errs := &dto.MetricFamily{
		Name: proto.String("threadline_span_errors_total"),
		Help: proto.String("Spans with status ERROR, from every span before sampling, since the indexers started."),
		Type: dto.MetricType_COUNTER.Enum(),
	}
	durations := &dto.MetricFamily{
		Name: proto.String("threadline_span_duration_seconds"),
		Help: proto.String("Span durations; bucket exemplars are the latest kept trace in each bucket."),
		Type: dto.MetricType_HISTOGRAM.Enum(),
	}
	for _, id := range ids {
		m := merged[id]
		labels := []*dto.LabelPair{
			{Name: proto.String("operation"), Value: proto.String(id.operation)},
			{Name: proto.String("service"), Value: proto.String(id.service)},
			{Name: proto.String("span_kind"), Value: proto.String(id.kind)},
			{Name: proto.String("status_code"), Value: proto.String(id.status)},
		}
		requests.Metric = append(requests.Metric, &dto.Metric{Label: labels, Counter: &dto.Counter{Value: proto.Float64(float64(m.count))}})
		errs.Metric = append(errs.Metric, &dto.Metric{Label: labels, Counter: &dto.Counter{Value: proto.Float64(float64(m.errors))}})
		h := &dto.Histogram{SampleCount: proto.Uint64(m.count), SampleSum: proto.Float64(m.sum)}
		var cum uint64
		for i, c := range m.hist {
			cum += c
			le := math.Inf(1)
			if i < len(bounds) {
				le = bounds[i]
			}
			b := &dto.Bucket{CumulativeCount: proto.Uint64(cum), UpperBound: proto.Float64(le)}
			if e := m.ex[i]; e != nil {
				b.Exemplar = &dto.Exemplar{
					Label:     []*dto.LabelPair{{Name: proto.String("trace_id"), Value: proto.String(hex.EncodeToString(e.GetTraceId()))}},
					Value:     proto.Float64(e.GetValueSeconds()),
					Timestamp: timestamppb.New(time.Unix(0, e.GetTimeUnixNano())),
				}
			}
			h.Bucket = append(h.Bucket, b)
		}
		durations.Metric = append(durations.Metric, &dto.Metric{Label: labels, Histogram: h})
	}
	var buf bytes.Buffer
	for _, mf := range []*dto.MetricFamily{requests, errs, durations} {
		if len(mf.Metric) == 0 {
			continue
		}
		if _, err := expfmt.MetricFamilyToOpenMetrics(&buf, mf); err != nil {
			return nil, &httpError{code: http.StatusInternalServerError, err: err}
		}
	}
	if _, err := expfmt.FinalizeOpenMetrics(&buf); err != nil {
		return nil, &httpError{code: http.StatusInternalServerError, err: err}
	}
	return buf.Bytes(), nil
}
