package sampling

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/threadline/threadline/span"
)

var t0 = time.Date(2026, 8, 1, 12, 0, 0, 0, time.UTC) // a window boundary for windows dividing a day

func newSampler(t testing.TB, cfg Config) (*TailSampler, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := NewTailSampler(cfg, reg)
	require.NoError(t, err)
	return s, reg
}

// outcomes reads threadline_sampling_decisions_total by outcome.
func outcomes(t testing.TB, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "threadline_sampling_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	return out
}

func randID(r *rand.Rand) span.TraceID {
	var id span.TraceID
	binary.BigEndian.PutUint64(id[:8], r.Uint64())
	binary.BigEndian.PutUint64(id[8:], r.Uint64())
	return id
}

func idN(n int) span.TraceID {
	var id span.TraceID
	binary.BigEndian.PutUint64(id[:8], uint64(n)+1)
	return id // low bytes zero: never kept by a baseline below 1
}

// workload is a generated set of traces with known ground truth.
type workload struct {
	keys, windows, perKeyWindow int
	errRate, pinRate            float64
	tieDurations                bool // durations from 4 values, so ties are common
	seed                        uint64
}

func (w workload) traces() []TraceInfo {
	r := rand.New(rand.NewPCG(w.seed, 7))
	var out []TraceInfo
	for win := range w.windows {
		for k := range w.keys {
			for range w.perKeyWindow {
				t := TraceInfo{
					ID:            randID(r),
					RootService:   fmt.Sprintf("svc-%d", k%7),
					RootOperation: fmt.Sprintf("op-%d", k),
					End:           t0.Add(time.Duration(win)*time.Minute + time.Duration(r.Int64N(int64(time.Minute)))),
					Error:         r.Float64() < w.errRate,
				}
				if w.tieDurations {
					t.Duration = time.Duration(1+r.IntN(4)) * time.Millisecond
				} else {
					t.Duration = time.Duration(1 + r.Int64N(int64(time.Second)))
				}
				if r.Float64() < w.pinRate {
					t.Pinned = []string{ReasonExemplar}
				}
				out = append(out, t)
			}
		}
	}
	return out
}

// expected computes the decisions by brute force: sort each (key, window).
func expected(traces []TraceInfo, cfg Config) map[span.TraceID][]string {
	b, _ := NewBaseline(cfg.Baseline)
	want := map[span.TraceID][]string{}
	type gk struct {
		key opKey
		win int64
	}
	groups := map[gk][]TraceInfo{}
	for _, t := range traces {
		var reasons []string
		if t.Error {
			reasons = append(reasons, ReasonError)
		}
		reasons = append(reasons, t.Pinned...)
		if b.Keep(t.ID) {
			reasons = append(reasons, ReasonBaseline)
		}
		want[t.ID] = reasons
		if len(reasons) == 0 {
			k := gk{opKey{t.RootService, t.RootOperation}, floorDiv(nanos(t.End), int64(cfg.Window))}
			groups[k] = append(groups[k], t)
		}
	}
	for _, g := range groups {
		slices.SortFunc(g, func(a, b TraceInfo) int {
			if a.Duration != b.Duration {
				if a.Duration > b.Duration {
					return -1
				}
				return 1
			}
			return bytes.Compare(a.ID[:], b.ID[:])
		})
		for i := 0; i < len(g) && i < cfg.TopN; i++ {
			want[g[i].ID] = []string{ReasonLatencyTopN}
		}
	}
	return want
}

// collect records decisions, failing on a second decision for one ID.
type collector struct {
	t    testing.TB
	got  map[span.TraceID][]string
	seq  []Decision
	keep int
}

func newCollector(t testing.TB) *collector {
	return &collector{t: t, got: map[span.TraceID][]string{}}
}

func (c *collector) add(ds []Decision) {
	for _, d := range ds {
		_, dup := c.got[d.ID]
		require.False(c.t, dup, "trace %x decided twice", d.ID)
		c.got[d.ID] = d.Reasons
		c.seq = append(c.seq, d)
		if d.Keep() {
			c.keep++
		}
	}
}

// arrivalOrder shuffles traces as a collector would deliver them: each arrives
// up to half a window after its start, in random order. It returns the order
// and, per trace, the watermark that is safe to pass after offering it.
func arrivalOrder(traces []TraceInfo, window time.Duration, seed uint64) ([]TraceInfo, []time.Time) {
	r := rand.New(rand.NewPCG(seed, 9))
	type arr struct {
		t  TraceInfo
		at time.Time
	}
	as := make([]arr, len(traces))
	for i, t := range traces {
		as[i] = arr{t, t.End.Add(time.Duration(r.Int64N(int64(window / 2))))}
	}
	slices.SortStableFunc(as, func(a, b arr) int { return a.at.Compare(b.at) })
	out := make([]TraceInfo, len(as))
	wms := make([]time.Time, len(as))
	for i, a := range as {
		out[i] = a.t
		// Nothing still to arrive started before at − window/2.
		wms[i] = a.at.Add(-window / 2)
	}
	return out, wms
}

