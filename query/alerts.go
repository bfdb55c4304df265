package query

// Alert routes (the UI, Alertmanager) over the alert event store of package
// alerting, and the adapters the ruler needs from this package:
//   - POST /api/v1/alertmanager                 Alertmanager webhook (version 4)
//   - GET  /api/v1/alerts?start=&end=           alert events with their trace IDs
//   - GET  /api/v1/alerts/{id}/traces           the linked traces as summaries
//
// start/end are unix seconds or RFC 3339 (default: the last 24 hours).
// Without WithAlerts these routes answer 503.
//
// (*API).TraceLinker and (*API).REDSource give the ruler (alerting.Engine)
// the fan-out trace search and the RED metrics merged across indexers.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/threadline/threadline/alerting"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
)

const (
	// maxWebhookBytes bounds an Alertmanager payload; a notification of a
	// large group is tens of KiB.
	maxWebhookBytes   = 1 << 20
	defaultAlertRange = 24 * time.Hour
	// explainScanFactor: searches answer newest first, so the slowest of a
	// range are found among a larger sample.
	explainScanFactor = 5
)

// alertsState is what WithAlerts adds to the API.
type alertsState struct {
	store    *alerting.Store
	receiver *alerting.Receiver
}

// WithAlerts serves the alert routes over store, and receives Alertmanager
// webhooks into it, linking each alert to traces with this API's fan-out
// search. reg (may be nil) gets the receiver's metrics.
func WithAlerts(store *alerting.Store, reg prometheus.Registerer) Option {
	return func(a *API) {
		recv, err := alerting.NewReceiver(a.TraceLinker(), store, a.logger, reg, func() time.Time { return a.now() })
		if err != nil {
			// Only a duplicate metric registration fails here; serve
			// without the metrics rather than without alerts.
			a.logger.Warn("alert receiver metrics not registered", "err", err)
			recv, _ = alerting.NewReceiver(a.TraceLinker(), store, a.logger, nil, func() time.Time { return a.now() })
		}
		a.alerts = &alertsState{store: store, receiver: recv}
	}
}

var errAlertsDisabled = &httpError{code: http.StatusServiceUnavailable,
	err: errors.New("alerting is not enabled on this query service (start it with --alert-data-dir)")}

type alertJSON struct {
	ID             string                 `json:"id"`
	Name           string                 `json:"name"`
	State          string                 `json:"state"`
	T              int64                  `json:"t"`
	ActiveSince    int64                  `json:"activeSince,omitempty"`
	Value          *float64               `json:"value"`
	Labels         map[string]string      `json:"labels"`
	Annotations    map[string]string      `json:"annotations,omitempty"`
	TraceIDs       []string               `json:"traceIDs"`
	LinkNote       string                 `json:"linkNote,omitempty"`
	Suppressed     bool                   `json:"suppressed"`
	SuppressReason string                 `json:"suppressReason,omitempty"`
	Flapping       bool                   `json:"flapping,omitempty"`
	GroupID        string                 `json:"groupID,omitempty"`
	Summary        *alerting.GroupSummary `json:"summary,omitempty"`
	Source         string                 `json:"source"`
	Group          string                 `json:"group,omitempty"`
	Expr           string                 `json:"expr,omitempty"`
	GeneratorURL   string                 `json:"generatorURL,omitempty"`
}

func alertOf(ev alerting.Event) alertJSON {
	out := alertJSON{
		ID: ev.ID, Name: ev.Name, State: string(ev.State), T: ev.Time.Unix(), Value: ev.Value,
		Labels: ev.Labels, Annotations: ev.Annotations, TraceIDs: nonNil(ev.TraceIDs), LinkNote: ev.LinkNote,
		Suppressed: ev.Suppressed, SuppressReason: ev.SuppressReason, Flapping: ev.Flapping,
		GroupID: ev.GroupID, Summary: ev.Summary, Source: ev.Source, Group: ev.Group, Expr: ev.Expr,
		GeneratorURL: ev.GeneratorURL,
	}
	if !ev.ActiveSince.IsZero() {
		out.ActiveSince = ev.ActiveSince.Unix()
	}
	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	return out
}

