package query

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"

	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
)

// jaegerResponse is the envelope of every Jaeger query API answer.
type jaegerResponse struct {
	Data   any           `json:"data"`
	Total  int           `json:"total"`
	Limit  int           `json:"limit"`
	Offset int           `json:"offset"`
	Errors []jaegerError `json:"errors"`
}

type jaegerError struct {
	Code    int    `json:"code,omitempty"`
	Msg     string `json:"msg"`
	TraceID string `json:"traceID,omitempty"`
}

func jaegerFail(w http.ResponseWriter, r *http.Request, err error) {
	code := statusOf(err)
	writeJSON(w, r, code, jaegerResponse{Errors: []jaegerError{{Code: code, Msg: err.Error()}}})
}

// partialErrors reports indexers that failed while others answered, in the
// errors field Jaeger clients already display.
func partialErrors[T any](res fanOutResult[T]) []jaegerError {
	if !res.partial() {
		return nil
	}
	return []jaegerError{{Code: http.StatusBadGateway, Msg: "partial result: " + res.partialMessage()}}
}

// jaegerServices serves GET /api/services, also Grafana's Jaeger "Save & test".
func (a *API) jaegerServices(w http.ResponseWriter, r *http.Request) {
	res := fanOut(r.Context(), a, "Services", func(ctx context.Context, rd readerpb.ReaderClient) (*readerpb.ServicesResponse, error) {
		return rd.Services(ctx, &readerpb.ServicesRequest{})
	})
	if err := res.failed(); err != nil {
		jaegerFail(w, r, &httpError{code: failureStatus(err), err: fmt.Errorf("services: %w", err)})
		return
	}
	lists := make([][]string, 0, len(res.ok))
	for _, an := range res.ok {
		lists = append(lists, an.GetServices())
	}
	svcs := nonNil(unionLists(lists))
	writeJSON(w, r, http.StatusOK, jaegerResponse{Data: svcs, Total: len(svcs), Errors: partialErrors(res)})
}

// operations fans Operations out and unions by (name, kind).
func (a *API) operations(ctx context.Context, service string) ([]*readerpb.Operation, fanOutResult[*readerpb.OperationsResponse], error) {
	req := &readerpb.OperationsRequest{Service: service}
	res := fanOut(ctx, a, "Operations", func(ctx context.Context, rd readerpb.ReaderClient) (*readerpb.OperationsResponse, error) {
		return rd.Operations(ctx, req)
	})
	if err := res.failed(); err != nil {
		return nil, res, &httpError{code: failureStatus(err), err: fmt.Errorf("operations: %w", err)}
	}
	type key struct{ name, kind string }
	seen := map[key]bool{}
	var ops []*readerpb.Operation
	for _, an := range res.ok {
		for _, op := range an.GetOperations() {
			k := key{op.GetName(), op.GetSpanKind()}
			if seen[k] {
				continue
			}
			seen[k] = true
			ops = append(ops, op)
		}
	}
	slices.SortFunc(ops, func(x, y *readerpb.Operation) int {
		if c := strings.Compare(x.GetName(), y.GetName()); c != 0 {
			return c
		}
		return strings.Compare(x.GetSpanKind(), y.GetSpanKind())
	})
	return ops, res, nil
}

// jaegerServiceOperations serves GET /api/services/{service}/operations: the
// distinct span names of one service.
func (a *API) jaegerServiceOperations(w http.ResponseWriter, r *http.Request) {
	ops, res, err := a.operations(r.Context(), r.PathValue("service"))
	if err != nil {
		jaegerFail(w, r, err)
		return
	}
	names := make([]string, 0, len(ops))
	for _, op := range ops {
		names = append(names, op.GetName())
	}
	names = slices.Compact(names)
	writeJSON(w, r, http.StatusOK, jaegerResponse{Data: names, Total: len(names), Errors: partialErrors(res)})
}

type jaegerOperation struct {
	Name     string `json:"name"`
	SpanKind string `json:"spanKind"`
}