func TestTopNGroundTruth(t *testing.T) {
	cases := []struct {
		name        string
		w           workload
		topN        int
		baseline    float64
		interleaved bool
	}{
		{"shuffled then advance", workload{keys: 40, windows: 3, perKeyWindow: 30, errRate: 0.05, seed: 1}, 10, 0, false},
		{"interleaved advance", workload{keys: 40, windows: 5, perKeyWindow: 30, errRate: 0.05, seed: 2}, 10, 0, true},
		{"ties broken by ID", workload{keys: 10, windows: 3, perKeyWindow: 50, errRate: 0.1, tieDurations: true, seed: 3}, 7, 0, true},
		{"fewer traces than N", workload{keys: 30, windows: 2, perKeyWindow: 4, errRate: 0.2, seed: 4}, 10, 0, true},
		{"baseline and pinned skip the heap", workload{keys: 20, windows: 3, perKeyWindow: 40, errRate: 0.05, pinRate: 0.05, seed: 5}, 5, 0.3, true},
		{"all errors", workload{keys: 5, windows: 2, perKeyWindow: 20, errRate: 1, seed: 6}, 3, 0, true},
		{"top-N disabled", workload{keys: 5, windows: 2, perKeyWindow: 20, errRate: 0.1, seed: 7}, 0, 0, false},
		{"N=1", workload{keys: 25, windows: 4, perKeyWindow: 25, errRate: 0.05, seed: 8}, 1, 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.TopN, cfg.Baseline = tc.topN, tc.baseline
			traces := tc.w.traces()
			want := expected(traces, cfg)
			s, reg := newSampler(t, cfg)
			c := newCollector(t)
			if tc.interleaved {
				order, wms := arrivalOrder(traces, cfg.Window, tc.w.seed)
				for i, tr := range order {
					c.add(s.Offer(tr))
					c.add(s.Advance(wms[i]))
				}
			} else {
				order := slices.Clone(traces)
				rand.New(rand.NewPCG(tc.w.seed, 3)).Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
				for _, tr := range order {
					c.add(s.Offer(tr))
				}
			}
			c.add(s.Advance(t0.Add(time.Hour)))
			require.Equal(t, 0, s.Held())
			require.Equal(t, 0, s.Keys())
			require.Len(t, c.got, len(traces), "every trace decided exactly once")
			for id, w := range want {
				require.Equal(t, len(w) == 0, len(c.got[id]) == 0, "keep/drop of %x", id)
				if len(w) > 0 {
					require.Equal(t, w, c.got[id], "reasons of %x", id)
				}
			}
			o := outcomes(t, reg)
			var errs, topn, base, pinned int
			for _, w := range want {
				for _, r := range w {
					switch r {
					case ReasonError:
						errs++
					case ReasonLatencyTopN:
						topn++
					case ReasonBaseline:
						base++
					case ReasonExemplar:
						pinned++
					}
				}
			}
			require.Equal(t, float64(errs), o[outcomeKeptError])
			require.Equal(t, float64(topn), o[outcomeKeptTopN])
			require.Equal(t, float64(base), o[outcomeKeptBaseline])
			require.Equal(t, float64(pinned), o[outcomeKeptPinned])
			require.Equal(t, float64(len(traces)-c.keep), o[outcomeDropped]+o[outcomeEvicted])
			require.Zero(t, o[outcomeLate]+o[outcomeShedKeys])
		})
	}
}

// run drives a sampler through arrival order with interleaved watermarks.
func run(t testing.TB, cfg Config, order []TraceInfo, wms []time.Time, check func(*TailSampler)) []Decision {
	s, _ := newSampler(t, cfg)
	c := newCollector(t)
	for i, tr := range order {
		c.add(s.Offer(tr))
		if check != nil {
			check(s)
		}
		if i%16 == 0 {
			c.add(s.Advance(wms[i]))
		}
	}
	c.add(s.Flush())
	return c.seq
}