// alertmanagerWebhook serves POST /api/v1/alertmanager.
func (a *API) alertmanagerWebhook(w http.ResponseWriter, r *http.Request) {
	if a.alerts == nil {
		nativeError(w, r, errAlertsDisabled)
		return
	}
	msg, err := alerting.DecodeWebhook(http.MaxBytesReader(w, r.Body, maxWebhookBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			nativeError(w, r, &httpError{code: http.StatusRequestEntityTooLarge, err: fmt.Errorf("webhook payload exceeds %d bytes", maxWebhookBytes)})
			return
		}
		nativeError(w, r, &httpError{code: http.StatusBadRequest, err: err})
		return
	}
	evs, err := a.alerts.receiver.Receive(r.Context(), msg)
	if err != nil {
		// 5xx: Alertmanager retries the notification.
		nativeError(w, r, &httpError{code: http.StatusInternalServerError, err: err})
		return
	}
	out := struct {
		Alerts []alertJSON `json:"alerts"`
	}{Alerts: make([]alertJSON, 0, len(evs))}
	for _, ev := range evs {
		out.Alerts = append(out.Alerts, alertOf(ev))
	}
	writeJSON(w, r, http.StatusOK, out)
}

// alertEvents serves GET /api/v1/alerts.
func (a *API) alertEvents(w http.ResponseWriter, r *http.Request) {
	if a.alerts == nil {
		nativeError(w, r, errAlertsDisabled)
		return
	}
	end, err := parseTimeParam(r, "end", a.now())
	if err != nil {
		nativeError(w, r, err)
		return
	}
	start, err := parseTimeParam(r, "start", end.Add(-defaultAlertRange))
	if err != nil {
		nativeError(w, r, err)
		return
	}
	if end.Before(start) {
		nativeError(w, r, badRequest("invalid range: end is before start"))
		return
	}
	// end is inclusive for callers passing whole seconds.
	evs, err := a.alerts.store.Events(r.Context(), start, end.Add(time.Second))
	if err != nil {
		nativeError(w, r, err)
		return
	}
	out := struct {
		Alerts    []alertJSON `json:"alerts"`
		Truncated bool        `json:"truncated,omitempty"`
	}{Alerts: make([]alertJSON, 0, len(evs)), Truncated: len(evs) >= alerting.MaxEvents}
	for _, ev := range evs {
		out.Alerts = append(out.Alerts, alertOf(ev))
	}
	writeJSON(w, r, http.StatusOK, out)
}

type alertTraceJSON struct {
	TraceID         string   `json:"traceID"`
	Found           bool     `json:"found"`
	RootServiceName string   `json:"rootServiceName"`
	RootTraceName   string   `json:"rootTraceName"`
	StartTimeUnixNs string   `json:"startTimeUnixNano,omitempty"`
	DurationMs      float64  `json:"durationMs"`
	Error           bool     `json:"error"`
	SpanCount       int      `json:"spanCount"`
	KeptReasons     []string `json:"keptReasons"`
}

// alertTraces serves GET /api/v1/alerts/{id}/traces: every linked trace in
// link order (errors first, then slowest, then exemplars). A trace no
// indexer holds any more (retention) is listed with found=false.
func (a *API) alertTraces(w http.ResponseWriter, r *http.Request) {
	if a.alerts == nil {
		nativeError(w, r, errAlertsDisabled)
		return
	}
	ev, found, err := a.alerts.store.Event(r.Context(), r.PathValue("id"))
	if errors.Is(err, alerting.ErrBadID) {
		nativeError(w, r, badRequest("%v", err))
		return
	}
	if err != nil {
		nativeError(w, r, err)
		return
	}
	if !found {
		nativeError(w, r, &httpError{code: http.StatusNotFound, err: fmt.Errorf("alert event %s not found", r.PathValue("id"))})
		return
	}
	out := struct {
		Alert    alertJSON        `json:"alert"`
		Traces   []alertTraceJSON `json:"traces"`
		Warnings []string         `json:"warnings,omitempty"`
	}{Alert: alertOf(ev), Traces: make([]alertTraceJSON, len(ev.TraceIDs))}
	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		sem      = make(chan struct{}, a.cfg.TraceFetchConcurrency)
		failures []error
	)
	for i, hexID := range ev.TraceIDs {
		out.Traces[i] = alertTraceJSON{TraceID: hexID, KeptReasons: []string{}}
		id, err := span.ParseTraceID(hexID)
		if err != nil {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ft, err := a.fetchTrace(r.Context(), id, 0, 0)
			if err != nil {
				if statusOf(err) != http.StatusNotFound {
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
				}
				return
			}
			out.Traces[i] = summarizeTrace(hexID, ft)
		})
	}
	wg.Wait()
	if len(failures) > 0 {
		if len(failures) == len(ev.TraceIDs) {
			nativeError(w, r, failures[0])
			return
		}
		out.Warnings = append(out.Warnings, fmt.Sprintf("%d of %d traces could not be fetched: %v", len(failures), len(ev.TraceIDs), errors.Join(failures...)))
	}
	writeJSON(w, r, http.StatusOK, out)
}

