package alerting

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/threadline/threadline/span"
)

// t0 is recent: the store keeps events only within its retention of the
// real time (Badger's TTL runs on the wall clock).
var t0 = time.Now().UTC().Truncate(time.Hour).Add(-3 * time.Hour)

// fakeClock is the engine's injectable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// scriptRED stands in for the metrics merged across indexers: it answers a
// point computed from the end of the queried window.
type scriptRED struct {
	mu    sync.Mutex
	fn    func(service string, end time.Time) (Point, error)
	calls []string
}

func (s *scriptRED) Query(_ context.Context, service, operation string, start, end time.Time, step time.Duration) ([]Point, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, service+"/"+operation)
	if step != end.Sub(start) {
		return nil, errors.New("engine must ask for one step per window")
	}
	p, err := s.fn(service, end)
	if err != nil {
		return nil, err
	}
	p.T = start
	return []Point{p}, nil
}

// recLinker records Explain and Pin calls and answers fixed traces.
type recLinker struct {
	mu       sync.Mutex
	refs     []TraceRef
	explains []string
	pinned   []span.TraceID
	reasons  []string
}

func (l *recLinker) Explain(_ context.Context, service, operation string, start, end time.Time, limit int) ([]TraceRef, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.explains = append(l.explains, service+"/"+operation+" "+start.Sub(t0).String()+".."+end.Sub(t0).String())
	return l.refs[:min(limit, len(l.refs))], nil
}

func (l *recLinker) Pin(_ context.Context, ids []span.TraceID, reason string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pinned = append(l.pinned, ids...)
	l.reasons = append(l.reasons, reason)
	return nil
}

func tid(b byte) span.TraceID { return span.TraceID{15: b} }

func openTestStore(t *testing.T) *Store {
	t.Helper()
	st, err := OpenStore(t.TempDir(), nil, nil, DefaultStoreOptions())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	return st
}

type harness struct {
	t      *testing.T
	clock  *fakeClock
	red    *scriptRED
	linker *recLinker
	store  *Store
	eng    *Engine
	reg    *prometheus.Registry
}

func newHarness(t *testing.T, rulesYAML string, fn func(service string, end time.Time) (Point, error), opts ...EngineOption) *harness {
	t.Helper()
	groups, err := ParseRules([]byte(rulesYAML))
	require.NoError(t, err)
	h := &harness{t: t, clock: &fakeClock{now: t0}, red: &scriptRED{fn: fn},
		linker: &recLinker{refs: []TraceRef{{ID: tid(1), Error: true}, {ID: tid(2), Duration: time.Second}}},
		store:  openTestStore(t), reg: prometheus.NewRegistry()}
	h.eng, err = NewEngine(groups, h.red, h.linker, h.store, slog.New(slog.DiscardHandler), h.reg, h.clock.Now, opts...)
	require.NoError(t, err)
	return h
}

// run evaluates n times, advancing the clock by step after each.
func (h *harness) run(n int, step time.Duration) {
	for range n {
		h.eng.Evaluate(context.Background())
		h.clock.Advance(step)
	}
}

func (h *harness) events() []Event {
	h.t.Helper()
	evs, err := h.store.Events(context.Background(), t0.Add(-time.Hour), t0.Add(48*time.Hour))
	require.NoError(h.t, err)
	return evs
}

// transitions renders events as "state@offset[s]" (s: suppressed).
func transitions(evs []Event) []string {
	var out []string
	for _, ev := range evs {
		s := string(ev.State) + "@" + ev.Time.Sub(t0).String()
		if ev.Suppressed {
			s += "[s]"
		}
		out = append(out, s)
	}
	return out
}

const slowRule = `
groups:
  - name: g
    interval: 30s
    query_delay: 0s
    rules:
      - alert: Slow
        for: 1m
        expr: {kind: red, service: checkout, operation: pay, signal: p99, op: ">", threshold: 500, window: 30s}
        labels: {severity: page}
`

