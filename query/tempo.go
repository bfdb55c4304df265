package query

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"mime"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/clockskew"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
)

// httpError carries the status a failure should be answered with.
type httpError struct {
	code int
	err  error
}

func (e *httpError) Error() string { return e.err.Error() }
func (e *httpError) Unwrap() error { return e.err }

func badRequest(format string, args ...any) error {
	return &httpError{code: http.StatusBadRequest, err: fmt.Errorf(format, args...)}
}

// statusOf returns the HTTP status for err: its own when it carries one,
// else 500.
func statusOf(err error) int {
	var he *httpError
	if errors.As(err, &he) {
		return he.code
	}
	return http.StatusInternalServerError
}

// tempoError answers err in Tempo's style: plain text.
func tempoError(w http.ResponseWriter, r *http.Request, err error) {
	writeText(w, r, statusOf(err), err.Error())
}

func writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeText(w, r, http.StatusInternalServerError, "encode response: "+err.Error())
		return
	}
	writeBody(w, r, status, "application/json", body)
}

// fetchedTrace is a trace merged from every indexer, with a note when some
// indexers could not be asked.
type fetchedTrace struct {
	mergedTrace
	// partial names the indexers that failed; empty when all answered.
	partial string
}

// fetchTrace gets one trace from every indexer and merges it. A trace absent
// from every indexer that answered is a 404 only when all answered: otherwise
// it may sit on one that failed, and the answer is the failure.
func (a *API) fetchTrace(ctx context.Context, id span.TraceID, startNano, endNano int64) (fetchedTrace, error) {
	return a.fetchTraceReq(ctx, id, &readerpb.GetTraceRequest{TraceId: id[:], StartUnixNano: startNano, EndUnixNano: endNano})
}

// fetchTraceAsAsked is fetchTrace honouring ?raw=true: the spans as received,
// without clock-skew adjustment or the attributes it adds.
func (a *API) fetchTraceAsAsked(r *http.Request, id span.TraceID, startNano, endNano int64) (fetchedTrace, error) {
	raw := r.URL.Query().Get("raw") == "true"
	return a.fetchTraceReq(r.Context(), id, &readerpb.GetTraceRequest{TraceId: id[:], StartUnixNano: startNano, EndUnixNano: endNano, Raw: raw})
}

func (a *API) fetchTraceReq(ctx context.Context, id span.TraceID, req *readerpb.GetTraceRequest) (fetchedTrace, error) {
	res := fanOut(ctx, a, "GetTrace", func(ctx context.Context, rd readerpb.ReaderClient) (*readerpb.GetTraceResponse, error) {
		return rd.GetTrace(ctx, req)
	})
	if err := res.failed(); err != nil {
		return fetchedTrace{}, &httpError{code: failureStatus(err), err: fmt.Errorf("get trace %s: %w", id, err)}
	}
	mt, found, err := mergeTrace(res.ok)
	if err != nil {
		return fetchedTrace{}, &httpError{code: http.StatusBadGateway, err: fmt.Errorf("get trace %s: %w", id, err)}
	}
	if !found {
		if res.partial() {
			err := errors.Join(res.errs...)
			return fetchedTrace{}, &httpError{code: failureStatus(err), err: fmt.Errorf("trace %s not found on the indexers that answered; %s", id, res.partialMessage())}
		}
		return fetchedTrace{}, &httpError{code: http.StatusNotFound, err: fmt.Errorf("trace %s not found", id)}
	}
	if !req.GetRaw() && mt.parts > 1 {
		// Each indexer numbered the spans it holds (logical timestamps):
		// number the merged trace as one.
		mt.warnings = unionSorted(append(mt.warnings, clockskew.StampLogicalTimes(&span.Trace{ID: id, Spans: mt.spans})...))
	}
	ft := fetchedTrace{mergedTrace: mt}
	if res.partial() {
		ft.partial = res.partialMessage()
	}
	return ft, nil
}

// traceRequest parses the trace ID path value and the optional start/end
// (unix seconds) hints shared by every trace-by-ID route.
func traceRequest(r *http.Request) (span.TraceID, int64, int64, error) {
	id, err := span.ParseTraceID(r.PathValue("id"))
	if err != nil {
		return span.TraceID{}, 0, 0, badRequest("invalid trace ID: %v", err)
	}
	start, end, err := unixSecondsRange(r, "start", "end")
	if err != nil {
		return span.TraceID{}, 0, 0, err
	}
	return id, start, end, nil
}

