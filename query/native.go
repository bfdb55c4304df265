package query

// Threadline's native JSON API, used by the UI. The Tempo and Jaeger shapes
// lack what the waterfall needs: why a trace was kept, the per-trace error
// count and services in search results, and spans with typed attributes,
// resource, scope and links in one flat list. Routes:
//   - GET /api/v1/search?service=&operation=&tags=<logfmt>&minDuration=&maxDuration=
//     &start=&end=&limit=&errorsOnly=&keptReason=
//   - GET /api/v1/traces/{id}?raw=

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
)

// knownKeptReasons are the reasons the sampler records; keptReason accepts
// only these so a typo is a 400 instead of an empty result.
var knownKeptReasons = map[string]bool{"error": true, "latency_topn": true, "exemplar": true, "alert": true, "baseline": true}

type nativeSummary struct {
	TraceID           string   `json:"traceID"`
	RootServiceName   string   `json:"rootServiceName"`
	RootTraceName     string   `json:"rootTraceName"`
	StartTimeUnixNano string   `json:"startTimeUnixNano"`
	DurationMs        float64  `json:"durationMs"`
	SpanCount         uint32   `json:"spanCount"`
	ErrorCount        uint32   `json:"errorCount"`
	KeptReasons       []string `json:"keptReasons"`
	Services          []string `json:"services"`
}

type nativeSearchResponse struct {
	Traces []nativeSummary `json:"traces"`
	// Warnings names indexers that failed when others answered.
	Warnings []string `json:"warnings,omitempty"`
}