// jaegerOperations serves GET /api/operations?service=S[&spanKind=K].
func (a *API) jaegerOperations(w http.ResponseWriter, r *http.Request) {
	service := r.URL.Query().Get("service")
	if service == "" {
		jaegerFail(w, r, badRequest("parameter 'service' is required"))
		return
	}
	kind := r.URL.Query().Get("spanKind")
	ops, res, err := a.operations(r.Context(), service)
	if err != nil {
		jaegerFail(w, r, err)
		return
	}
	out := make([]jaegerOperation, 0, len(ops))
	for _, op := range ops {
		k := op.GetSpanKind()
		if k == "unspecified" {
			k = ""
		}
		if kind != "" && kind != k {
			continue
		}
		out = append(out, jaegerOperation{Name: op.GetName(), SpanKind: k})
	}
	writeJSON(w, r, http.StatusOK, jaegerResponse{Data: out, Total: len(out), Errors: partialErrors(res)})
}

// jaegerTrace serves GET /api/traces/{id} for JSON clients.
func (a *API) jaegerTrace(w http.ResponseWriter, r *http.Request) {
	id, start, end, err := traceRequest(r)
	if err != nil {
		jaegerFail(w, r, err)
		return
	}
	ft, err := a.fetchTraceAsAsked(r, id, start, end)
	if err != nil {
		jaegerFail(w, r, err)
		return
	}
	resp := jaegerResponse{Data: []jaegerTraceJSON{toJaeger(id, ft.mergedTrace)}, Total: 1}
	if ft.partial != "" {
		resp.Errors = []jaegerError{{Code: http.StatusBadGateway, Msg: "partial result: " + ft.partial, TraceID: id.String()}}
	}
	writeJSON(w, r, http.StatusOK, resp)
}

// parseJaegerSearch builds the search request of GET /api/traces.
func (a *API) parseJaegerSearch(r *http.Request) (*readerpb.SearchRequest, error) {
	qv := r.URL.Query()
	service := qv.Get("service")
	if service == "" {
		return nil, badRequest("parameter 'service' is required")
	}
	// Jaeger semantics: service, operation, tags and duration all describe
	// one span.
	req := &readerpb.SearchRequest{Tags: map[string]string{"service.name": service}, SameSpan: true}
	if op := qv.Get("operation"); op != "" {
		req.Tags["name"] = op
	}
	for _, raw := range qv["tags"] {
		if err := addJaegerTags(req.Tags, raw); err != nil {
			return nil, err
		}
	}
	// The legacy repeated form: tag=key:value.
	for _, kv := range qv["tag"] {
		k, v, ok := strings.Cut(kv, ":")
		if !ok || k == "" {
			return nil, badRequest("malformed 'tag' parameter %q: expected key:value", truncate(kv))
		}
		setJaegerTag(req.Tags, k, v)
	}
	var err error
	if req.SpanMinDurationNanos, err = parseDurationParam(r, "minDuration"); err != nil {
		return nil, err
	}
	if req.SpanMaxDurationNanos, err = parseDurationParam(r, "maxDuration"); err != nil {
		return nil, err
	}
	if req.SpanMaxDurationNanos != 0 && req.SpanMinDurationNanos > req.SpanMaxDurationNanos {
		return nil, badRequest("'maxDuration' should be greater than 'minDuration'")
	}
	if req.StartUnixNano, req.EndUnixNano, err = a.jaegerTimeRange(r); err != nil {
		return nil, err
	}
	limit, err := a.parseLimit(r, a.cfg.JaegerDefaultLimit)
	if err != nil {
		return nil, err
	}
	req.Limit = uint32(limit)
	return req, nil
}

// addJaegerTags parses a tags parameter: a JSON object as Grafana and the
// Jaeger UI send it, or the logfmt form some clients use.
func addJaegerTags(tags map[string]string, raw string) error {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil
	}
	if !strings.HasPrefix(raw, "{") {
		kv, err := parseLogfmtTags(raw)
		if err != nil {
			return badRequest("malformed 'tags' parameter: %v", err)
		}
		for k, v := range kv {
			setJaegerTag(tags, k, v)
		}
		return nil
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(raw), &obj); err != nil {
		return badRequest("malformed 'tags' parameter, expected a JSON object: %v", err)
	}
	for k, v := range obj {
		switch t := v.(type) {
		case string:
			setJaegerTag(tags, k, t)
		case bool:
			setJaegerTag(tags, k, strconv.FormatBool(t))
		case float64:
			setJaegerTag(tags, k, strconv.FormatFloat(t, 'f', -1, 64))
		default:
			return badRequest("malformed 'tags' parameter: value of %q must be a string, number or boolean", truncate(k))
		}
	}
	return nil
}