// wantsProtobuf reports whether the client asks for protobuf. Grafana's Tempo
// data source sends exactly "application/protobuf"; JSON clients send JSON or
// */* and get JSON.
func wantsProtobuf(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			if mt != "application/protobuf" && mt != "application/x-protobuf" && mt != "application/vnd.google.protobuf" {
				continue
			}
			if q, err := strconv.ParseFloat(params["q"], 64); err == nil && q == 0 {
				continue
			}
			return true
		}
	}
	return false
}

// tracesDataBytes encodes the merged spans as OTLP TracesData, which is
// wire-identical to Tempo's Trace message (field 1: repeated ResourceSpans).
func tracesDataBytes(spans []span.Span) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(span.ToTracesData(spans))
	if err != nil {
		return nil, fmt.Errorf("encode trace: %w", err)
	}
	return b, nil
}

// Tempo's PartialStatus enum.
const (
	tempoStatusComplete = 0
	tempoStatusPartial  = 1
)

// appendTraceByIDResponse encodes Tempo's TraceByIDResponse:
// trace = 1 (Trace), status = 3 (PartialStatus), message = 4.
func appendTraceByIDResponse(dst, traceBytes []byte, partial string) []byte {
	dst = protowire.AppendTag(dst, 1, protowire.BytesType)
	dst = protowire.AppendBytes(dst, traceBytes)
	if partial != "" {
		dst = protowire.AppendTag(dst, 3, protowire.VarintType)
		dst = protowire.AppendVarint(dst, tempoStatusPartial)
		dst = protowire.AppendTag(dst, 4, protowire.BytesType)
		dst = protowire.AppendString(dst, partial)
	}
	return dst
}

// tempoTraceV2 serves GET /api/v2/traces/{id}.
func (a *API) tempoTraceV2(w http.ResponseWriter, r *http.Request) {
	id, start, end, err := traceRequest(r)
	if err != nil {
		tempoError(w, r, err)
		return
	}
	ft, err := a.fetchTraceAsAsked(r, id, start, end)
	if err != nil {
		tempoError(w, r, err)
		return
	}
	if wantsProtobuf(r) {
		tb, err := tracesDataBytes(ft.spans)
		if err != nil {
			tempoError(w, r, err)
			return
		}
		writeBody(w, r, http.StatusOK, "application/protobuf", appendTraceByIDResponse(nil, tb, ft.partial))
		return
	}
	traceJSON, err := tracesJSON(span.ToTracesData(ft.spans))
	if err != nil {
		tempoError(w, r, err)
		return
	}
	resp := struct {
		Trace   json.RawMessage `json:"trace"`
		Status  string          `json:"status"`
		Message string          `json:"message,omitempty"`
	}{Trace: traceJSON, Status: "COMPLETE", Message: ft.partial}
	if ft.partial != "" {
		resp.Status = "PARTIAL"
	}
	writeJSON(w, r, http.StatusOK, resp)
}

// traceByID serves GET /api/traces/{id}: Tempo's bare Trace protobuf for
// protobuf clients (Grafana's Tempo data source), Jaeger JSON otherwise.
func (a *API) traceByID(w http.ResponseWriter, r *http.Request) {
	if !wantsProtobuf(r) {
		a.jaegerTrace(w, r)
		return
	}
	id, start, end, err := traceRequest(r)
	if err != nil {
		tempoError(w, r, err)
		return
	}
	ft, err := a.fetchTraceAsAsked(r, id, start, end)
	if err != nil {
		tempoError(w, r, err)
		return
	}
	// The v1 message has no place for a partial status; the gap is logged
	// and counted by the fan-out.
	tb, err := tracesDataBytes(ft.spans)
	if err != nil {
		tempoError(w, r, err)
		return
	}
	writeBody(w, r, http.StatusOK, "application/protobuf", tb)
}

