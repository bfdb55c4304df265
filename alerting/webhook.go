package alerting

// Alertmanager webhook receiver. Alertmanager POSTs one JSON document per
// notification of an alert group (webhook_config, payload version "4"):
//
//	{"version":"4","groupKey":"…","truncatedAlerts":0,"status":"firing|resolved",
//	 "receiver":"…","groupLabels":{…},"commonLabels":{…},"commonAnnotations":{…},
//	 "externalURL":"…","alerts":[{"status","labels","annotations","startsAt",
//	 "endsAt","generatorURL","fingerprint"}]}
//
// Each alert becomes an event linked to traces by its labels: the service
// from service / service_name / job, the operation from operation /
// span_name / endpoint / route, other labels as span attribute filters when
// the linker can use them, over startsAt−5m … endsAt (or now). Alertmanager
// already grouped the alerts, so its group key becomes the group ID.
// Alertmanager re-sends a firing group every repeat_interval; the event ID
// is derived from fingerprint, status and times, so a re-send rewrites the
// same event and is linked only once.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Webhook is Alertmanager's webhook payload.
type Webhook struct {
	Version           string            `json:"version"`
	GroupKey          string            `json:"groupKey"`
	TruncatedAlerts   int               `json:"truncatedAlerts"`
	Status            string            `json:"status"`
	Receiver          string            `json:"receiver"`
	GroupLabels       map[string]string `json:"groupLabels"`
	CommonLabels      map[string]string `json:"commonLabels"`
	CommonAnnotations map[string]string `json:"commonAnnotations"`
	ExternalURL       string            `json:"externalURL"`
	Alerts            []WebhookAlert    `json:"alerts"`
}

// WebhookAlert is one alert of a Webhook.
type WebhookAlert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

// ErrBadWebhook reports a payload that is not an Alertmanager webhook.
var ErrBadWebhook = errors.New("invalid Alertmanager webhook payload")

// MaxWebhookAlerts bounds the alerts of one payload (Alertmanager's
// max_alerts defaults to unlimited; a group of thousands is a misroute).
const MaxWebhookAlerts = 1000

// DecodeWebhook decodes and checks a webhook payload.
func DecodeWebhook(r io.Reader) (Webhook, error) {
	var w Webhook
	dec := json.NewDecoder(r)
	if err := dec.Decode(&w); err != nil {
		return Webhook{}, fmt.Errorf("%w: %w", ErrBadWebhook, err)
	}
	if dec.More() {
		return Webhook{}, fmt.Errorf("%w: trailing data after the JSON object", ErrBadWebhook)
	}
	if w.Version != "" && w.Version != "4" {
		return Webhook{}, fmt.Errorf("%w: version %q, want \"4\"", ErrBadWebhook, w.Version)
	}
	if len(w.Alerts) > MaxWebhookAlerts {
		return Webhook{}, fmt.Errorf("%w: %d alerts, at most %d", ErrBadWebhook, len(w.Alerts), MaxWebhookAlerts)
	}
	for i, a := range w.Alerts {
		if a.Status != string(StateFiring) && a.Status != string(StateResolved) {
			return Webhook{}, fmt.Errorf("%w: alert %d: status %q, want firing or resolved", ErrBadWebhook, i, a.Status)
		}
		if a.StartsAt.IsZero() {
			return Webhook{}, fmt.Errorf("%w: alert %d: startsAt is missing", ErrBadWebhook, i)
		}
	}
	return w, nil
}

// Label names read, in order, for the service and the operation.
var (
	serviceLabels   = []string{"service", "service_name", "service.name", "job"}
	operationLabels = []string{"operation", "span_name", "endpoint", "route"}
	// ignoredLabels say nothing about which spans are involved.
	ignoredLabels = map[string]bool{"alertname": true, "severity": true, "instance": true,
		"prometheus": true, "monitor": true, "team": true, "env": true, "cluster": true, "namespace": true}
)

// linkLookback is how far before startsAt traces are searched: the alert's
// own `for` (and scrape and evaluation delays) put the cause before it.
const linkLookback = 5 * time.Minute

// Receiver turns Alertmanager notifications into linked, stored events.
type Receiver struct {
	linker     TraceLinker
	store      *Store
	logger     *slog.Logger
	clock      func() time.Time
	traceLimit int
	received   *prometheus.CounterVec
}

// NewReceiver returns a receiver. linker may be nil (no traces are linked);
// clock nil means time.Now. Metrics are registered on reg when not nil.
func NewReceiver(linker TraceLinker, store *Store, logger *slog.Logger, reg prometheus.Registerer, clock func() time.Time) (*Receiver, error) {
	if store == nil {
		return nil, errors.New("new alert receiver: a store is required")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if clock == nil {
		clock = time.Now
	}
	r := &Receiver{linker: linker, store: store, logger: logger, clock: clock, traceLimit: 20,
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_alertmanager_alerts_received_total",
			Help: "Alerts received from Alertmanager webhooks, by status and whether they were new (not a re-send).",
		}, []string{"status", "new"}),
	}
	if reg != nil {
		if err := reg.Register(r.received); err != nil {
			return nil, fmt.Errorf("new alert receiver: register metrics: %w", err)
		}
	}
	return r, nil
}