// setJaegerTag maps the tags Jaeger derives from OTLP back onto the index's
// keys: error=true and otel.status_code are the span status.
func setJaegerTag(tags map[string]string, k, v string) {
	k, v = normalizeTempoTag(k, v)
	tags[k] = v
}

// jaegerTimeRange reads start/end in microseconds. Without start, the window
// is lookback (a Go duration; "custom" means start was given) before end,
// defaulting to one hour as the Jaeger UI does.
func (a *API) jaegerTimeRange(r *http.Request) (int64, int64, error) {
	qv := r.URL.Query()
	micros := func(name string) (int64, bool, error) {
		v := qv.Get(name)
		if v == "" {
			return 0, false, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 || n > math.MaxInt64/1000 {
			return 0, false, badRequest("invalid '%s' %q: want unix microseconds", name, truncate(v))
		}
		return n * 1000, true, nil
	}
	end, haveEnd, err := micros("end")
	if err != nil {
		return 0, 0, err
	}
	if !haveEnd {
		end = a.now().UnixNano()
	}
	start, haveStart, err := micros("start")
	if err != nil {
		return 0, 0, err
	}
	if !haveStart {
		lookback := time.Hour
		if lb := qv.Get("lookback"); lb != "" && lb != "custom" {
			d, err := time.ParseDuration(lb)
			if err != nil || d <= 0 {
				return 0, 0, badRequest("invalid 'lookback' %q: want a duration such as 1h", truncate(lb))
			}
			lookback = d
		}
		start = max(end-lookback.Nanoseconds(), 0)
	}
	if start > end {
		return 0, 0, badRequest("invalid range: 'start' is after 'end'")
	}
	return start, end, nil
}

// jaegerSearch serves GET /api/traces: a search whose results are full traces.
func (a *API) jaegerSearch(w http.ResponseWriter, r *http.Request) {
	// Jaeger also accepts explicit IDs: /api/traces?traceID=a&traceID=b.
	if ids := r.URL.Query()["traceID"]; len(ids) > 0 {
		a.jaegerTracesByID(w, r, ids)
		return
	}
	req, err := a.parseJaegerSearch(r)
	if err != nil {
		jaegerFail(w, r, err)
		return
	}
	sums, res, err := a.search(r.Context(), req)
	if err != nil {
		jaegerFail(w, r, err)
		return
	}
	ids := make([]span.TraceID, 0, len(sums))
	for _, s := range sums {
		var id span.TraceID
		copy(id[:], s.GetTraceId())
		ids = append(ids, id)
	}
	traces, errs := a.fetchTraces(r.Context(), ids, req.GetStartUnixNano(), req.GetEndUnixNano())
	data := make([]jaegerTraceJSON, 0, len(traces))
	for i, t := range traces {
		if t != nil {
			data = append(data, toJaeger(ids[i], t.mergedTrace))
		}
	}
	resp := jaegerResponse{Data: data, Total: len(data), Errors: append(partialErrors(res), errs...)}
	writeJSON(w, r, http.StatusOK, resp)
}

func (a *API) jaegerTracesByID(w http.ResponseWriter, r *http.Request, raw []string) {
	var ids []span.TraceID
	for _, s := range raw {
		id, err := span.ParseTraceID(s)
		if err != nil {
			jaegerFail(w, r, badRequest("invalid traceID: %v", err))
			return
		}
		ids = append(ids, id)
	}
	if len(ids) > a.cfg.MaxSearchLimit {
		jaegerFail(w, r, badRequest("too many traceID parameters: %d, at most %d", len(ids), a.cfg.MaxSearchLimit))
		return
	}
	traces, errs := a.fetchTraces(r.Context(), ids, 0, 0)
	data := make([]jaegerTraceJSON, 0, len(traces))
	for i, t := range traces {
		if t != nil {
			data = append(data, toJaeger(ids[i], t.mergedTrace))
		}
	}
	writeJSON(w, r, http.StatusOK, jaegerResponse{Data: data, Total: len(data), Errors: errs})
}

// fetchTraces gets several traces, at most TraceFetchConcurrency at once. A
// trace that cannot be fetched is nil in the result and reported as an error
// naming it; a trace that vanished since the search (retention) is silently
// left out.
func (a *API) fetchTraces(ctx context.Context, ids []span.TraceID, startNano, endNano int64) ([]*fetchedTrace, []jaegerError) {
	out := make([]*fetchedTrace, len(ids))
	errs := make([]error, len(ids))
	sem := make(chan struct{}, a.cfg.TraceFetchConcurrency)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ft, err := a.fetchTrace(ctx, id, startNano, endNano)
			if err != nil {
				if statusOf(err) != http.StatusNotFound {
					errs[i] = err
				}
				return
			}
			if ft.partial != "" {
				errs[i] = errors.New("partial result: " + ft.partial)
			}
			out[i] = &ft
		})
	}
	wg.Wait()
	var jerrs []jaegerError
	for i, err := range errs {
		if err != nil {
			jerrs = append(jerrs, jaegerError{Code: statusOf(err), Msg: err.Error(), TraceID: ids[i].String()})
		}
	}
	return out, jerrs
}