func TestEngineStateMachine(t *testing.T) {
	// p99 is 900ms from 1m to 3m30s, else 100ms; a blip at 5m lasts one
	// evaluation (shorter than `for`) and must not fire.
	h := newHarness(t, slowRule, func(_ string, end time.Time) (Point, error) {
		off := end.Sub(t0)
		p := Point{Count: 100, Errors: 1, P99: 100 * time.Millisecond}
		if (off >= time.Minute && off < 3*time.Minute+30*time.Second) || off == 5*time.Minute {
			p.P99 = 900 * time.Millisecond
			p.Traces = []span.TraceID{tid(2), tid(3)}
		}
		return p, nil
	})
	h.run(15, 30*time.Second) // 0 .. 7m

	evs := h.events()
	require.Equal(t, []string{"firing@2m0s", "resolved@3m30s"}, transitions(evs))
	fire, res := evs[0], evs[1]
	require.Equal(t, "Slow", fire.Name)
	require.Equal(t, SourceRule, fire.Source)
	require.Equal(t, t0.Add(time.Minute), fire.ActiveSince)
	require.NotNil(t, fire.Value)
	require.InDelta(t, 900, *fire.Value, 1e-9)
	require.Equal(t, map[string]string{"alertname": "Slow", "service": "checkout", "operation": "pay", "severity": "page"}, fire.Labels)
	// Linker's errors-then-slowest first, then the exemplars not yet listed.
	require.Equal(t, []string{tid(1).String(), tid(2).String(), tid(3).String()}, fire.TraceIDs)
	require.Equal(t, fire.TraceIDs, res.TraceIDs, "a resolve carries its episode's traces")
	require.InDelta(t, 100, *res.Value, 1e-9)
	// The linker searched from the pending start minus the window to now.
	require.Equal(t, []string{"checkout/pay 30s..2m0s"}, h.linker.explains)
	require.Equal(t, []string{PinReason}, h.linker.reasons)
	require.Len(t, h.linker.pinned, 3)
	require.Equal(t, fire.ID, fire.GroupID)
	require.Equal(t, &GroupSummary{Count: 1, Rules: []string{"Slow"}, Services: []string{"checkout"}, First: fire.Time, Last: fire.Time}, fire.Summary)

	got, found, err := h.store.Event(context.Background(), fire.ID)
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, fire.Name, got.Name)

	st := h.eng.Rules()
	require.Len(t, st, 1)
	require.Equal(t, "inactive", st[0].State)
	require.Equal(t, HealthOK, st[0].Health)
}

func TestEngineSourceErrorKeepsState(t *testing.T) {
	fail := false
	var mu sync.Mutex
	h := newHarness(t, slowRule, func(_ string, end time.Time) (Point, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return Point{}, errors.New("indexers unavailable")
		}
		return Point{Count: 10, P99: time.Second}, nil
	})
	h.run(3, 30*time.Second) // fires at 1m
	require.Equal(t, []string{"firing@1m0s"}, transitions(h.events()))
	mu.Lock()
	fail = true
	mu.Unlock()
	h.run(4, 30*time.Second)
	require.Equal(t, []string{"firing@1m0s"}, transitions(h.events()), "a failed read neither resolves nor re-fires")
	st := h.eng.Rules()[0]
	require.Equal(t, "firing", st.State)
	require.Equal(t, HealthError, st.Health)
	require.Contains(t, st.LastError, "indexers unavailable")
	require.True(t, math.IsNaN(st.Value))
}

const flapRule = `
groups:
  - name: g
    interval: 1m
    query_delay: 0s
    flap_window: 10m
    flap_threshold: 3
    flap_max_suppression: 1h
    rules:
      - alert: Errors
        expr: {kind: red, service: api, signal: error_rate, op: ">", threshold: 0.1, window: 1m}
`