func TestDeterministic(t *testing.T) {
	w := workload{keys: 200, windows: 4, perKeyWindow: 8, errRate: 0.05, pinRate: 0.02, tieDurations: true, seed: 11}
	cfg := DefaultConfig()
	cfg.TopN, cfg.MaxKeys, cfg.Baseline = 3, 50, 0.1 // small MaxKeys: shedding is part of the sequence
	order, wms := arrivalOrder(w.traces(), cfg.Window, 12)
	a := run(t, cfg, order, wms, nil)
	b := run(t, cfg, order, wms, nil)
	require.Len(t, a, len(order))
	require.Equal(t, a, b)
}

func TestHighCardinalityBounded(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TopN, cfg.MaxKeys = 3, 8
	r := rand.New(rand.NewPCG(21, 22))
	var traces []TraceInfo
	errs := map[span.TraceID]bool{}
	const n = 5000
	for i := range n {
		tr := TraceInfo{
			ID:            randID(r),
			RootService:   "api",
			RootOperation: fmt.Sprintf("GET /users/%d", i), // an ID in the operation name
			End:           t0.Add(time.Duration(i) * 30 * time.Millisecond),
			Duration:      time.Duration(1 + r.IntN(1000)),
			Error:         r.IntN(10) == 0,
		}
		if i%2 == 0 { // a busy key: it must keep its heap through the flood
			tr.RootOperation = "GET /health"
		}
		if tr.Error {
			errs[tr.ID] = true
		}
		traces = append(traces, tr)
	}
	order, wms := arrivalOrder(traces, cfg.Window, 23)
	s, reg := newSampler(t, cfg)
	c := newCollector(t)
	for i, tr := range order {
		c.add(s.Offer(tr))
		require.LessOrEqual(t, s.Held(), cfg.MaxKeys*cfg.TopN)
		require.LessOrEqual(t, s.Keys(), cfg.MaxKeys)
		c.add(s.Advance(wms[i]))
	}
	c.add(s.Flush())
	require.Len(t, c.got, n)
	for id := range errs {
		require.Equal(t, []string{ReasonError}, c.got[id])
	}
	o := outcomes(t, reg)
	require.Positive(t, o[outcomeShedKeys])
	require.Equal(t, float64(n), o[outcomeKeptError]+o[outcomeKeptTopN]+o[outcomeDropped]+o[outcomeEvicted]+o[outcomeLate]+o[outcomeShedKeys],
		"every trace counted under exactly one outcome")
	require.Equal(t, float64(n-c.keep), o[outcomeDropped]+o[outcomeEvicted]+o[outcomeLate]+o[outcomeShedKeys])

	// The busy key was never shed: its top-N per window is exact.
	var busy []TraceInfo
	for _, tr := range traces {
		if tr.RootOperation == "GET /health" {
			busy = append(busy, tr)
		}
	}
	want := expected(busy, cfg)
	for id, w := range want {
		require.Equal(t, w, c.got[id], "busy-key trace %x", id)
	}
}

func TestLateAndFuture(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TopN = 2
	s, reg := newSampler(t, cfg)
	require.Empty(t, s.Advance(t0.Add(time.Minute)))
	require.Equal(t, t0.Add(time.Minute), s.Watermark())
	require.Empty(t, s.Advance(t0), "watermark never goes back")
	require.Equal(t, t0.Add(time.Minute), s.Watermark())

	late := TraceInfo{ID: idN(1), RootService: "a", RootOperation: "x", End: t0.Add(59 * time.Second), Duration: time.Hour}
	require.Equal(t, []Decision{{ID: idN(1)}}, s.Offer(late))
	lateErr := late
	lateErr.ID, lateErr.Error = idN(2), true
	require.Equal(t, []Decision{{ID: idN(2), Reasons: []string{ReasonError}}}, s.Offer(lateErr))
	require.Equal(t, 0, s.Held())

	// Exactly at the watermark is the next window: open.
	onTime := TraceInfo{ID: idN(3), RootService: "a", RootOperation: "x", End: t0.Add(time.Minute), Duration: time.Second}
	require.Empty(t, s.Offer(onTime))
	require.Equal(t, 1, s.Held())

	// A start ten hours ahead is ranked in its own window, whatever the
	// watermark was when it was offered, and so decided the same on a
	// replay; the watermark reaching that window releases it.
	future := TraceInfo{ID: idN(4), RootService: "a", RootOperation: "x", End: t0.Add(10 * time.Hour), Duration: time.Second}
	require.Empty(t, s.Offer(future))
	require.Equal(t, 2, s.Held())
	require.Equal(t, []Decision{{ID: idN(3), Reasons: []string{ReasonLatencyTopN}}}, s.Advance(t0.Add(2*time.Minute)))
	require.Empty(t, s.Advance(t0.Add(10*time.Hour)))
	require.Equal(t, []Decision{{ID: idN(4), Reasons: []string{ReasonLatencyTopN}}}, s.Advance(t0.Add(10*time.Hour+cfg.Window)))
	o := outcomes(t, reg)
	require.Equal(t, 1.0, o[outcomeLate])
	require.Equal(t, 1.0, o[outcomeKeptError])
	require.Equal(t, 2.0, o[outcomeKeptTopN])
}

