package alerting

// The engine evaluates rule groups on a ticker and runs one state machine
// per rule, as Prometheus does:
//
//	inactive --cond--> pending --cond held for `for`--> firing --!cond--> inactive
//	                      \--!cond--> inactive             (resolved event)
//
// Flapping: every transition to firing is remembered for flap_window. The
// fire that makes the count exceed flap_threshold is notified with
// flapping=true, and from then on the alert is held firing: resolves and
// re-fires are still recorded, as suppressed events, so the history shows
// what was hidden. The hold ends (one notified event) when the condition has
// stayed false for flap_window (resolved), or at the latest
// flap_max_suppression after it began (resolved or firing, whichever is
// true then; the flap history restarts so a still-flapping alert is
// notified again before being held again).
//
// Grouping: notified fire events of one group within group_wait of the
// burst's first event take its ID as group ID; the first event's summary
// (count, rules, services) is rewritten as members join.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/threadline/threadline/span"
)

// Point is one step of merged RED metrics of a service (and operation).
type Point struct {
	T             time.Time
	Count, Errors float64
	P50, P90, P99 time.Duration
	// Traces are kept traces linked to the step (RED exemplars), errors
	// first, then slowest. Optional.
	Traces []span.TraceID
}

// REDSource answers RED metrics merged across every indexer, one point per
// step over [start, end).
type REDSource interface {
	Query(ctx context.Context, service, operation string, start, end time.Time, step time.Duration) ([]Point, error)
}

// MetricPoint is one sample of a received OTLP metric.
type MetricPoint struct {
	T     time.Time
	Value float64
	// Traces are the exemplars' trace IDs. Optional.
	Traces []span.TraceID
}

// MetricSource answers samples of received OTLP metrics whose attributes
// equal matchers, over [start, end). No implementation exists yet; rules of
// kind metric report "no metric source" until one is wired.
type MetricSource interface {
	QueryMetric(ctx context.Context, name string, matchers map[string]string, start, end time.Time) ([]MetricPoint, error)
}

// EngineOption configures optional parts of the engine.
type EngineOption func(*Engine)

// WithMetricSource evaluates rules of kind metric over src.
func WithMetricSource(src MetricSource) EngineOption {
	return func(e *Engine) { e.metricSrc = src }
}

// Rule health values of RuleStatus.
const (
	HealthUnknown        = "unknown"
	HealthOK             = "ok"
	HealthError          = "error"
	HealthNoMetricSource = "no metric source"
)

var errNoMetricSource = errors.New("no metric source: rules of kind metric are not evaluated until a metric source is wired")

// RuleStatus is a rule's current state, for status pages and tests.
type RuleStatus struct {
	Group     string
	Alert     string
	Expr      string
	State     string // inactive, pending, firing
	Flapping  bool
	Value     float64 // NaN without data
	Health    string
	LastError string
	LastEval  time.Time
}

type alertPhase int

const (
	phaseInactive alertPhase = iota
	phasePending
	phaseFiring
)

func (p alertPhase) String() string {
	return [...]string{"inactive", "pending", "firing"}[p]
}

// alertState is one rule's state machine.
type alertState struct {
	rule   *Rule
	labels map[string]string
	key    string

	phase       alertPhase
	activeSince time.Time
	value       float64
	traceIDs    []string // of the current episode

	fires      []time.Time // fire transitions within flap_window
	flapping   bool
	flapSince  time.Time
	quietSince time.Time // while flapping: when the condition last became false; zero while it holds

	health   string
	lastErr  string
	lastEval time.Time
}

type burst struct {
	leader Event
}

type groupState struct {
	Group
	alerts []*alertState
	burst  *burst
}

// Engine evaluates rule groups and records alert events.
type Engine struct {
	groups     []*groupState
	red        REDSource
	metricSrc  MetricSource
	linker     TraceLinker
	store      *Store
	logger     *slog.Logger
	clock      func() time.Time
	traceLimit int

	mu sync.Mutex // guards every groupState and alertState

	evals    *prometheus.CounterVec
	failures *prometheus.CounterVec
	events   *prometheus.CounterVec
	duration prometheus.Histogram
}