// flapping answers an error rate that alternates high/low every minute
// while on(offset) holds.
func flapping(on func(time.Duration) bool) func(string, time.Time) (Point, error) {
	return func(_ string, end time.Time) (Point, error) {
		off := end.Sub(t0)
		if on(off) && (off/time.Minute)%2 == 0 {
			return Point{Count: 100, Errors: 50}, nil
		}
		return Point{Count: 100, Errors: 0}, nil
	}
}

func TestEngineFlappingReleasedAfterQuiet(t *testing.T) {
	// Flaps from 0 to 20m, then stays healthy.
	h := newHarness(t, flapRule, flapping(func(off time.Duration) bool { return off <= 20*time.Minute }))
	h.run(40, time.Minute)

	evs := h.events()
	require.Equal(t, []string{
		"firing@0s", "resolved@1m0s", "firing@2m0s", "resolved@3m0s", "firing@4m0s", "resolved@5m0s",
		// The 4th fire within 10m: notified as flapping, then held firing.
		"firing@6m0s",
		"resolved@7m0s[s]", "firing@8m0s[s]", "resolved@9m0s[s]", "firing@10m0s[s]", "resolved@11m0s[s]",
		"firing@12m0s[s]", "resolved@13m0s[s]", "firing@14m0s[s]", "resolved@15m0s[s]", "firing@16m0s[s]",
		"resolved@17m0s[s]", "firing@18m0s[s]", "resolved@19m0s[s]", "firing@20m0s[s]", "resolved@21m0s[s]",
		// Quiet from 21m; released after flap_window of quiet.
		"resolved@31m0s",
	}, transitions(evs))
	start := evs[6]
	require.True(t, start.Flapping)
	require.False(t, start.Suppressed)
	require.Contains(t, start.SuppressReason, "fired 4 times within 10m0s")
	require.Contains(t, evs[7].SuppressReason, "flapping since")
	require.True(t, evs[7].Flapping)
	end := evs[len(evs)-1]
	require.False(t, end.Suppressed)
	require.Contains(t, end.SuppressReason, "flapping ended: stayed resolved for 10m0s")
	// Suppressed transitions do not search for traces: one search per notified fire.
	require.Len(t, h.linker.explains, 4)
	require.Equal(t, "inactive", h.eng.Rules()[0].State)
	require.False(t, h.eng.Rules()[0].Flapping)
}

func TestEngineFlappingAbsoluteExpiry(t *testing.T) {
	// Flaps for two hours: suppression must end at flap_max_suppression
	// (1h after it began at 6m), then the alert is notified again and,
	// still flapping, is held again after 4 more fires.
	h := newHarness(t, flapRule, flapping(func(time.Duration) bool { return true }))
	h.run(2*60+1, time.Minute)

	var notified []string
	for _, ev := range h.events() {
		if !ev.Suppressed {
			notified = append(notified, transitions([]Event{ev})[0])
		}
	}
	require.Equal(t, []string{
		"firing@0s", "resolved@1m0s", "firing@2m0s", "resolved@3m0s", "firing@4m0s", "resolved@5m0s",
		"firing@6m0s",   // flapping starts
		"firing@1h6m0s", // 1h later, firing at that instant: suppression expires
		"resolved@1h7m0s", "firing@1h8m0s", "resolved@1h9m0s", "firing@1h10m0s", "resolved@1h11m0s",
		"firing@1h12m0s", // the 4th fire since the release: flapping again
	}, notified)
	var expiry Event
	for _, ev := range h.events() {
		if ev.Time.Equal(t0.Add(66 * time.Minute)) {
			expiry = ev
		}
	}
	require.Contains(t, expiry.SuppressReason, "flap suppression expired after 1h0m0s")
	require.False(t, expiry.Suppressed)
	require.Equal(t, StateFiring, expiry.State)
	require.True(t, h.eng.Rules()[0].Flapping)
}

