package query

// A Loki-compatible read subset, so Grafana's Loki data source (and its
// "trace to logs" link) works with Threadline as the logs data source:
//   - GET /loki/api/v1/query_range?direction=&end=<ns>&limit=&query=&start=<ns>&step=
//   - GET /loki/api/v1/query?direction=&limit=&query=&time=<ns>
//   - GET /loki/api/v1/labels?start=&end=
//   - GET /loki/api/v1/label/{name}/values?start=&end=
//   - GET /loki/api/v1/series?match[]=&start=&end=
//
// LogQL subset: a stream selector of `=` matchers on service_name (alias
// service), level (alias detected_level), trace_id and span_id; line
// filters `|= "text"` and `!= "text"`; and label filters `| trace_id="…"`
// on the same labels. A line filter holding a 32-hex trace ID also matches
// the lines of that trace, which is what Grafana's trace → logs link sends.
// Anything else (regex matchers, parsers, metric queries) is a 400.
//
// Every answer, errors included, is Loki's JSON: a 200 with another body
// makes Grafana show nothing and no error.

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/threadline/threadline/logstore/loglevel"
	logspb "github.com/threadline/threadline/proto/logs/v1"
)

const (
	// lokiDefaultLimit is Loki's default line limit.
	lokiDefaultLimit = 100
	// lokiDefaultRange is the range of a query without start, and the
	// lookback of an instant query, as Loki's.
	lokiDefaultRange = time.Hour
	// lokiSeriesLimit bounds the lines scanned to list series.
	lokiSeriesLimit = 5000
)

// logQuery is a parsed LogQL log query.
type logQuery struct {
	service, level, traceID, spanID string
	contains, notContains           []string
}

type lokiStream struct {
	Stream map[string]string `json:"stream"`
	Values [][2]string       `json:"values"`
}

type lokiStreamsResponse struct {
	Status string `json:"status"`
	Data   struct {
		ResultType string       `json:"resultType"`
		Result     []lokiStream `json:"result"`
		Stats      struct{}     `json:"stats"`
	} `json:"data"`
	Warnings []string `json:"warnings,omitempty"`
}

type lokiListResponse struct {
	Status   string   `json:"status"`
	Data     any      `json:"data"`
	Warnings []string `json:"warnings,omitempty"`
}

// lokiError answers in Loki's error shape; Grafana shows "message".
func lokiError(w http.ResponseWriter, r *http.Request, err error) {
	code := statusOf(err)
	errType := "internal"
	if code == http.StatusBadRequest {
		errType = "bad_data"
	} else if code >= 500 && code != http.StatusInternalServerError {
		errType = "unavailable"
	}
	writeJSON(w, r, code, map[string]any{
		"status": "error", "errorType": errType, "error": err.Error(), "message": err.Error(), "code": code,
	})
}

// parseLogQL parses the supported subset.
func parseLogQL(s string) (logQuery, error) {
	p := &logqlParser{s: s}
	q, err := p.parse()
	if err != nil {
		return logQuery{}, badRequest("parse error: %v (supported: {service_name=\"…\", level=\"…\", trace_id=\"…\", span_id=\"…\"} with |= \"…\", != \"…\" and | trace_id=\"…\")", err)
	}
	return q, nil
}

type logqlParser struct {
	s   string
	pos int
}

func (p *logqlParser) skipSpace() {
	for p.pos < len(p.s) && unicode.IsSpace(rune(p.s[p.pos])) {
		p.pos++
	}
}

func (p *logqlParser) peek(tok string) bool {
	p.skipSpace()
	return strings.HasPrefix(p.s[p.pos:], tok)
}

func (p *logqlParser) expect(tok string) error {
	if !p.peek(tok) {
		return fmt.Errorf("expected %q at position %d", tok, p.pos)
	}
	p.pos += len(tok)
	return nil
}

func (p *logqlParser) ident() (string, error) {
	p.skipSpace()
	start := p.pos
	for p.pos < len(p.s) {
		c := p.s[p.pos]
		if c == '_' || c == '.' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || p.pos > start && c >= '0' && c <= '9' {
			p.pos++
			continue
		}
		break
	}
	if p.pos == start {
		return "", fmt.Errorf("expected a label name at position %d", p.pos)
	}
	return p.s[start:p.pos], nil
}