// NewEngine returns an engine over groups. source answers RED rules; linker
// (may be nil) links events to traces and, when it is a TracePinner, pins
// them; store (required) records events; clock (nil: time.Now) timestamps
// evaluations. Metrics are registered on reg when it is not nil.
func NewEngine(groups []Group, source REDSource, linker TraceLinker, store *Store, logger *slog.Logger, reg prometheus.Registerer, clock func() time.Time, opts ...EngineOption) (*Engine, error) {
	if store == nil {
		return nil, errors.New("new alert engine: a store is required")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if clock == nil {
		clock = time.Now
	}
	e := &Engine{
		red: source, linker: linker, store: store, logger: logger, clock: clock, traceLimit: 20,
		evals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_alert_rule_evaluations_total",
			Help: "Alert rule evaluations, by rule group.",
		}, []string{"group"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_alert_rule_evaluation_failures_total",
			Help: "Alert rule evaluations that could not read their metrics, by rule group.",
		}, []string{"group"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_alert_rule_events_total",
			Help: "Alert events recorded by the ruler, by state and whether they were suppressed as flapping.",
		}, []string{"state", "suppressed"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "threadline_alert_group_evaluation_duration_seconds",
			Help:    "Time to evaluate one rule group, including trace linking.",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	for _, o := range opts {
		o(e)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{e.evals, e.failures, e.events, e.duration} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("new alert engine: register metrics: %w", err)
			}
		}
	}
	for _, g := range groups {
		gs := &groupState{Group: g}
		for i := range gs.Rules {
			r := &gs.Rules[i]
			labels := map[string]string{"alertname": r.Alert}
			if r.Expr.Kind == KindRED {
				labels["service"] = r.Expr.Service
				if r.Expr.Operation != "" {
					labels["operation"] = r.Expr.Operation
				}
			}
			maps.Copy(labels, r.Labels) // the rule's labels win, as in Prometheus
			gs.alerts = append(gs.alerts, &alertState{
				rule: r, labels: labels, key: labelKey(labels), value: math.NaN(), health: HealthUnknown,
			})
		}
		e.groups = append(e.groups, gs)
	}
	return e, nil
}