// unixSecondsRange parses optional unix-second bounds into nanoseconds.
func unixSecondsRange(r *http.Request, startParam, endParam string) (int64, int64, error) {
	parse := func(name string) (int64, error) {
		v := r.URL.Query().Get(name)
		if v == "" {
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 || n > math.MaxInt64/int64(time.Second) {
			return 0, badRequest("invalid %s %q: want unix seconds", name, truncate(v))
		}
		return n * int64(time.Second), nil
	}
	start, err := parse(startParam)
	if err != nil {
		return 0, 0, err
	}
	end, err := parse(endParam)
	if err != nil {
		return 0, 0, err
	}
	if start != 0 && end != 0 && start > end {
		return 0, 0, badRequest("invalid range: %s (%d) is after %s (%d)", startParam, start/int64(time.Second), endParam, end/int64(time.Second))
	}
	if end != 0 {
		// end is a whole second; include spans that start within it.
		end += int64(time.Second) - 1
	}
	return start, end, nil
}

// parseLimit reads a non-negative limit, applying the default and cap.
func (a *API) parseLimit(r *http.Request, def int) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, badRequest("invalid limit %q: want a non-negative integer", truncate(v))
	}
	if n == 0 {
		return def, nil
	}
	return min(n, a.cfg.MaxSearchLimit), nil
}

// parseDurationParam reads an optional non-negative Go duration (100ms, 1.5s).
func parseDurationParam(r *http.Request, name string) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, badRequest("invalid %s %q: want a duration such as 100ms or 1.5s", name, truncate(v))
	}
	return d.Nanoseconds(), nil
}

// parseTempoSearch builds the search request of GET /api/search.
func (a *API) parseTempoSearch(r *http.Request) (*readerpb.SearchRequest, error) {
	qv := r.URL.Query()
	var req *readerpb.SearchRequest
	if q := strings.TrimSpace(qv.Get("q")); q != "" {
		tq, err := parseTraceQL(q)
		if err != nil {
			return nil, badRequest("invalid q: %v", err)
		}
		req = tq
	} else {
		tags, err := parseLogfmtTags(qv.Get("tags"))
		if err != nil {
			return nil, badRequest("invalid tags: %v", err)
		}
		req = &readerpb.SearchRequest{Tags: map[string]string{}}
		for k, v := range tags {
			k, v = normalizeTempoTag(k, v)
			req.Tags[k] = v
		}
	}
	minD, err := parseDurationParam(r, "minDuration")
	if err != nil {
		return nil, err
	}
	maxD, err := parseDurationParam(r, "maxDuration")
	if err != nil {
		return nil, err
	}
	if minD != 0 && maxD != 0 && minD > maxD {
		return nil, badRequest("invalid durations: minDuration is greater than maxDuration")
	}
	if minD != 0 {
		req.MinDurationNanos = max(req.MinDurationNanos, minD)
	}
	if maxD != 0 && (req.MaxDurationNanos == 0 || maxD < req.MaxDurationNanos) {
		req.MaxDurationNanos = maxD
	}
	if req.StartUnixNano, req.EndUnixNano, err = unixSecondsRange(r, "start", "end"); err != nil {
		return nil, err
	}
	limit, err := a.parseLimit(r, a.cfg.DefaultSearchLimit)
	if err != nil {
		return nil, err
	}
	req.Limit = uint32(limit)
	return req, nil
}

// normalizeTempoTag maps Tempo's legacy tag-search keys onto the index's:
// error=true and status.code are the span status; scoped keys lose the scope.
func normalizeTempoTag(k, v string) (string, string) {
	switch k {
	case "error":
		if v == "true" {
			return "status", "error"
		}
	case "status.code", "otel.status_code", "status":
		switch strings.ToLower(v) {
		case "error", "2", "status_code_error":
			return "status", "error"
		case "ok", "1", "status_code_ok":
			return "status", "ok"
		case "unset", "0", "status_code_unset":
			return "status", "unset"
		}
	}
	if key, ok := strings.CutPrefix(k, "resource."); ok && key != "" {
		return key, v
	}
	if key, ok := strings.CutPrefix(k, "span."); ok && key != "" {
		return key, v
	}
	return k, v
}

// search fans a search out and merges the summaries.
func (a *API) search(ctx context.Context, req *readerpb.SearchRequest) ([]*readerpb.TraceSummary, fanOutResult[*readerpb.SearchResponse], error) {
	res := fanOut(ctx, a, "SearchTraces", func(ctx context.Context, rd readerpb.ReaderClient) (*readerpb.SearchResponse, error) {
		return rd.SearchTraces(ctx, req)
	})
	if err := res.failed(); err != nil {
		return nil, res, &httpError{code: failureStatus(err), err: fmt.Errorf("search: %w", err)}
	}
	return mergeSummaries(res.ok, int(req.GetLimit())), res, nil
}