func TestHeapEvictionAndDuplicates(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TopN = 2
	s, reg := newSampler(t, cfg)
	tr := func(n int, d time.Duration) TraceInfo {
		return TraceInfo{ID: idN(n), RootService: "a", RootOperation: "x", End: t0, Duration: d}
	}
	require.Empty(t, s.Offer(tr(1, 5)))
	require.Empty(t, s.Offer(tr(2, 7)))
	require.Equal(t, []Decision{{ID: idN(3)}}, s.Offer(tr(3, 4)), "too fast for a full heap")
	require.Equal(t, []Decision{{ID: idN(1)}}, s.Offer(tr(4, 6)), "pushes the fastest out")
	require.Equal(t, []Decision{{ID: idN(5)}}, s.Offer(tr(5, 6)), "tie with the fastest held: the larger ID ranks below")
	require.Equal(t, []Decision{{ID: idN(4)}}, s.Offer(tr(0, 6)), "tie: the smaller ID wins the slot")
	// Re-offering a held ID replaces it: no decision now, one at close.
	require.Empty(t, s.Offer(tr(2, 9)))
	require.Equal(t, 2, s.Held())
	// And an error re-offer of a held ID decides it at once, leaving the heap.
	e := tr(0, 1)
	e.Error = true
	require.Equal(t, []Decision{{ID: idN(0), Reasons: []string{ReasonError}}}, s.Offer(e))
	require.Equal(t, 1, s.Held())
	require.Equal(t, []Decision{{ID: idN(2), Reasons: []string{ReasonLatencyTopN}}}, s.Advance(t0.Add(time.Minute)))
	require.Equal(t, 0, s.Keys())
	o := outcomes(t, reg)
	require.Equal(t, 2.0, o[outcomeDropped])
	require.Equal(t, 2.0, o[outcomeEvicted])
}

func TestReasonsCombine(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Baseline = 1
	s, reg := newSampler(t, cfg)
	f := func(tr TraceInfo, want []string) {
		t.Helper()
		require.Equal(t, []Decision{{ID: tr.ID, Reasons: want}}, s.Offer(tr))
		require.Equal(t, 0, s.Held(), "kept at once, never held")
	}
	f(TraceInfo{ID: idN(1), End: t0}, []string{ReasonBaseline})
	f(TraceInfo{ID: idN(2), End: t0, Error: true}, []string{ReasonError, ReasonBaseline})
	f(TraceInfo{ID: idN(3), End: t0, Error: true, Pinned: []string{ReasonExemplar, ReasonAlert, ReasonExemplar, ""}},
		[]string{ReasonError, ReasonExemplar, ReasonAlert, ReasonBaseline})
	f(TraceInfo{ID: idN(4), End: t0, Pinned: []string{ReasonBaseline}}, []string{ReasonBaseline})
	o := outcomes(t, reg)
	require.Equal(t, 4.0, o[outcomeKeptBaseline])
	require.Equal(t, 2.0, o[outcomeKeptError])
	require.Equal(t, 2.0, o[outcomeKeptPinned])

	cfg.Baseline = 0
	s, _ = newSampler(t, cfg)
	require.Equal(t, []Decision{{ID: idN(5), Reasons: []string{ReasonAlert}}}, s.Offer(TraceInfo{ID: idN(5), End: t0, Pinned: []string{ReasonAlert}}))
}