// Run restores state from the store, then evaluates every group on its
// interval until ctx ends. It returns nil on cancellation.
func (e *Engine) Run(ctx context.Context) error {
	if err := e.Restore(ctx); err != nil {
		e.logger.Warn("restore alert state", "err", err)
	}
	var wg sync.WaitGroup
	for _, g := range e.groups {
		wg.Go(func() {
			tick := time.NewTicker(g.Interval)
			defer tick.Stop()
			for {
				e.evalGroup(ctx, g)
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	wg.Wait()
	return nil
}

// Evaluate evaluates every group once at the clock's time.
func (e *Engine) Evaluate(ctx context.Context) {
	for _, g := range e.groups {
		e.evalGroup(ctx, g)
	}
}

// Restore resumes firing alerts across a restart: an alert whose last
// recorded (notified) event within its flap_max_suppression (at least a day)
// is firing starts firing again, so it is not notified twice and its resolve
// is still recorded. Flap history is not restored.
func (e *Engine) Restore(ctx context.Context) error {
	now := e.clock()
	lookback := 24 * time.Hour
	for _, g := range e.groups {
		lookback = max(lookback, g.FlapMaxSuppression)
	}
	evs, err := e.store.Events(ctx, now.Add(-lookback), now.Add(time.Nanosecond))
	if err != nil {
		return fmt.Errorf("restore alert state: %w", err)
	}
	last := map[string]Event{}
	for _, ev := range evs {
		if ev.Source != SourceRule || ev.Suppressed {
			continue
		}
		last[ev.Group+"\x00"+labelKey(ev.Labels)] = ev
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, g := range e.groups {
		for _, a := range g.alerts {
			ev, ok := last[g.Name+"\x00"+a.key]
			if !ok || ev.State != StateFiring {
				continue
			}
			a.phase, a.activeSince, a.traceIDs = phaseFiring, ev.ActiveSince, ev.TraceIDs
			e.logger.Info("restored firing alert", "group", g.Name, "alert", a.rule.Alert, "since", ev.Time)
		}
	}
	return nil
}

// Rules reports every rule's state.
func (e *Engine) Rules() []RuleStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []RuleStatus
	for _, g := range e.groups {
		for _, a := range g.alerts {
			out = append(out, RuleStatus{
				Group: g.Name, Alert: a.rule.Alert, Expr: a.rule.Expr.String(), State: a.phase.String(),
				Flapping: a.flapping, Value: a.value, Health: a.health, LastError: a.lastErr, LastEval: a.lastEval,
			})
		}
	}
	return out
}

func (e *Engine) evalGroup(ctx context.Context, g *groupState) {
	start := time.Now()
	defer func() { e.duration.Observe(time.Since(start).Seconds()) }()
	t := e.clock()
	e.evals.WithLabelValues(g.Name).Inc()
	for _, a := range g.alerts {
		if ctx.Err() != nil {
			return
		}
		// Metric reads happen outside the lock: they fan out over the
		// network and must not block Rules().
		v, exemplars, err := e.value(ctx, g, a.rule, t)
		e.mu.Lock()
		e.step(ctx, g, a, t, v, exemplars, err)
		e.mu.Unlock()
	}
}

// value evaluates a rule's expression over [t-delay-window, t-delay).
func (e *Engine) value(ctx context.Context, g *groupState, r *Rule, t time.Time) (float64, []span.TraceID, error) {
	end := t.Add(-g.QueryDelay)
	start := end.Add(-r.Expr.Window)
	switch r.Expr.Kind {
	case KindMetric:
		if e.metricSrc == nil {
			return math.NaN(), nil, errNoMetricSource
		}
		pts, err := e.metricSrc.QueryMetric(ctx, r.Expr.Name, r.Expr.Matchers, start, end)
		if err != nil {
			return math.NaN(), nil, fmt.Errorf("query metric %s: %w", r.Expr.Name, err)
		}
		// The newest sample is the metric's current value.
		v, at := math.NaN(), time.Time{}
		var ex []span.TraceID
		for _, p := range pts {
			ex = append(ex, p.Traces...)
			if !p.T.Before(at) {
				v, at = p.Value, p.T
			}
		}
		return v, ex, nil
	default:
		if e.red == nil {
			return math.NaN(), nil, errors.New("no RED source configured")
		}
		pts, err := e.red.Query(ctx, r.Expr.Service, r.Expr.Operation, start, end, r.Expr.Window)
		if err != nil {
			return math.NaN(), nil, fmt.Errorf("query RED %s/%s: %w", r.Expr.Service, r.Expr.Operation, err)
		}
		return redValue(r.Expr.Signal, pts, r.Expr.Window)
	}
}

// redValue reduces the points of one window to the signal's value. Counts
// are summed; a latency percentile is the worst step's (percentiles cannot
// be summed, and the step normally equals the window so there is one).
// Without spans, latencies and the error rate have no value (NaN: the
// condition does not hold); the rate is 0, so "rate < x" fires when traffic
// stops.
func redValue(signal string, pts []Point, window time.Duration) (float64, []span.TraceID, error) {
	var count, errs float64
	lat := math.NaN()
	var ex []span.TraceID
	for _, p := range pts {
		count += p.Count
		errs += p.Errors
		ex = append(ex, p.Traces...)
		if p.Count <= 0 {
			continue
		}
		var d time.Duration
		switch signal {
		case SignalP50:
			d = p.P50
		case SignalP90:
			d = p.P90
		case SignalP99:
			d = p.P99
		}
		ms := float64(d) / float64(time.Millisecond)
		if math.IsNaN(lat) || ms > lat {
			lat = ms
		}
	}
	switch signal {
	case SignalRate:
		return count / window.Seconds(), ex, nil
	case SignalErrorRate:
		if count <= 0 {
			return math.NaN(), ex, nil
		}
		return errs / count, ex, nil
	}
	return lat, ex, nil
}

// step advances one alert's state machine at t. Called with e.mu held.
func (e *Engine) step(ctx context.Context, g *groupState, a *alertState, t time.Time, v float64, exemplars []span.TraceID, err error) {
	a.lastEval = t
	if err != nil {
		// Keep the state: a failed read is not evidence either way.
		a.value = math.NaN()
		a.lastErr = err.Error()
		if errors.Is(err, errNoMetricSource) {
			a.health = HealthNoMetricSource
			return
		}
		a.health = HealthError
		e.failures.WithLabelValues(g.Name).Inc()
		e.logger.Warn("alert rule evaluation failed", "group", g.Name, "alert", a.rule.Alert, "err", err)
		return
	}
	a.health, a.lastErr, a.value = HealthOK, "", v
	cond := a.rule.Expr.Holds(v)

	if a.flapping {
		e.stepFlapping(ctx, g, a, t, cond)
		return
	}
	switch a.phase {
	case phaseInactive:
		if !cond {
			return
		}
		a.phase, a.activeSince = phasePending, t
	case phasePending:
		if !cond {
			a.phase = phaseInactive
			return
		}
	case phaseFiring:
		if !cond {
			ev := e.newEvent(g, a, StateResolved, t)
			a.phase = phaseInactive
			e.record(ctx, g, ev)
		}
		return
	}
	if a.phase == phasePending && t.Sub(a.activeSince) >= a.rule.For {
		e.fire(ctx, g, a, t, exemplars)
	}
}

// fire notifies a transition to firing, entering flapping when it is one
// fire too many.
func (e *Engine) fire(ctx context.Context, g *groupState, a *alertState, t time.Time, exemplars []span.TraceID) {
	a.phase = phaseFiring
	a.fires = append(pruneBefore(a.fires, t.Add(-g.FlapWindow)), t)
	a.traceIDs = e.link(ctx, g, a, t, exemplars)
	ev := e.newEvent(g, a, StateFiring, t)
	if len(a.fires) > g.FlapThreshold {
		a.flapping, a.flapSince, a.quietSince = true, t, time.Time{}
		ev.Flapping = true
		ev.SuppressReason = fmt.Sprintf("flapping: fired %d times within %s (flap_threshold %d); held firing, resolve and re-fire notifications suppressed until it stays resolved for %s, at the latest until %s (flap_max_suppression %s)",
			len(a.fires), g.FlapWindow, g.FlapThreshold, g.FlapWindow, t.Add(g.FlapMaxSuppression).UTC().Format(time.RFC3339), g.FlapMaxSuppression)
	}
	e.group(ctx, g, &ev)
	e.record(ctx, g, ev)
}

// stepFlapping handles an alert held firing because it flaps.
func (e *Engine) stepFlapping(ctx context.Context, g *groupState, a *alertState, t time.Time, cond bool) {
	var transition State
	switch {
	case !cond && a.quietSince.IsZero():
		a.quietSince, transition = t, StateResolved
	case cond && !a.quietSince.IsZero():
		a.quietSince, transition = time.Time{}, StateFiring
		a.fires = append(pruneBefore(a.fires, t.Add(-g.FlapWindow)), t)
	}
	switch {
	case !cond && t.Sub(a.quietSince) >= g.FlapWindow:
		ev := e.newEvent(g, a, StateResolved, t)
		ev.SuppressReason = fmt.Sprintf("flapping ended: stayed resolved for %s (flap_window) after %s of suppression", g.FlapWindow, t.Sub(a.flapSince))
		e.release(a)
		a.phase = phaseInactive
		e.record(ctx, g, ev)
	case t.Sub(a.flapSince) >= g.FlapMaxSuppression:
		state := StateResolved
		if cond {
			state = StateFiring
		}
		ev := e.newEvent(g, a, state, t)
		ev.SuppressReason = fmt.Sprintf("flap suppression expired after %s (flap_max_suppression); notifications resume, currently %s", g.FlapMaxSuppression, state)
		e.release(a)
		if cond {
			a.phase, a.activeSince, a.fires = phaseFiring, t, []time.Time{t}
			e.group(ctx, g, &ev)
		} else {
			a.phase = phaseInactive
		}
		e.record(ctx, g, ev)
	case transition != "":
		ev := e.newEvent(g, a, transition, t)
		ev.Suppressed, ev.Flapping = true, true
		ev.SuppressReason = fmt.Sprintf("flapping since %s: %s not notified", a.flapSince.UTC().Format(time.RFC3339), transition)
		e.record(ctx, g, ev)
	}
}

// release ends flapping and forgets the flap history.
func (e *Engine) release(a *alertState) {
	a.flapping, a.flapSince, a.quietSince, a.fires = false, time.Time{}, time.Time{}, nil
}

func (e *Engine) newEvent(g *groupState, a *alertState, state State, t time.Time) Event {
	ev := Event{
		ID:          eventID(SourceRule, g.Name, a.key, string(state), nanos(t)),
		Name:        a.rule.Alert,
		State:       state,
		Time:        t,
		ActiveSince: a.activeSince,
		Labels:      maps.Clone(a.labels),
		Annotations: maps.Clone(a.rule.Annotations),
		TraceIDs:    slices.Clone(a.traceIDs),
		Source:      SourceRule,
		Group:       g.Name,
		Expr:        a.rule.Expr.String(),
	}
	if ev.TraceIDs == nil {
		ev.TraceIDs = []string{}
	}
	if !math.IsNaN(a.value) {
		v := a.value
		ev.Value = &v
	}
	return ev
}

// link finds the traces of a firing alert: the linker's errors and slowest
// traces of the rule's key over the time the condition held, then the
// exemplar traces of the evaluated window. Found traces are pinned.
func (e *Engine) link(ctx context.Context, g *groupState, a *alertState, t time.Time, exemplars []span.TraceID) []string {
	ids := []string{}
	service, operation := a.rule.Expr.Service, a.rule.Expr.Operation
	if a.rule.Expr.Kind == KindMetric {
		service = a.rule.Expr.Matchers["service.name"]
	}
	if e.linker != nil && (service != "" || operation != "") {
		end := t.Add(-g.QueryDelay)
		start := a.activeSince.Add(-g.QueryDelay - a.rule.Expr.Window)
		refs, err := e.linker.Explain(ctx, service, operation, start, end, e.traceLimit)
		if err != nil {
			e.logger.Warn("link alert to traces", "group", g.Name, "alert", a.rule.Alert, "err", err)
		}
		ids = mergeRefs(ids, e.traceLimit, refIDs(refs))
	}
	ids = mergeRefs(ids, 2*e.traceLimit, exemplars)
	pin(ctx, e.linker, e.logger, ids)
	return ids
}

// pin keeps the linked traces with reason alert when the linker can.
func pin(ctx context.Context, linker TraceLinker, logger *slog.Logger, ids []string) {
	p, ok := linker.(TracePinner)
	if !ok || len(ids) == 0 {
		return
	}
	if err := p.Pin(ctx, parseIDs(ids), PinReason); err != nil {
		logger.Warn("pin alert traces", "traces", len(ids), "err", err)
	}
}

// group assigns a notified fire event to its group's burst.
func (e *Engine) group(ctx context.Context, g *groupState, ev *Event) {
	service := ev.Labels["service"]
	if b := g.burst; b != nil && ev.Time.Sub(b.leader.Time) <= g.GroupWait {
		ev.GroupID = b.leader.ID
		b.leader.Summary.add(ev.Name, service, ev.Time)
		// The burst's first event carries the summary: rewrite it.
		if err := e.store.Put(context.WithoutCancel(ctx), b.leader); err != nil {
			e.logger.Error("update alert group summary", "group", g.Name, "groupID", b.leader.ID, "err", err)
		}
		return
	}
	ev.GroupID = ev.ID
	ev.Summary = &GroupSummary{}
	ev.Summary.add(ev.Name, service, ev.Time)
	g.burst = &burst{leader: *ev}
}

// record stores an event and counts it. A failed write is logged: the
// state machine has moved on, and the next transition is still recorded.
func (e *Engine) record(ctx context.Context, g *groupState, ev Event) {
	if err := e.store.Put(context.WithoutCancel(ctx), ev); err != nil {
		e.logger.Error("record alert event", "group", g.Name, "alert", ev.Name, "state", ev.State, "err", err)
		return
	}
	e.events.WithLabelValues(string(ev.State), strconv.FormatBool(ev.Suppressed)).Inc()
	e.logger.Info("alert "+string(ev.State), "group", g.Name, "alert", ev.Name, "id", ev.ID,
		"suppressed", ev.Suppressed, "flapping", ev.Flapping, "groupID", ev.GroupID, "traces", len(ev.TraceIDs))
}

func pruneBefore(ts []time.Time, cutoff time.Time) []time.Time {
	i := 0
	for i < len(ts) && ts[i].Before(cutoff) {
		i++
	}
	return append(ts[:0:0], ts[i:]...)
}