func TestEngineGrouping(t *testing.T) {
	rules := `
groups:
  - name: burst
    interval: 10s
    query_delay: 0s
    group_wait: 30s
    rules:
      - alert: ApiErrors
        expr: {kind: red, service: api, signal: error_rate, op: ">", threshold: 0.1}
      - alert: DbErrors
        expr: {kind: red, service: db, signal: error_rate, op: ">", threshold: 0.1}
      - alert: ApiSlow
        expr: {kind: red, service: api, signal: p90, op: ">", threshold: 100}
      - alert: CacheErrors
        expr: {kind: red, service: cache, signal: error_rate, op: ">", threshold: 0.1}
`
	// api and db break at 0; api slows down at 20s; cache breaks at 50s,
	// after the burst's group_wait.
	h := newHarness(t, rules, func(service string, end time.Time) (Point, error) {
		off := end.Sub(t0)
		p := Point{Count: 100, P90: 10 * time.Millisecond}
		switch service {
		case "api":
			p.Errors = 50
			if off >= 20*time.Second {
				p.P90 = 300 * time.Millisecond
			}
		case "db":
			p.Errors = 50
		case "cache":
			if off >= 50*time.Second {
				p.Errors = 50
			}
		}
		return p, nil
	})
	h.run(7, 10*time.Second)

	evs := h.events()
	require.Len(t, evs, 4)
	byName := map[string]Event{}
	for _, ev := range evs {
		byName[ev.Name] = ev
	}
	leader := byName["ApiErrors"]
	require.Equal(t, leader.ID, leader.GroupID)
	require.Equal(t, leader.ID, byName["DbErrors"].GroupID)
	require.Equal(t, leader.ID, byName["ApiSlow"].GroupID)
	require.Nil(t, byName["DbErrors"].Summary)
	require.Equal(t, &GroupSummary{Count: 3, Rules: []string{"ApiErrors", "ApiSlow", "DbErrors"},
		Services: []string{"api", "db"}, First: t0, Last: t0.Add(20 * time.Second)}, leader.Summary,
		"the stored leader's summary is rewritten as members join")
	cache := byName["CacheErrors"]
	require.Equal(t, cache.ID, cache.GroupID, "a fire after group_wait starts a new burst")
	require.Equal(t, 1, cache.Summary.Count)
}

func TestEngineMetricRules(t *testing.T) {
	rules := `
groups:
  - name: m
    interval: 30s
    query_delay: 0s
    rules:
      - alert: QueueDepth
        expr: {kind: metric, name: queue_depth, matchers: {service.name: worker}, op: ">", threshold: 1000}
`
	t.Run("no source", func(t *testing.T) {
		h := newHarness(t, rules, nil)
		h.run(3, 30*time.Second)
		require.Empty(t, h.events())
		st := h.eng.Rules()[0]
		require.Equal(t, HealthNoMetricSource, st.Health)
		require.Contains(t, st.LastError, "no metric source")
	})
	t.Run("scripted source", func(t *testing.T) {
		src := metricFunc(func(name string, m map[string]string, start, end time.Time) ([]MetricPoint, error) {
			require.Equal(t, "queue_depth", name)
			require.Equal(t, "worker", m["service.name"])
			return []MetricPoint{{T: start, Value: 5000, Traces: []span.TraceID{tid(9)}}, {T: end.Add(-time.Second), Value: 2000}}, nil
		})
		h := newHarness(t, rules, nil, WithMetricSource(src))
		h.run(1, 30*time.Second)
		evs := h.events()
		require.Equal(t, []string{"firing@0s"}, transitions(evs))
		require.InDelta(t, 2000, *evs[0].Value, 1e-9, "the newest sample is the value")
		require.Equal(t, []string{tid(1).String(), tid(2).String(), tid(9).String()}, evs[0].TraceIDs)
		require.Equal(t, []string{"worker/ -1m0s..0s"}, h.linker.explains)
	})
}