// TestCrashReplay commits below the oldest held trace, "crashes", and replays
// from the commit into a new sampler: every trace held at the crash, and every
// later one, must be decided as the uninterrupted run decided it.
func TestCrashReplay(t *testing.T) {
	w := workload{keys: 30, windows: 6, perKeyWindow: 20, errRate: 0.05, tieDurations: true, seed: 31}
	cfg := DefaultConfig()
	cfg.TopN = 4
	order, wms := arrivalOrder(w.traces(), cfg.Window, 32)
	for _, crash := range []int{1, 500, 1777, 2400, len(order) - 1} {
		t.Run(fmt.Sprint(crash), func(t *testing.T) {
			s, _ := newSampler(t, cfg)
			c := newCollector(t)
			offeredAt := map[span.TraceID]int{}
			held := map[span.TraceID]bool{}
			commit, savedWM := 0, time.Time{}
			for i, tr := range order {
				if i == crash {
					// A commit below the oldest held trace, saved with the
					// sampler's watermark (which the indexer does not
					// store: see Watermark).
					commit = i
					for id, at := range offeredAt {
						if _, decided := c.got[id]; !decided {
							held[id] = true
							commit = min(commit, at)
						}
					}
					savedWM = s.Watermark()
				}
				offeredAt[tr.ID] = i
				c.add(s.Offer(tr))
				c.add(s.Advance(wms[i]))
			}
			c.add(s.Flush())
			require.Positive(t, len(held)+len(order)-crash)

			r, _ := newSampler(t, cfg)
			rc := newCollector(t)
			rc.add(r.Advance(savedWM))
			for i := commit; i < len(order); i++ {
				rc.add(r.Offer(order[i]))
				rc.add(r.Advance(wms[i]))
			}
			rc.add(r.Flush())

			for i := commit; i < len(order); i++ {
				id := order[i].ID
				if i >= crash || held[id] {
					require.Equal(t, c.got[id], rc.got[id], "trace %x offered at %d (crash at %d, commit %d)", id, i, crash, commit)
				}
			}
		})
	}
}

func TestConfig(t *testing.T) {
	cfg := DefaultConfig()
	require.NoError(t, cfg.Validate())
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	require.NoError(t, fs.Parse([]string{"-sampling-topn=5", "-sampling-window=30s", "-sampling-baseline=0.25", "-sampling-max-keys=7"}))
	require.Equal(t, Config{TopN: 5, Window: 30 * time.Second, Baseline: 0.25, MaxKeys: 7}, cfg)

	bad := []struct {
		name string
		mod  func(*Config)
		msg  string
	}{
		{"negative N", func(c *Config) { c.TopN = -1 }, "top-N"},
		{"zero window", func(c *Config) { c.Window = 0 }, "window"},
		{"baseline above 1", func(c *Config) { c.Baseline = 1.5 }, "baseline"},
		{"no keys", func(c *Config) { c.MaxKeys = 0 }, "max keys"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			require.ErrorContains(t, c.Validate(), tc.msg)
			_, err := NewTailSampler(c, nil)
			require.Error(t, err)
		})
	}
	// Registering twice on one registry fails loudly instead of sharing state.
	reg := prometheus.NewRegistry()
	_, err := NewTailSampler(DefaultConfig(), reg)
	require.NoError(t, err)
	_, err = NewTailSampler(DefaultConfig(), reg)
	require.ErrorContains(t, err, "register sampling metrics")
}

func TestFloorDivAndNanos(t *testing.T) {
	require.Equal(t, int64(-1), floorDiv(-1, 60))
	require.Equal(t, int64(-1), floorDiv(-60, 60))
	require.Equal(t, int64(0), floorDiv(59, 60))
	require.Equal(t, int64(1), floorDiv(60, 60))
	// A zero time saturates instead of wrapping into the future.
	require.Less(t, nanos(time.Time{}), int64(0))
}

// TestPinHeld: a trace held in a top-N heap is decided at once by Pin, kept
// only for the pin's reason; its slot frees for the next trace, and a trace
// that is not held is left alone.
func TestPinHeld(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TopN = 2
	s, reg := newSampler(t, cfg)
	tr := func(n int, d time.Duration) TraceInfo {
		return TraceInfo{ID: idN(n), RootService: "a", RootOperation: "x", End: t0, Duration: d}
	}
	require.Empty(t, s.Offer(tr(1, 5)))
	require.Empty(t, s.Offer(tr(2, 7)))
	d, ok := s.Pin(idN(1), ReasonExemplar)
	require.True(t, ok)
	require.Equal(t, Decision{ID: idN(1), Reasons: []string{ReasonExemplar}}, d)
	require.Equal(t, 1, s.Held())
	_, ok = s.Pin(idN(1), ReasonExemplar)
	require.False(t, ok, "already decided")
	_, ok = s.Pin(idN(9), ReasonExemplar)
	require.False(t, ok, "never offered")
	require.Empty(t, s.Offer(tr(3, 1)), "the freed slot takes a trace that would have been too fast")
	require.Equal(t, []Decision{{ID: idN(2), Reasons: []string{ReasonLatencyTopN}}, {ID: idN(3), Reasons: []string{ReasonLatencyTopN}}}, s.Advance(t0.Add(time.Minute)))
	require.Equal(t, 1.0, outcomes(t, reg)[outcomeKeptPinned])
	_, ok = s.Pin(idN(2), ReasonExemplar)
	require.False(t, ok)
	require.Equal(t, 0, s.Keys())
}