// summarizeTrace describes a merged trace by its root span (the earliest
// span without a parent; the earliest span when the root is missing).
func summarizeTrace(hexID string, ft fetchedTrace) alertTraceJSON {
	out := alertTraceJSON{TraceID: hexID, Found: true, SpanCount: len(ft.spans), KeptReasons: nonNil(ft.reasons)}
	if len(ft.spans) == 0 {
		return out
	}
	root := ft.spans[0] // spans are in start order
	first, last := ft.spans[0].GetStartTimeUnixNano(), uint64(0)
	rootFound := false
	for _, s := range ft.spans {
		first, last = min(first, s.GetStartTimeUnixNano()), max(last, s.GetEndTimeUnixNano())
		if !rootFound && len(s.GetParentSpanId()) == 0 {
			root, rootFound = s, true
		}
		if s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR {
			out.Error = true
		}
	}
	dur := last - first
	if rootFound {
		dur = root.GetEndTimeUnixNano() - root.GetStartTimeUnixNano()
		first = root.GetStartTimeUnixNano()
	}
	out.RootServiceName, out.RootTraceName = root.ServiceName(), root.GetName()
	out.StartTimeUnixNs = fmt.Sprint(first)
	out.DurationMs = float64(dur) / float64(time.Millisecond)
	return out
}

// TraceLinker returns the ruler's trace linker over this API's indexers.
// It searches kept traces only (there are no others) and does not pin:
// there is no pin call in the read API.
func (a *API) TraceLinker() alerting.TraceLinker { return traceLinker{a: a} }

type traceLinker struct{ a *API }

// Pin keeps the traces an alert links with that reason, on whichever
// indexers hold them, so they show (and can be searched) as kept for it.
func (l traceLinker) Pin(ctx context.Context, ids []span.TraceID, reason string) error {
	req := &readerpb.AddKeptReasonRequest{Reason: reason}
	for _, id := range ids {
		req.TraceIds = append(req.TraceIds, slices.Clone(id[:]))
	}
	res := fanOut(ctx, l.a, "AddKeptReason", func(ctx context.Context, rd readerpb.ReaderClient) (*readerpb.AddKeptReasonResponse, error) {
		return rd.AddKeptReason(ctx, req)
	})
	return res.failed()
}

var (
	_ alerting.TracePinner        = traceLinker{}
	_ alerting.TraceLinker        = traceLinker{}
	_ alerting.AttributeExplainer = traceLinker{}
	_ alerting.REDSource          = redSource{}
)

// Explain searches the traces with a span of service (and operation) in
// [start, end]: error spans first, then the slowest traces.
func (l traceLinker) Explain(ctx context.Context, service, operation string, start, end time.Time, limit int) ([]alerting.TraceRef, error) {
	return l.explain(ctx, spanTags(service, operation), start, end, limit)
}

// ExplainAttributes is Explain narrowed by labels that name a span or
// resource attribute, exactly or with dots and dashes written as
// underscores (Prometheus label names cannot hold dots: http_method is
// http.method). Labels matching no attribute are ignored; with none
// matching it returns nothing, and the caller falls back to Explain.
func (l traceLinker) ExplainAttributes(ctx context.Context, service, operation string, labels map[string]string, start, end time.Time, limit int) ([]alerting.TraceRef, map[string]string, error) {
	res := fanOut(ctx, l.a, "TagNames", func(ctx context.Context, rd readerpb.ReaderClient) (*readerpb.TagNamesResponse, error) {
		return rd.TagNames(ctx, &readerpb.TagNamesRequest{})
	})
	if err := res.failed(); err != nil {
		return nil, nil, fmt.Errorf("tag names: %w", err)
	}
	byLabel := map[string]string{}
	underscore := strings.NewReplacer(".", "_", "-", "_", "/", "_")
	for _, ans := range res.ok {
		for _, name := range append(slices.Clone(ans.GetResource()), ans.GetSpan()...) {
			lbl := underscore.Replace(name)
			if have, ok := byLabel[lbl]; !ok || name == lbl || (have != lbl && name < have) {
				byLabel[lbl] = name
			}
		}
	}
	used := map[string]string{}
	for k, v := range labels {
		if name, ok := byLabel[k]; ok {
			used[name] = v
		}
	}
	if len(used) == 0 {
		return nil, nil, nil
	}
	tags := spanTags(service, operation)
	for k, v := range used {
		tags[k] = v
	}
	refs, err := l.explain(ctx, tags, start, end, limit)
	return refs, used, err
}