// parseNativeSearch builds the search request of GET /api/v1/search.
func (a *API) parseNativeSearch(r *http.Request) (*readerpb.SearchRequest, error) {
	qv := r.URL.Query()
	tags, err := parseLogfmtTags(qv.Get("tags"))
	if err != nil {
		return nil, badRequest("invalid tags: %v", err)
	}
	req := &readerpb.SearchRequest{Tags: map[string]string{}}
	for k, v := range tags {
		k, v = normalizeTempoTag(k, v)
		req.Tags[k] = v
	}
	if v := qv.Get("service"); v != "" {
		req.Tags["service.name"] = v
	}
	if v := qv.Get("operation"); v != "" {
		req.Tags["name"] = v
	}
	if v := qv.Get("errorsOnly"); v != "" {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return nil, badRequest("invalid errorsOnly %q: want true or false", truncate(v))
		}
		if on {
			req.Tags["status"] = "error"
		}
	}
	// keptReason may repeat or hold a comma-separated list.
	for _, raw := range qv["keptReason"] {
		for reason := range strings.SplitSeq(raw, ",") {
			reason = strings.TrimSpace(reason)
			if reason == "" {
				continue
			}
			if !knownKeptReasons[reason] {
				return nil, badRequest("invalid keptReason %q: want error, latency_topn, exemplar, alert or baseline", truncate(reason))
			}
			req.KeptReasons = append(req.KeptReasons, reason)
		}
	}
	req.KeptReasons = unionSorted(req.KeptReasons)
	if req.MinDurationNanos, err = parseDurationParam(r, "minDuration"); err != nil {
		return nil, err
	}
	if req.MaxDurationNanos, err = parseDurationParam(r, "maxDuration"); err != nil {
		return nil, err
	}
	if req.MinDurationNanos != 0 && req.MaxDurationNanos != 0 && req.MinDurationNanos > req.MaxDurationNanos {
		return nil, badRequest("invalid durations: minDuration is greater than maxDuration")
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

// nativeSearch serves GET /api/v1/search.
func (a *API) nativeSearch(w http.ResponseWriter, r *http.Request) {
	req, err := a.parseNativeSearch(r)
	if err != nil {
		nativeError(w, r, err)
		return
	}
	sums, res, err := a.search(r.Context(), req)
	if err != nil {
		nativeError(w, r, err)
		return
	}
	out := nativeSearchResponse{Traces: make([]nativeSummary, 0, len(sums))}
	if res.partial() {
		out.Warnings = []string{"partial result: " + res.partialMessage()}
	}
	for _, s := range sums {
		out.Traces = append(out.Traces, nativeSummary{
			TraceID:           hex.EncodeToString(s.GetTraceId()),
			RootServiceName:   s.GetRootServiceName(),
			RootTraceName:     s.GetRootSpanName(),
			StartTimeUnixNano: strconv.FormatInt(s.GetStartUnixNano(), 10),
			DurationMs:        float64(s.GetDurationNanos()) / float64(time.Millisecond),
			SpanCount:         s.GetSpanCount(),
			ErrorCount:        s.GetErrorCount(),
			KeptReasons:       nonNil(s.GetKeptReasons()),
			Services:          nonNil(s.GetServices()),
		})
	}
	writeJSON(w, r, http.StatusOK, out)
}

// nativeError answers err as {"error": "..."} with its status.
func nativeError(w http.ResponseWriter, r *http.Request, err error) {
	writeJSON(w, r, statusOf(err), struct {
		Error string `json:"error"`
	}{err.Error()})
}

type nativeTrace struct {
	TraceID     string       `json:"traceID"`
	KeptReasons []string     `json:"keptReasons"`
	Warnings    []string     `json:"warnings"`
	Raw         bool         `json:"raw"`
	Spans       []nativeSpan `json:"spans"`
}

type nativeSpan struct {
	SpanID            string         `json:"spanID"`
	ParentSpanID      string         `json:"parentSpanID"`
	Name              string         `json:"name"`
	Kind              string         `json:"kind"`
	StartTimeUnixNano string         `json:"startTimeUnixNano"`
	EndTimeUnixNano   string         `json:"endTimeUnixNano"`
	Service           string         `json:"service"`
	Resource          map[string]any `json:"resource"`
	Attributes        map[string]any `json:"attributes"`
	Events            []nativeEvent  `json:"events"`
	Links             []nativeLink   `json:"links"`
	Status            nativeStatus   `json:"status"`
	Scope             nativeScope    `json:"scope"`
	TraceState        string         `json:"traceState,omitempty"`
}

type nativeEvent struct {
	Name         string         `json:"name"`
	TimeUnixNano string         `json:"timeUnixNano"`
	Attributes   map[string]any `json:"attributes"`
}

type nativeLink struct {
	TraceID    string         `json:"traceID"`
	SpanID     string         `json:"spanID"`
	Attributes map[string]any `json:"attributes"`
}

type nativeStatus struct {
	// Code is "unset", "ok" or "error".
	Code    string `json:"code"`
	Message string `json:"message"`
}

type nativeScope struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// nativeTraceByID serves GET /api/v1/traces/{id}?raw=. raw=true asks the
// indexers for the spans as received, before clock-skew repair.
func (a *API) nativeTraceByID(w http.ResponseWriter, r *http.Request) {
	id, start, end, err := traceRequest(r)
	if err != nil {
		nativeError(w, r, err)
		return
	}
	raw := false
	if v := r.URL.Query().Get("raw"); v != "" {
		if raw, err = strconv.ParseBool(v); err != nil {
			nativeError(w, r, badRequest("invalid raw %q: want true or false", truncate(v)))
			return
		}
	}
	ft, err := a.fetchTraceRaw(r.Context(), id, start, end, raw)
	if err != nil {
		nativeError(w, r, err)
		return
	}
	out := nativeTrace{
		TraceID:     id.String(),
		KeptReasons: nonNil(ft.reasons),
		Warnings:    nonNil(ft.warnings),
		Raw:         raw,
		Spans:       make([]nativeSpan, 0, len(ft.spans)),
	}
	if ft.partial != "" {
		out.Warnings = append(out.Warnings, "partial result: "+ft.partial)
	}
	// Resources are shared by pointer after merging; convert each once.
	resources := map[*span.Resource]map[string]any{}
	for _, s := range ft.spans {
		res, ok := resources[s.Resource]
		if !ok {
			if s.Resource != nil {
				res = attrMap(s.Resource.Resource.GetAttributes())
			} else {
				res = map[string]any{}
			}
			resources[s.Resource] = res
		}
		out.Spans = append(out.Spans, nativeSpanOf(s, res))
	}
	writeJSON(w, r, http.StatusOK, out)
}

// fetchTraceRaw is fetchTrace with the raw flag passed to the indexers.
func (a *API) fetchTraceRaw(ctx context.Context, id span.TraceID, startNano, endNano int64, raw bool) (fetchedTrace, error) {
	return a.fetchTraceReq(ctx, id, &readerpb.GetTraceRequest{TraceId: id[:], StartUnixNano: startNano, EndUnixNano: endNano, Raw: raw})
}

var nativeKinds = map[tracepb.Span_SpanKind]string{
	tracepb.Span_SPAN_KIND_UNSPECIFIED: "unspecified",
	tracepb.Span_SPAN_KIND_INTERNAL:    "internal",
	tracepb.Span_SPAN_KIND_SERVER:      "server",
	tracepb.Span_SPAN_KIND_CLIENT:      "client",
	tracepb.Span_SPAN_KIND_PRODUCER:    "producer",
	tracepb.Span_SPAN_KIND_CONSUMER:    "consumer",
}

func nativeSpanOf(s span.Span, resource map[string]any) nativeSpan {
	ns := nativeSpan{
		SpanID:            hex.EncodeToString(s.GetSpanId()),
		ParentSpanID:      hex.EncodeToString(s.GetParentSpanId()),
		Name:              s.GetName(),
		Kind:              nativeKinds[s.GetKind()],
		StartTimeUnixNano: strconv.FormatUint(s.GetStartTimeUnixNano(), 10),
		EndTimeUnixNano:   strconv.FormatUint(s.GetEndTimeUnixNano(), 10),
		Service:           s.ServiceName(),
		Resource:          resource,
		Attributes:        attrMap(s.GetAttributes()),
		Events:            make([]nativeEvent, 0, len(s.GetEvents())),
		Links:             make([]nativeLink, 0, len(s.GetLinks())),
		Status:            nativeStatus{Code: "unset", Message: s.GetStatus().GetMessage()},
		TraceState:        s.GetTraceState(),
	}
	if ns.Kind == "" {
		ns.Kind = "unspecified"
	}
	switch s.GetStatus().GetCode() {
	case tracepb.Status_STATUS_CODE_ERROR:
		ns.Status.Code = "error"
	case tracepb.Status_STATUS_CODE_OK:
		ns.Status.Code = "ok"
	}
	if sc := s.Scope; sc != nil && sc.Scope != nil {
		ns.Scope = nativeScope{Name: sc.Scope.GetName(), Version: sc.Scope.GetVersion()}
	}
	for _, ev := range s.GetEvents() {
		ns.Events = append(ns.Events, nativeEvent{
			Name:         ev.GetName(),
			TimeUnixNano: strconv.FormatUint(ev.GetTimeUnixNano(), 10),
			Attributes:   attrMap(ev.GetAttributes()),
		})
	}
	for _, l := range s.GetLinks() {
		ns.Links = append(ns.Links, nativeLink{
			TraceID:    hex.EncodeToString(l.GetTraceId()),
			SpanID:     hex.EncodeToString(l.GetSpanId()),
			Attributes: attrMap(l.GetAttributes()),
		})
	}
	return ns
}

// attrMap converts OTLP attributes to a JSON object. A later duplicate key
// wins, as in the OTel SDKs.
func attrMap(kvs []*commonpb.KeyValue) map[string]any {
	out := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		out[kv.GetKey()] = anyValueJSON(kv.GetValue())
	}
	return out
}