type metricFunc func(name string, m map[string]string, start, end time.Time) ([]MetricPoint, error)

func (f metricFunc) QueryMetric(_ context.Context, name string, m map[string]string, start, end time.Time) ([]MetricPoint, error) {
	return f(name, m, start, end)
}

func TestEngineRestore(t *testing.T) {
	high := true
	var mu sync.Mutex
	fn := func(string, time.Time) (Point, error) {
		mu.Lock()
		defer mu.Unlock()
		if high {
			return Point{Count: 1, P99: time.Second}, nil
		}
		return Point{Count: 1, P99: time.Millisecond}, nil
	}
	h := newHarness(t, slowRule, fn)
	h.run(3, 30*time.Second)
	require.Equal(t, []string{"firing@1m0s"}, transitions(h.events()))

	// A new engine over the same store, as after a restart.
	groups, err := ParseRules([]byte(slowRule))
	require.NoError(t, err)
	eng, err := NewEngine(groups, h.red, nil, h.store, nil, nil, h.clock.Now)
	require.NoError(t, err)
	require.NoError(t, eng.Restore(context.Background()))
	require.Equal(t, "firing", eng.Rules()[0].State)
	eng.Evaluate(context.Background())
	require.Equal(t, []string{"firing@1m0s"}, transitions(h.events()), "no second notification")
	mu.Lock()
	high = false
	mu.Unlock()
	h.clock.Advance(30 * time.Second)
	eng.Evaluate(context.Background())
	evs := h.events()
	require.Equal(t, []string{"firing@1m0s", "resolved@2m0s"}, transitions(evs))
	require.Equal(t, evs[0].TraceIDs, evs[1].TraceIDs)
}

func TestEngineRun(t *testing.T) {
	groups, err := ParseRules([]byte(`
groups:
  - name: g
    interval: 1s
    query_delay: 0s
    rules:
      - alert: Always
        expr: {kind: red, service: s, signal: rate, op: "<", threshold: 1}
`))
	require.NoError(t, err)
	src := &scriptRED{fn: func(string, time.Time) (Point, error) { return Point{}, nil }}
	st := openTestStore(t)
	eng, err := NewEngine(groups, src, nil, st, nil, nil, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- eng.Run(ctx) }()
	require.Eventually(t, func() bool {
		evs, err := st.Events(context.Background(), time.Now().Add(-time.Minute), time.Now().Add(time.Minute))
		return err == nil && len(evs) == 1 && evs[0].State == StateFiring
	}, 5*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
}

func TestRedValue(t *testing.T) {
	pts := []Point{
		{Count: 10, Errors: 1, P50: 5 * time.Millisecond, P90: 20 * time.Millisecond, P99: 80 * time.Millisecond},
		{Count: 30, Errors: 3, P50: 7 * time.Millisecond, P90: 10 * time.Millisecond, P99: 200 * time.Millisecond},
		{Count: 0, P99: time.Hour}, // an empty step has no latency
	}
	cases := []struct {
		signal string
		pts    []Point
		want   float64
	}{
		{SignalRate, pts, 40.0 / 60},
		{SignalErrorRate, pts, 0.1},
		{SignalP50, pts, 7},
		{SignalP90, pts, 20},
		{SignalP99, pts, 200},
		{SignalRate, nil, 0},
		{SignalErrorRate, nil, math.NaN()},
		{SignalP99, nil, math.NaN()},
	}
	for _, tc := range cases {
		got, _, err := redValue(tc.signal, tc.pts, time.Minute)
		require.NoError(t, err)
		if math.IsNaN(tc.want) {
			require.True(t, math.IsNaN(got), tc.signal)
			continue
		}
		require.InDelta(t, tc.want, got, 1e-9, tc.signal)
	}
	require.False(t, Expr{Op: ">", Threshold: 1}.Holds(math.NaN()))
	require.True(t, Expr{Op: "<", Threshold: 1}.Holds(0))
}
