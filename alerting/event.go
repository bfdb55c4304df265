package alerting

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/threadline/threadline/span"
)

// State is an alert event's state.
type State string

// Event states.
const (
	StateFiring   State = "firing"
	StateResolved State = "resolved"
)

// Event sources.
const (
	SourceRule         = "rule"
	SourceAlertmanager = "alertmanager"
)

// Event is one alert transition: a firing or a resolve, from a rule of this
// ruler or from an Alertmanager notification, with the traces that explain it.
type Event struct {
	// ID is 16 hex digits derived from what the event describes, so a
	// replay writes the same event again.
	ID    string    `json:"id"`
	Name  string    `json:"name"`
	State State     `json:"state"`
	Time  time.Time `json:"time"`
	// ActiveSince is when the condition started to hold (a rule's pending
	// start, an Alertmanager alert's startsAt).
	ActiveSince time.Time `json:"activeSince,omitzero"`
	// Value is the evaluated value; nil when there was none (no traffic,
	// or an Alertmanager alert, which carries no value).
	Value       *float64          `json:"value,omitempty"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// TraceIDs are the linked traces, hex: errors first, then the slowest,
	// then exemplars.
	TraceIDs []string `json:"traceIDs"`
	// LinkNote says how the traces were chosen, or why there are none.
	LinkNote string `json:"linkNote,omitempty"`
	// Suppressed marks a transition of a flapping alert that was recorded
	// but not notified; SuppressReason says why (and also explains the
	// notified events that start and end the suppression).
	Suppressed     bool   `json:"suppressed"`
	SuppressReason string `json:"suppressReason,omitempty"`
	Flapping       bool   `json:"flapping,omitempty"`
	// GroupID is shared by the fire events of one burst; it is the ID of
	// the burst's first event, which carries the Summary.
	GroupID string        `json:"groupID,omitempty"`
	Summary *GroupSummary `json:"summary,omitempty"`
	// Source is "rule" or "alertmanager".
	Source string `json:"source"`
	// Group is the rule group, or the Alertmanager receiver.
	Group string `json:"group,omitempty"`
	// Expr is the rule's condition as text (rules only).
	Expr         string `json:"expr,omitempty"`
	GeneratorURL string `json:"generatorURL,omitempty"`
}

// GroupSummary describes a burst of fire events converged into one.
type GroupSummary struct {
	Count    int       `json:"count"`
	Rules    []string  `json:"rules"`
	Services []string  `json:"services"`
	First    time.Time `json:"first"`
	Last     time.Time `json:"last"`
}

func (s *GroupSummary) add(name, service string, t time.Time) {
	s.Count++
	if !slices.Contains(s.Rules, name) {
		s.Rules = append(s.Rules, name)
		slices.Sort(s.Rules)
	}
	if service != "" && !slices.Contains(s.Services, service) {
		s.Services = append(s.Services, service)
		slices.Sort(s.Services)
	}
	if s.First.IsZero() || t.Before(s.First) {
		s.First = t
	}
	if t.After(s.Last) {
		s.Last = t
	}
}

// TraceRef is a trace that explains an alert.
type TraceRef struct {
	ID    span.TraceID
	Error bool
	// Duration is the trace's (or the matching span's) duration.
	Duration time.Duration
}

// TraceLinker finds the traces that explain an alert: kept traces of the
// service and operation (empty: any) in [start, end], errors first, then
// the slowest, at most limit.
type TraceLinker interface {
	Explain(ctx context.Context, service, operation string, start, end time.Time, limit int) ([]TraceRef, error)
}

// AttributeExplainer is an optional TraceLinker capability: Explain narrowed
// by alert labels that match span or resource attributes. It ignores labels
// that match no attribute, and reports which it used.
type AttributeExplainer interface {
	ExplainAttributes(ctx context.Context, service, operation string, labels map[string]string, start, end time.Time, limit int) (refs []TraceRef, used map[string]string, err error)
}

// TracePinner is an optional TraceLinker capability: keep these traces
// (beyond retention decisions) with reason, e.g. "alert".
type TracePinner interface {
	Pin(ctx context.Context, traceIDs []span.TraceID, reason string) error
}

// PinReason is the kept reason of traces linked to an alert.
const PinReason = "alert"

// eventID derives a stable event ID from its parts.
func eventID(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:idLen])
}

// labelKey is a canonical rendering of a label set.
func labelKey(labels map[string]string) string {
	var b strings.Builder
	for _, k := range sortedKeys(labels) {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(labels[k])
		b.WriteByte(0)
	}
	return b.String()
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}

func nanos(t time.Time) string { return strconv.FormatInt(t.UnixNano(), 10) }

// mergeRefs appends the IDs of refs not yet in ids, up to limit.
func mergeRefs(ids []string, limit int, refs ...[]span.TraceID) []string {
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		seen[id] = true
	}
	for _, rs := range refs {
		for _, r := range rs {
			if len(ids) >= limit {
				return ids
			}
			s := r.String()
			if r.IsZero() || seen[s] {
				continue
			}
			seen[s] = true
			ids = append(ids, s)
		}
	}
	return ids
}

func refIDs(refs []TraceRef) []span.TraceID {
	out := make([]span.TraceID, len(refs))
	for i, r := range refs {
		out[i] = r.ID
	}
	return out
}

func parseIDs(ids []string) []span.TraceID {
	out := make([]span.TraceID, 0, len(ids))
	for _, s := range ids {
		if id, err := span.ParseTraceID(s); err == nil {
			out = append(out, id)
		}
	}
	return out
}