type jaegerDependency struct {
	Parent    string `json:"parent"`
	Child     string `json:"child"`
	CallCount uint64 `json:"callCount"`
}

// jaegerDependencies serves GET /api/dependencies?endTs=<ms>&lookback=<ms>:
// parent→child service calls counted over the traces of the window, bounded
// by DependenciesMaxTraces (the newest ones).
func (a *API) jaegerDependencies(w http.ResponseWriter, r *http.Request) {
	qv := r.URL.Query()
	endMs := a.now().UnixMilli()
	if v := qv.Get("endTs"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 || n > math.MaxInt64/int64(time.Millisecond) {
			jaegerFail(w, r, badRequest("invalid 'endTs' %q: want unix milliseconds", truncate(v)))
			return
		}
		endMs = n
	}
	lookbackMs := int64(24 * time.Hour / time.Millisecond)
	if v := qv.Get("lookback"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			jaegerFail(w, r, badRequest("invalid 'lookback' %q: want a positive number of milliseconds", truncate(v)))
			return
		}
		lookbackMs = n
	}
	end := endMs * int64(time.Millisecond)
	start := max(end-min(lookbackMs, end/int64(time.Millisecond))*int64(time.Millisecond), 0)
	req := &readerpb.SearchRequest{StartUnixNano: start, EndUnixNano: end, Limit: uint32(a.cfg.DependenciesMaxTraces)}
	sums, res, err := a.search(r.Context(), req)
	if err != nil {
		jaegerFail(w, r, err)
		return
	}
	ids := make([]span.TraceID, 0, len(sums))
	for _, s := range sums {
		var id span.TraceID
		copy(id[:], s.GetTraceId())
		ids = append(ids, id)
	}
	traces, errs := a.fetchTraces(r.Context(), ids, start, end)
	type edge struct{ parent, child string }
	counts := map[edge]uint64{}
	for _, t := range traces {
		if t == nil {
			continue
		}
		svcOf := make(map[span.SpanID]string, len(t.spans))
		for _, s := range t.spans {
			var id span.SpanID
			copy(id[:], s.GetSpanId())
			svcOf[id] = s.ServiceName()
		}
		for _, s := range t.spans {
			if len(s.GetParentSpanId()) != 8 {
				continue
			}
			var pid span.SpanID
			copy(pid[:], s.GetParentSpanId())
			parent, ok := svcOf[pid]
			child := s.ServiceName()
			if ok && parent != child && parent != "" && child != "" {
				counts[edge{parent, child}]++
			}
		}
	}
	deps := make([]jaegerDependency, 0, len(counts))
	for e, n := range counts {
		deps = append(deps, jaegerDependency{Parent: e.parent, Child: e.child, CallCount: n})
	}
	slices.SortFunc(deps, func(x, y jaegerDependency) int {
		if c := strings.Compare(x.Parent, y.Parent); c != 0 {
			return c
		}
		return strings.Compare(x.Child, y.Child)
	})
	writeJSON(w, r, http.StatusOK, jaegerResponse{Data: deps, Total: len(deps), Errors: append(partialErrors(res), errs...)})
}