// Receive stores one event per alert of w, linked to traces, and returns them.
func (r *Receiver) Receive(ctx context.Context, w Webhook) ([]Event, error) {
	groupID := ""
	if w.GroupKey != "" {
		groupID = eventID(SourceAlertmanager, "group", w.Receiver, w.GroupKey)
	}
	summary := &GroupSummary{}
	out := make([]Event, 0, len(w.Alerts))
	for _, a := range w.Alerts {
		ev := r.event(w, a)
		ev.GroupID = groupID
		summary.add(ev.Name, firstLabel(ev.Labels, serviceLabels), ev.Time)
		out = append(out, ev)
	}
	var errs []error
	for i := range out {
		ev := &out[i]
		if groupID != "" && len(out) > 1 {
			// Every event of the notification carries the group summary:
			// Alertmanager has no single "first" event to put it on.
			ev.Summary = summary
		}
		have, found, err := r.store.Event(ctx, ev.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if found {
			// A re-send: keep the traces linked the first time.
			ev.TraceIDs, ev.LinkNote = have.TraceIDs, have.LinkNote
		} else {
			r.link(ctx, ev)
		}
		r.received.WithLabelValues(string(ev.State), fmt.Sprint(!found)).Inc()
		if err := r.store.Put(ctx, *ev); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return out, fmt.Errorf("receive alertmanager webhook: %w", err)
	}
	return out, nil
}

func (r *Receiver) event(w Webhook, a WebhookAlert) Event {
	labels := maps.Clone(a.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	state := State(a.Status)
	t := a.StartsAt
	if state == StateResolved && !a.EndsAt.IsZero() {
		t = a.EndsAt
	}
	fp := a.Fingerprint
	if fp == "" {
		fp = labelKey(labels)
	}
	idParts := []string{SourceAlertmanager, fp, string(state), nanos(a.StartsAt)}
	if state == StateResolved {
		idParts = append(idParts, nanos(a.EndsAt))
	}
	return Event{
		ID:           eventID(idParts...),
		Name:         labels["alertname"],
		State:        state,
		Time:         t,
		ActiveSince:  a.StartsAt,
		Labels:       labels,
		Annotations:  maps.Clone(a.Annotations),
		TraceIDs:     []string{},
		Source:       SourceAlertmanager,
		Group:        w.Receiver,
		GeneratorURL: a.GeneratorURL,
	}
}

// link fills ev.TraceIDs from its labels and time range.
func (r *Receiver) link(ctx context.Context, ev *Event) {
	if r.linker == nil {
		ev.LinkNote = "no trace linker configured"
		return
	}
	service := firstLabel(ev.Labels, serviceLabels)
	operation := firstLabel(ev.Labels, operationLabels)
	start := ev.ActiveSince.Add(-linkLookback)
	end := r.clock()
	if ev.State == StateResolved {
		end = ev.Time
	}
	if end.Before(start) {
		end = ev.ActiveSince.Add(linkLookback)
	}
	var refs []TraceRef
	var err error
	if ax, ok := r.linker.(AttributeExplainer); ok {
		extra := map[string]string{}
		for k, v := range ev.Labels {
			if !ignoredLabels[k] && !slices.Contains(serviceLabels, k) && !slices.Contains(operationLabels, k) {
				extra[k] = v
			}
		}
		var used map[string]string
		if len(extra) > 0 {
			refs, used, err = ax.ExplainAttributes(ctx, service, operation, extra, start, end, r.traceLimit)
		}
		if err == nil && len(used) > 0 && len(refs) > 0 {
			ev.TraceIDs = mergeRefs(ev.TraceIDs, r.traceLimit, refIDs(refs))
			ev.LinkNote = fmt.Sprintf("traces of service %q operation %q with attributes %s", service, operation, matcherString(used))
			pin(ctx, r.linker, r.logger, ev.TraceIDs)
			return
		}
	}
	if service == "" && operation == "" {
		ev.LinkNote = "no label names a service or operation (service, service_name, job, operation, span_name, endpoint, route) or matches a span attribute"
		return
	}
	refs, err = r.linker.Explain(ctx, service, operation, start, end, r.traceLimit)
	if err != nil {
		r.logger.Warn("link alertmanager alert to traces", "alert", ev.Name, "err", err)
		ev.LinkNote = "trace search failed: " + err.Error()
		return
	}
	ev.TraceIDs = mergeRefs(ev.TraceIDs, r.traceLimit, refIDs(refs))
	ev.LinkNote = fmt.Sprintf("traces of service %q operation %q", service, operation)
	pin(ctx, r.linker, r.logger, ev.TraceIDs)
}

func firstLabel(labels map[string]string, names []string) string {
	for _, n := range names {
		if v := labels[n]; v != "" {
			return v
		}
	}
	return ""
}