type tempoTraceMeta struct {
	TraceID           string `json:"traceID"`
	RootServiceName   string `json:"rootServiceName"`
	RootTraceName     string `json:"rootTraceName,omitempty"`
	StartTimeUnixNano string `json:"startTimeUnixNano"`
	DurationMs        uint32 `json:"durationMs"`
}

type tempoSearchMetrics struct {
	InspectedTraces uint32 `json:"inspectedTraces"`
	InspectedBytes  string `json:"inspectedBytes"`
	TotalJobs       uint32 `json:"totalJobs"`
	CompletedJobs   uint32 `json:"completedJobs"`
}

// tempoSearch serves GET /api/search.
func (a *API) tempoSearch(w http.ResponseWriter, r *http.Request) {
	req, err := a.parseTempoSearch(r)
	if err != nil {
		tempoError(w, r, err)
		return
	}
	sums, res, err := a.search(r.Context(), req)
	if err != nil {
		tempoError(w, r, err)
		return
	}
	out := struct {
		Traces  []tempoTraceMeta   `json:"traces"`
		Metrics tempoSearchMetrics `json:"metrics"`
	}{
		Traces: make([]tempoTraceMeta, 0, len(sums)),
		Metrics: tempoSearchMetrics{
			InspectedBytes: "0",
			TotalJobs:      uint32(len(a.readers)),
			CompletedJobs:  uint32(len(res.ok)),
		},
	}
	for _, s := range res.ok {
		out.Metrics.InspectedTraces += uint32(len(s.GetTraces()))
	}
	for _, s := range sums {
		root := s.GetRootServiceName()
		if root == "" {
			// Tempo's wording for a trace whose root span is missing.
			root = "<root span not yet received>"
		}
		out.Traces = append(out.Traces, tempoTraceMeta{
			TraceID:           hex.EncodeToString(s.GetTraceId()),
			RootServiceName:   root,
			RootTraceName:     s.GetRootSpanName(),
			StartTimeUnixNano: strconv.FormatInt(s.GetStartUnixNano(), 10),
			DurationMs:        uint32(min(s.GetDurationNanos()/int64(time.Millisecond), math.MaxUint32)),
		})
	}
	writeJSON(w, r, http.StatusOK, out)
}

// tagNames fans TagNames out and unions the keys by scope.
func (a *API) tagNames(ctx context.Context) (resource, spanKeys []string, err error) {
	res := fanOut(ctx, a, "TagNames", func(ctx context.Context, rd readerpb.ReaderClient) (*readerpb.TagNamesResponse, error) {
		return rd.TagNames(ctx, &readerpb.TagNamesRequest{})
	})
	if err := res.failed(); err != nil {
		return nil, nil, &httpError{code: failureStatus(err), err: fmt.Errorf("tag names: %w", err)}
	}
	var rs, ss [][]string
	for _, an := range res.ok {
		rs = append(rs, an.GetResource())
		ss = append(ss, an.GetSpan())
	}
	return unionLists(rs), unionLists(ss), nil
}

// tempoIntrinsics are the intrinsic fields the TraceQL subset supports, so
// Grafana's editor offers only what works.
var tempoIntrinsics = []string{"duration", "name", "status", "traceDuration"}

// tempoTags serves GET /api/search/tags.
func (a *API) tempoTags(w http.ResponseWriter, r *http.Request) {
	res, sp, err := a.tagNames(r.Context())
	if err != nil {
		tempoError(w, r, err)
		return
	}
	writeJSON(w, r, http.StatusOK, map[string][]string{"tagNames": unionLists([][]string{res, sp})})
}