func spanTags(service, operation string) map[string]string {
	tags := map[string]string{}
	if service != "" {
		tags["service.name"] = service
	}
	if operation != "" {
		tags["name"] = operation
	}
	return tags
}

func (l traceLinker) explain(ctx context.Context, tags map[string]string, start, end time.Time, limit int) ([]alerting.TraceRef, error) {
	limit = min(max(limit, 1), l.a.cfg.MaxSearchLimit)
	base := &readerpb.SearchRequest{
		Tags: tags, StartUnixNano: start.UnixNano(), EndUnixNano: end.UnixNano(),
		// The RED series of an operation counts that service's spans of
		// that name: match them on one span, as RED does.
		SameSpan: true,
	}
	errReq := &readerpb.SearchRequest{Tags: map[string]string{"status": "error"}, StartUnixNano: base.StartUnixNano,
		EndUnixNano: base.EndUnixNano, SameSpan: true, Limit: uint32(limit)}
	for k, v := range tags {
		errReq.Tags[k] = v
	}
	slowReq := base
	slowReq.Limit = uint32(min(limit*explainScanFactor, l.a.cfg.MaxSearchLimit))
	errSums, _, errErr := l.a.search(ctx, errReq)
	slowSums, _, slowErr := l.a.search(ctx, slowReq)
	if errErr != nil && slowErr != nil {
		return nil, fmt.Errorf("explain alert: %w", errors.Join(errErr, slowErr))
	}
	byDuration := func(x, y *readerpb.TraceSummary) int { return cmp.Compare(y.GetDurationNanos(), x.GetDurationNanos()) }
	slices.SortStableFunc(errSums, byDuration)
	slices.SortStableFunc(slowSums, byDuration)
	seen := map[span.TraceID]bool{}
	var out []alerting.TraceRef
	for _, group := range [][]*readerpb.TraceSummary{errSums, slowSums} {
		for _, s := range group {
			id, err := span.TraceIDFromBytes(s.GetTraceId())
			if err != nil || seen[id] || len(out) >= limit {
				continue
			}
			seen[id] = true
			out = append(out, alerting.TraceRef{ID: id, Error: s.GetErrorCount() > 0, Duration: time.Duration(s.GetDurationNanos())})
		}
	}
	return out, nil
}

// REDSource returns the ruler's view of RED metrics merged across every
// indexer, as GET /api/v1/metrics/red computes them.
func (a *API) REDSource() alerting.REDSource { return redSource{a: a} }

type redSource struct{ a *API }

// Query fans out and merges. A partial answer is an error: a sum missing
// an indexer would read as a traffic drop and fire "rate <" rules; the
// engine keeps the alert's state on errors instead.
func (s redSource) Query(ctx context.Context, service, operation string, start, end time.Time, step time.Duration) ([]alerting.Point, error) {
	req := &readerpb.REDRequest{Service: service, Operation: operation,
		StartUnixNano: start.UnixNano(), EndUnixNano: end.UnixNano(), StepNanos: int64(step)}
	res := fanOut(ctx, s.a, "QueryRED", func(ctx context.Context, rd readerpb.ReaderClient) (*readerpb.REDResponse, error) {
		return rd.QueryRED(ctx, req)
	})
	if err := res.failed(); err != nil {
		return nil, fmt.Errorf("query RED: %w", err)
	}
	if res.partial() {
		return nil, fmt.Errorf("query RED: partial answer: %s", res.partialMessage())
	}
	merged, err := mergeRED(req, res.ok)
	if err != nil {
		return nil, fmt.Errorf("query RED: %w", err)
	}
	ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	out := make([]alerting.Point, 0, len(merged.Series))
	for _, p := range merged.Series {
		pt := alerting.Point{T: time.Unix(p.T, 0), Count: float64(p.Count), Errors: float64(p.Errors),
			P50: ms(p.P50), P90: ms(p.P90), P99: ms(p.P99)}
		for _, h := range p.TraceIDs {
			if id, err := span.ParseTraceID(h); err == nil {
				pt.Traces = append(pt.Traces, id)
			}
		}
		out = append(out, pt)
	}
	return out, nil
}