func (p *logqlParser) str() (string, error) {
	p.skipSpace()
	if p.pos >= len(p.s) {
		return "", errors.New("expected a string at the end of the query")
	}
	q := p.s[p.pos]
	if q != '"' && q != '`' {
		return "", fmt.Errorf("expected a quoted string at position %d", p.pos)
	}
	for i := p.pos + 1; i < len(p.s); i++ {
		if p.s[i] == '\\' && q == '"' {
			i++
			continue
		}
		if p.s[i] == q {
			raw := p.s[p.pos : i+1]
			p.pos = i + 1
			if q == '`' {
				return raw[1 : len(raw)-1], nil
			}
			v, err := strconv.Unquote(raw)
			if err != nil {
				return "", fmt.Errorf("bad string %s: %v", raw, err)
			}
			return v, nil
		}
	}
	return "", fmt.Errorf("unterminated string at position %d", p.pos)
}

// matcher parses `name op "value"` and records it; only = is supported.
func (p *logqlParser) matcher(q *logQuery) error {
	name, err := p.ident()
	if err != nil {
		return err
	}
	p.skipSpace()
	for _, op := range []string{"=~", "!~", "!="} {
		if strings.HasPrefix(p.s[p.pos:], op) {
			return fmt.Errorf("matcher %s%s is not supported; use =", name, op)
		}
	}
	if err := p.expect("="); err != nil {
		return err
	}
	v, err := p.str()
	if err != nil {
		return err
	}
	var dst *string
	switch name {
	case "service_name", "service", "service.name":
		dst = &q.service
	case "level", "detected_level", "severity_text":
		dst = &q.level
	case "trace_id", "traceID", "traceId":
		dst = &q.traceID
	case "span_id", "spanID", "spanId":
		dst = &q.spanID
	default:
		return fmt.Errorf("label %q is not supported; use service_name, level, trace_id or span_id", name)
	}
	if *dst != "" && *dst != v {
		return fmt.Errorf("label %s matched twice with different values", name)
	}
	*dst = v
	return nil
}

func (p *logqlParser) parse() (logQuery, error) {
	var q logQuery
	p.skipSpace()
	if p.pos < len(p.s) && p.s[p.pos] != '{' {
		return q, errors.New("only log queries are supported (metric queries such as count_over_time are not)")
	}
	if err := p.expect("{"); err != nil {
		return q, err
	}
	if !p.peek("}") {
		for {
			if err := p.matcher(&q); err != nil {
				return q, err
			}
			if p.peek(",") {
				p.pos++
				continue
			}
			break
		}
	}
	if err := p.expect("}"); err != nil {
		return q, err
	}
	for {
		p.skipSpace()
		if p.pos >= len(p.s) {
			break
		}
		switch {
		case p.peek("|="):
			p.pos += 2
			v, err := p.str()
			if err != nil {
				return q, err
			}
			if v != "" {
				q.contains = append(q.contains, v)
			}
		case p.peek("!="):
			p.pos += 2
			v, err := p.str()
			if err != nil {
				return q, err
			}
			if v != "" {
				q.notContains = append(q.notContains, v)
			}
		case p.peek("|~"), p.peek("!~"):
			return q, errors.New("regex line filters are not supported; use |= or !=")
		case p.peek("|"):
			p.pos++
			if err := p.matcher(&q); err != nil {
				return q, fmt.Errorf("pipeline stage: %w", err)
			}
		default:
			return q, fmt.Errorf("unexpected %q at position %d", truncate(p.s[p.pos:]), p.pos)
		}
	}
	return q, nil
}

// parseLokiTime parses a Loki time parameter as Loki does: a decimal is
// unix seconds, an integer of up to 10 digits unix seconds, a longer one
// nanoseconds, else RFC 3339.
func parseLokiTime(v string, def time.Time) (time.Time, error) {
	if v == "" {
		return def, nil
	}
	if strings.Contains(v, ".") {
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			s, frac := math.Modf(f)
			return time.Unix(int64(s), int64(frac*1e9)), nil
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			return t, nil
		}
		return time.Time{}, fmt.Errorf("cannot parse %q to a valid timestamp", truncate(v))
	}
	if len(v) <= 10 {
		return time.Unix(n, 0), nil
	}
	return time.Unix(0, n), nil
}