type tempoScope struct {
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

// tempoTagsV2 serves GET /api/v2/search/tags[?scope=resource|span|intrinsic|none].
func (a *API) tempoTagsV2(w http.ResponseWriter, r *http.Request) {
	scope := r.URL.Query().Get("scope")
	switch scope {
	case "", "all", "none", "resource", "span", "intrinsic":
	default:
		tempoError(w, r, badRequest("invalid scope %q: want resource, span, intrinsic, none or all", truncate(scope)))
		return
	}
	res, sp, err := a.tagNames(r.Context())
	if err != nil {
		tempoError(w, r, err)
		return
	}
	all := []tempoScope{
		{Name: "resource", Tags: nonNil(res)},
		{Name: "span", Tags: nonNil(sp)},
		{Name: "intrinsic", Tags: tempoIntrinsics},
	}
	scopes := make([]tempoScope, 0, len(all))
	for _, s := range all {
		if scope == "" || scope == "all" || scope == s.Name || (scope == "none" && s.Name != "intrinsic") {
			scopes = append(scopes, s)
		}
	}
	writeJSON(w, r, http.StatusOK, map[string]any{"scopes": scopes})
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// tagValues fans TagValues out and unions the values, capped at limit.
func (a *API) tagValues(ctx context.Context, r *http.Request, tag string) ([]string, error) {
	if tag == "" {
		return nil, badRequest("missing tag name")
	}
	limit := a.cfg.MaxTagValues
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, badRequest("invalid limit %q: want a non-negative integer", truncate(v))
		}
		if n > 0 {
			limit = min(n, limit)
		}
	}
	req := &readerpb.TagValuesRequest{Tag: tag, Limit: uint32(limit)}
	res := fanOut(ctx, a, "TagValues", func(ctx context.Context, rd readerpb.ReaderClient) (*readerpb.TagValuesResponse, error) {
		return rd.TagValues(ctx, req)
	})
	if err := res.failed(); err != nil {
		return nil, &httpError{code: failureStatus(err), err: fmt.Errorf("tag values of %q: %w", tag, err)}
	}
	lists := make([][]string, 0, len(res.ok))
	for _, an := range res.ok {
		lists = append(lists, an.GetValues())
	}
	vals := unionLists(lists)
	if len(vals) > limit {
		vals = vals[:limit]
	}
	return nonNil(vals), nil
}

// tempoTagValues serves GET /api/search/tag/{tag}/values.
func (a *API) tempoTagValues(w http.ResponseWriter, r *http.Request) {
	tag, _ := normalizeTempoTag(r.PathValue("tag"), "")
	vals, err := a.tagValues(r.Context(), r, tag)
	if err != nil {
		tempoError(w, r, err)
		return
	}
	writeJSON(w, r, http.StatusOK, map[string][]string{"tagValues": vals})
}

type tempoTagValue struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// tempoTagValuesV2 serves GET /api/v2/search/tag/{tag}/values, where the tag
// is a TraceQL reference: resource.service.name, span.http.method, .foo, name,
// status.
func (a *API) tempoTagValuesV2(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("tag")
	tag, typ := ref, "string"
	switch ref {
	case "status", "span:status":
		tag, typ = "status", "keyword"
	case "name", "span:name":
		tag = "name"
	case "duration", "traceDuration", "span:duration", "trace:duration":
		// Durations have no enumerable values.
		writeJSON(w, r, http.StatusOK, map[string]any{"tagValues": []tempoTagValue{}})
		return
	default:
		if k, ok := attributeKey(ref); ok {
			tag = k
		}
	}
	vals, err := a.tagValues(r.Context(), r, tag)
	if err != nil {
		tempoError(w, r, err)
		return
	}
	out := make([]tempoTagValue, 0, len(vals))
	for _, v := range vals {
		out = append(out, tempoTagValue{Type: typ, Value: v})
	}
	writeJSON(w, r, http.StatusOK, map[string]any{"tagValues": out})
}

// echo serves GET /api/echo, Grafana's Tempo "Save & test".
func (a *API) echo(w http.ResponseWriter, r *http.Request) {
	writeBody(w, r, http.StatusOK, "text/plain; charset=utf-8", []byte("echo"))
}

// buildInfo serves GET /api/status/buildinfo in Tempo's (and Prometheus's) shape.
func (a *API) buildInfo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, r, http.StatusOK, map[string]string{
		"version":   a.cfg.Version,
		"revision":  a.cfg.Revision,
		"branch":    a.cfg.Branch,
		"buildUser": a.cfg.BuildUser,
		"buildDate": a.cfg.BuildDate,
		"goVersion": runtime.Version(),
	})
}