// maxSafeJSONInt is the largest integer a JavaScript number holds exactly
// (2^53-1); larger ones are sent as strings so the UI does not round them.
const maxSafeJSONInt = 1<<53 - 1

// anyValueJSON converts an OTLP value to its natural JSON value: strings,
// booleans, numbers, arrays and objects; bytes as base64; NaN and infinities
// (which JSON cannot hold) and integers beyond 2^53 as strings.
func anyValueJSON(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_IntValue:
		if x.IntValue > maxSafeJSONInt || x.IntValue < -maxSafeJSONInt {
			return strconv.FormatInt(x.IntValue, 10)
		}
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		if math.IsNaN(x.DoubleValue) || math.IsInf(x.DoubleValue, 0) {
			return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
		}
		return x.DoubleValue
	case *commonpb.AnyValue_BytesValue:
		return base64.StdEncoding.EncodeToString(x.BytesValue)
	case *commonpb.AnyValue_ArrayValue:
		out := make([]any, 0, len(x.ArrayValue.GetValues()))
		for _, e := range x.ArrayValue.GetValues() {
			out = append(out, anyValueJSON(e))
		}
		return out
	case *commonpb.AnyValue_KvlistValue:
		return attrMap(x.KvlistValue.GetValues())
	}
	return nil
}