func (a *API) lokiRange(r *http.Request, instant bool) (start, end time.Time, err error) {
	qv := r.URL.Query()
	now := a.now()
	if instant {
		end, err = parseLokiTime(qv.Get("time"), now)
		if err != nil {
			return start, end, badRequest("invalid time: %v", err)
		}
		return end.Add(-lokiDefaultRange), end, nil
	}
	end, err = parseLokiTime(qv.Get("end"), now)
	if err != nil {
		return start, end, badRequest("invalid end: %v", err)
	}
	start, err = parseLokiTime(qv.Get("start"), end.Add(-lokiDefaultRange))
	if err != nil {
		return start, end, badRequest("invalid start: %v", err)
	}
	if end.Before(start) {
		return start, end, badRequest("end timestamp must not be before start time")
	}
	return start, end, nil
}

func (a *API) lokiQueryRange(w http.ResponseWriter, r *http.Request) { a.lokiQuery(w, r, false) }

func (a *API) lokiQueryInstant(w http.ResponseWriter, r *http.Request) { a.lokiQuery(w, r, true) }

func (a *API) lokiQuery(w http.ResponseWriter, r *http.Request, instant bool) {
	qv := r.URL.Query()
	q, err := parseLogQL(qv.Get("query"))
	if err != nil {
		lokiError(w, r, err)
		return
	}
	start, end, err := a.lokiRange(r, instant)
	if err != nil {
		lokiError(w, r, err)
		return
	}
	limit, err := parseLogLimit(qv.Get("limit"), lokiDefaultLimit)
	if err != nil {
		lokiError(w, r, err)
		return
	}
	forward := false
	switch strings.ToLower(qv.Get("direction")) {
	case "", "backward":
	case "forward":
		forward = true
	default:
		lokiError(w, r, badRequest("invalid direction %q: want forward or backward", truncate(qv.Get("direction"))))
		return
	}
	req := selectRequest(q, start, end, limit, forward)
	res := fanOutLogs(r.Context(), a, "SelectLogs", func(ctx context.Context, c logspb.LogReaderClient) (*logspb.LogsResponse, error) {
		return c.SelectLogs(ctx, req)
	})
	if err := res.failed(); err != nil {
		lokiError(w, r, logFailure(err))
		return
	}
	answers := make([][]*logspb.LogEntry, 0, len(res.ok))
	for _, ok := range res.ok {
		answers = append(answers, ok.GetLogs())
	}
	merged := mergeLogs(answers, forward)
	if len(merged) > limit {
		merged = merged[:limit]
	}
	out := lokiStreamsResponse{Status: "success"}
	out.Data.ResultType = "streams"
	out.Data.Result = toLokiStreams(merged)
	if res.partial() {
		out.Warnings = []string{res.partialMessage()}
	}
	writeJSON(w, r, http.StatusOK, out)
}

func selectRequest(q logQuery, start, end time.Time, limit int, forward bool) *logspb.SelectLogsRequest {
	return &logspb.SelectLogsRequest{
		Service: q.service, Level: q.level, TraceId: q.traceID, SpanId: q.spanID,
		LineContains: q.contains, LineNotContains: q.notContains,
		StartUnixNano: start.UnixNano(), EndUnixNano: end.UnixNano(),
		Limit: int32(limit), Forward: forward,
	}
}

// streamLabels are a line's Loki labels. trace_id is a label so Grafana's
// derived fields can link each line to its trace; it is not listed by the
// labels API (one value per trace).
func streamLabels(e *logspb.LogEntry) map[string]string {
	m := map[string]string{"service_name": e.GetServiceName(), "level": loglevel.Label(e.GetSeverityNumber())}
	if len(e.GetTraceId()) > 0 {
		m["trace_id"] = hex.EncodeToString(e.GetTraceId())
	}
	return m
}