// Jaeger JSON model (jaeger-query's api/v1 "UI model").
type jaegerTraceJSON struct {
	TraceID   string                   `json:"traceID"`
	Spans     []jaegerSpan             `json:"spans"`
	Processes map[string]jaegerProcess `json:"processes"`
	Warnings  []string                 `json:"warnings"`
}

type jaegerSpan struct {
	TraceID       string            `json:"traceID"`
	SpanID        string            `json:"spanID"`
	Flags         uint32            `json:"flags"`
	OperationName string            `json:"operationName"`
	References    []jaegerReference `json:"references"`
	StartTime     uint64            `json:"startTime"`
	Duration      uint64            `json:"duration"`
	Tags          []jaegerKV        `json:"tags"`
	Logs          []jaegerLog       `json:"logs"`
	ProcessID     string            `json:"processID"`
	Warnings      []string          `json:"warnings"`
}

type jaegerReference struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

type jaegerKV struct {
	Key   string `json:"key"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

type jaegerLog struct {
	Timestamp uint64     `json:"timestamp"`
	Fields    []jaegerKV `json:"fields"`
}

type jaegerProcess struct {
	ServiceName string     `json:"serviceName"`
	Tags        []jaegerKV `json:"tags"`
}

// toJaeger converts a merged trace into Jaeger's JSON model, the way Jaeger's
// own OTLP translator does: kind → span.kind, status → otel.status_code and
// error=true, events → logs, parent → CHILD_OF, links → FOLLOWS_FROM,
// resource → process, scope → otel.library.name/version.
func toJaeger(id span.TraceID, t mergedTrace) jaegerTraceJSON {
	out := jaegerTraceJSON{
		TraceID:   id.String(),
		Spans:     make([]jaegerSpan, 0, len(t.spans)),
		Processes: map[string]jaegerProcess{},
		Warnings:  t.warnings,
	}
	procIDs := map[*span.Resource]string{}
	for _, s := range t.spans {
		pid, ok := procIDs[s.Resource]
		if !ok {
			pid = "p" + strconv.Itoa(len(procIDs)+1)
			procIDs[s.Resource] = pid
			out.Processes[pid] = jaegerProcessOf(s.Resource)
		}
		out.Spans = append(out.Spans, jaegerSpanOf(s, pid))
	}
	return out
}

func jaegerProcessOf(r *span.Resource) jaegerProcess {
	p := jaegerProcess{ServiceName: "unknown_service", Tags: []jaegerKV{}}
	if r == nil || r.Resource == nil {
		return p
	}
	for _, kv := range r.Resource.GetAttributes() {
		if kv.GetKey() == "service.name" {
			if s := kv.GetValue().GetStringValue(); s != "" {
				p.ServiceName = s
			}
			continue
		}
		p.Tags = append(p.Tags, jaegerKVOf(kv.GetKey(), kv.GetValue()))
	}
	return p
}

var jaegerKinds = map[tracepb.Span_SpanKind]string{
	tracepb.Span_SPAN_KIND_INTERNAL: "internal",
	tracepb.Span_SPAN_KIND_SERVER:   "server",
	tracepb.Span_SPAN_KIND_CLIENT:   "client",
	tracepb.Span_SPAN_KIND_PRODUCER: "producer",
	tracepb.Span_SPAN_KIND_CONSUMER: "consumer",
}

func jaegerSpanOf(s span.Span, pid string) jaegerSpan {
	js := jaegerSpan{
		TraceID:       hex.EncodeToString(s.GetTraceId()),
		SpanID:        hex.EncodeToString(s.GetSpanId()),
		Flags:         s.GetFlags() & 0xff,
		OperationName: s.GetName(),
		References:    []jaegerReference{},
		StartTime:     s.GetStartTimeUnixNano() / 1000,
		Tags:          make([]jaegerKV, 0, len(s.GetAttributes())+4),
		Logs:          make([]jaegerLog, 0, len(s.GetEvents())),
		ProcessID:     pid,
	}
	if end, start := s.GetEndTimeUnixNano(), s.GetStartTimeUnixNano(); end > start {
		js.Duration = (end - start) / 1000
	}
	if len(s.GetParentSpanId()) == 8 {
		js.References = append(js.References, jaegerReference{
			RefType: "CHILD_OF", TraceID: js.TraceID, SpanID: hex.EncodeToString(s.GetParentSpanId()),
		})
	}
	for _, l := range s.GetLinks() {
		js.References = append(js.References, jaegerReference{
			RefType: "FOLLOWS_FROM", TraceID: hex.EncodeToString(l.GetTraceId()), SpanID: hex.EncodeToString(l.GetSpanId()),
		})
	}
	for _, kv := range s.GetAttributes() {
		js.Tags = append(js.Tags, jaegerKVOf(kv.GetKey(), kv.GetValue()))
	}
	if sc := s.Scope; sc != nil && sc.Scope != nil {
		if n := sc.Scope.GetName(); n != "" {
			js.Tags = append(js.Tags, jaegerKV{Key: "otel.library.name", Type: "string", Value: n})
		}
		if v := sc.Scope.GetVersion(); v != "" {
			js.Tags = append(js.Tags, jaegerKV{Key: "otel.library.version", Type: "string", Value: v})
		}
	}
	if k, ok := jaegerKinds[s.GetKind()]; ok {
		js.Tags = append(js.Tags, jaegerKV{Key: "span.kind", Type: "string", Value: k})
	}
	switch s.GetStatus().GetCode() {
	case tracepb.Status_STATUS_CODE_ERROR:
		js.Tags = append(js.Tags,
			jaegerKV{Key: "otel.status_code", Type: "string", Value: "ERROR"},
			jaegerKV{Key: "error", Type: "bool", Value: true})
	case tracepb.Status_STATUS_CODE_OK:
		js.Tags = append(js.Tags, jaegerKV{Key: "otel.status_code", Type: "string", Value: "OK"})
	}
	if msg := s.GetStatus().GetMessage(); msg != "" {
		js.Tags = append(js.Tags, jaegerKV{Key: "otel.status_description", Type: "string", Value: msg})
	}
	if ts := s.GetTraceState(); ts != "" {
		js.Tags = append(js.Tags, jaegerKV{Key: "w3c.tracestate", Type: "string", Value: ts})
	}
	for _, ev := range s.GetEvents() {
		l := jaegerLog{Timestamp: ev.GetTimeUnixNano() / 1000, Fields: make([]jaegerKV, 0, len(ev.GetAttributes())+1)}
		if ev.GetName() != "" {
			l.Fields = append(l.Fields, jaegerKV{Key: "event", Type: "string", Value: ev.GetName()})
		}
		for _, kv := range ev.GetAttributes() {
			l.Fields = append(l.Fields, jaegerKVOf(kv.GetKey(), kv.GetValue()))
		}
		js.Logs = append(js.Logs, l)
	}
	return js
}

// jaegerKVOf converts an OTLP attribute to a Jaeger tag. Arrays and maps have
// no Jaeger type and become their OTLP JSON text, as in Jaeger's translator.
func jaegerKVOf(key string, v *commonpb.AnyValue) jaegerKV {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return jaegerKV{Key: key, Type: "string", Value: x.StringValue}
	case *commonpb.AnyValue_BoolValue:
		return jaegerKV{Key: key, Type: "bool", Value: x.BoolValue}
	case *commonpb.AnyValue_IntValue:
		return jaegerKV{Key: key, Type: "int64", Value: x.IntValue}
	case *commonpb.AnyValue_DoubleValue:
		if math.IsNaN(x.DoubleValue) || math.IsInf(x.DoubleValue, 0) {
			// JSON has no NaN or infinity.
			return jaegerKV{Key: key, Type: "string", Value: strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)}
		}
		return jaegerKV{Key: key, Type: "float64", Value: x.DoubleValue}
	case *commonpb.AnyValue_BytesValue:
		return jaegerKV{Key: key, Type: "binary", Value: base64.StdEncoding.EncodeToString(x.BytesValue)}
	case *commonpb.AnyValue_ArrayValue:
		b, _ := protojson.Marshal(x.ArrayValue)
		return jaegerKV{Key: key, Type: "string", Value: string(b)}
	case *commonpb.AnyValue_KvlistValue:
		b, _ := protojson.Marshal(x.KvlistValue)
		return jaegerKV{Key: key, Type: "string", Value: string(b)}
	}
	return jaegerKV{Key: key, Type: "string", Value: ""}
}