// toLokiStreams groups lines (already in answer order) into streams by
// label set, keeping the order within each stream.
func toLokiStreams(entries []*logspb.LogEntry) []lokiStream {
	out := []lokiStream{}
	index := map[string]int{}
	for _, e := range entries {
		labels := streamLabels(e)
		key := labels["service_name"] + "\x00" + labels["level"] + "\x00" + labels["trace_id"]
		i, ok := index[key]
		if !ok {
			i = len(out)
			index[key] = i
			out = append(out, lokiStream{Stream: labels, Values: [][2]string{}})
		}
		out[i].Values = append(out[i].Values, [2]string{strconv.FormatUint(e.GetTimeUnixNano(), 10), e.GetBody()})
	}
	return out
}

// lokiLabelNames are the labels the labels API lists.
var lokiLabelNames = []string{"level", "service_name"}

func (a *API) lokiLabels(w http.ResponseWriter, r *http.Request) {
	if _, _, err := a.lokiRange(r, false); err != nil {
		lokiError(w, r, err)
		return
	}
	writeJSON(w, r, http.StatusOK, lokiListResponse{Status: "success", Data: lokiLabelNames})
}

func (a *API) lokiLabelValues(w http.ResponseWriter, r *http.Request) {
	start, end, err := a.lokiRange(r, false)
	if err != nil {
		lokiError(w, r, err)
		return
	}
	name := r.PathValue("name")
	req := &logspb.LabelValuesRequest{Name: name, StartUnixNano: start.UnixNano(), EndUnixNano: end.UnixNano()}
	res := fanOutLogs(r.Context(), a, "LabelValues", func(ctx context.Context, c logspb.LogReaderClient) (*logspb.LabelValuesResponse, error) {
		return c.LabelValues(ctx, req)
	})
	if err := res.failed(); err != nil {
		lokiError(w, r, logFailure(err))
		return
	}
	var vals []string
	for _, ok := range res.ok {
		vals = append(vals, ok.GetValues()...)
	}
	slices.Sort(vals)
	vals = slices.Compact(vals)
	if vals == nil {
		vals = []string{}
	}
	out := lokiListResponse{Status: "success", Data: vals}
	if res.partial() {
		out.Warnings = []string{res.partialMessage()}
	}
	writeJSON(w, r, http.StatusOK, out)
}

func (a *API) lokiSeries(w http.ResponseWriter, r *http.Request) {
	start, end, err := a.lokiRange(r, false)
	if err != nil {
		lokiError(w, r, err)
		return
	}
	if err := r.ParseForm(); err != nil {
		lokiError(w, r, badRequest("invalid parameters: %v", err))
		return
	}
	matches := r.Form["match[]"]
	if len(matches) == 0 {
		matches = r.Form["match"]
	}
	if len(matches) == 0 {
		matches = []string{"{}"}
	}
	seen := map[string]bool{}
	series := []map[string]string{}
	var warnings []string
	for _, m := range matches {
		q, err := parseLogQL(m)
		if err != nil {
			lokiError(w, r, err)
			return
		}
		req := selectRequest(q, start, end, lokiSeriesLimit, false)
		res := fanOutLogs(r.Context(), a, "SelectLogs", func(ctx context.Context, c logspb.LogReaderClient) (*logspb.LogsResponse, error) {
			return c.SelectLogs(ctx, req)
		})
		if err := res.failed(); err != nil {
			lokiError(w, r, logFailure(err))
			return
		}
		if res.partial() {
			warnings = append(warnings, res.partialMessage())
		}
		for _, ok := range res.ok {
			for _, e := range ok.GetLogs() {
				labels := streamLabels(e)
				delete(labels, "trace_id") // a series per trace says nothing
				key := labels["service_name"] + "\x00" + labels["level"]
				if !seen[key] {
					seen[key] = true
					series = append(series, labels)
				}
			}
		}
	}
	slices.SortFunc(series, func(x, y map[string]string) int {
		if c := strings.Compare(x["service_name"], y["service_name"]); c != 0 {
			return c
		}
		return strings.Compare(x["level"], y["level"])
	})
	writeJSON(w, r, http.StatusOK, lokiListResponse{Status: "success", Data: series, Warnings: warnings})
}
