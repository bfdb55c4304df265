package clockskew

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

// requireLogicalOrder asserts the logical timestamps are a permutation of
// 1..n, are stored on the spans, and respect every parent and link edge.
func requireLogicalOrder(t *testing.T, tr *span.Trace, res Result) {
	t.Helper()
	require.Len(t, res.LogicalTimes, len(tr.Spans))
	sorted := slices.Clone(res.LogicalTimes)
	slices.Sort(sorted)
	for i, v := range sorted {
		if v != int64(i+1) {
			require.FailNow(t, "logical times are not a permutation of 1..n", "%d at position %d", v, i)
		}
	}
	byID := map[string]int{}
	for i, s := range tr.Spans {
		byID[string(s.GetSpanId())] = i
		if v, ok := intAttr(s.Span, AttrLogicalTime); !ok || v != res.LogicalTimes[i] {
			require.FailNow(t, "logical time attribute", "span %s: attribute %d (present %v), result %d", s.GetName(), v, ok, res.LogicalTimes[i])
		}
	}
	for i, s := range tr.Spans {
		if p, ok := byID[string(s.GetParentSpanId())]; ok && res.LogicalTimes[i] <= res.LogicalTimes[p] {
			require.FailNow(t, "logical time", "span %s not after its parent", s.GetName())
		}
		for _, l := range s.GetLinks() {
			if j, ok := byID[string(l.GetSpanId())]; ok && j != i && res.LogicalTimes[i] <= res.LogicalTimes[j] {
				require.FailNow(t, "logical time", "span %s not after the span it links", s.GetName())
			}
		}
	}
}

// TestRandomTraces is the property test: on random causally consistent trees
// with random per-instance skew, Adjust restores causality, logical time
// respects every causal edge, the result does not depend on arrival order,
// and Raw gives back exactly what was received.
func TestRandomTraces(t *testing.T) {
	adj := CorrectClockSkew(DefaultConfig())
	for seed := range uint64(100) {
		rng := rand.New(rand.NewPCG(seed, 42))
		n := 2 + rng.IntN(200)
		tr, _, _ := genTrace(rng, n, 5*sec, genOpts{links: true})
		orig := cloneSpans(tr)

		res := adj.Adjust(tr)
		requireCausal(t, tr)
		requireLogicalOrder(t, tr, res)
		for _, w := range res.Warnings {
			require.Contains(t, w, "shifted", "seed %d: unexpected warning", seed)
		}

		// Same spans, another arrival order: the same times and logical order.
		shuffled := &span.Trace{ID: tr.ID}
		for _, s := range tr.Spans {
			c := s
			c.Span = proto.Clone(s.Span).(*tracepb.Span)
			shuffled.Spans = append(shuffled.Spans, c)
		}
		rng.Shuffle(len(shuffled.Spans), func(i, j int) { shuffled.Spans[i], shuffled.Spans[j] = shuffled.Spans[j], shuffled.Spans[i] })
		Raw(shuffled)
		res2 := adj.Adjust(shuffled)
		want := map[string][2]uint64{}
		for i, s := range tr.Spans {
			want[string(s.GetSpanId())] = [2]uint64{s.GetStartTimeUnixNano(), uint64(res.LogicalTimes[i])}
		}
		for i, s := range shuffled.Spans {
			require.Equal(t, want[string(s.GetSpanId())], [2]uint64{s.GetStartTimeUnixNano(), uint64(res2.LogicalTimes[i])}, "seed %d", seed)
		}

		Raw(tr)
		for i := range tr.Spans {
			require.True(t, proto.Equal(orig[i], tr.Spans[i].Span), "seed %d span %d", seed, i)
		}
	}
}

// TestRandomSkewEstimates checks the estimated offsets against the injected
// ones. Each RPC pair leaves at most 2×slack of freedom, so an instance d calls
// below the reference may be off by at most 2×slack×d (errors add up along
// the call chain); with 5 s skews that is a tight bound.
func TestRandomSkewEstimates(t *testing.T) {
	const slack = ms
	for seed := range uint64(10) {
		rng := rand.New(rand.NewPCG(seed, 7))
		tr, skews, depths := genTrace(rng, 2000, 5*sec, genOpts{noAsync: true, rpcSlack: slack})
		res := CorrectClockSkew(DefaultConfig()).Adjust(tr)
		requireCausal(t, tr)
		for inst, skew := range skews {
			residual := skew + res.Offsets[inst]
			require.LessOrEqual(t, residual.Abs(), time.Duration(2*depths[inst])*slack, "seed %d instance %s (depth %d)", seed, inst, depths[inst])
		}
	}
}

func TestCycles(t *testing.T) {
	tests := []struct {
		name string
		rows []row
		warn string
	}{
		{
			name: "two spans are each other's parent",
			rows: []row{
				{name: "a", parent: "b", inst: "a@h1", start: 10 * ms, end: 20 * ms},
				{name: "b", parent: "a", inst: "b@h2", start: 0, end: 30 * ms},
				{name: "c", parent: "a", inst: "c@h3", start: 12 * ms, end: 15 * ms},
			},
			warn: "2 spans form a parent cycle",
		},
		{
			name: "span is its own parent",
			rows: []row{
				{name: "a", parent: "a", inst: "a@h1", start: 10 * ms, end: 20 * ms},
			},
			warn: "1 spans form a parent cycle",
		},
		{
			name: "spans link each other",
			rows: []row{
				{name: "a", inst: "a@h1", start: 10 * ms, end: 20 * ms, links: []string{"b"}},
				{name: "b", inst: "b@h2", start: 0, end: 30 * ms, links: []string{"a"}},
			},
			warn: "logical time: span links form",
		},
		{
			name: "parent links its own child",
			rows: []row{
				{name: "a", inst: "a@h1", kind: cli, start: 10 * ms, end: 20 * ms, links: []string{"b"}},
				{name: "b", parent: "a", inst: "b@h2", kind: srv, start: 12 * ms, end: 18 * ms},
			},
			warn: "logical time: span links form",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := build(tc.rows)
			res := CorrectClockSkew(DefaultConfig()).Adjust(tr)
			require.True(t, containsSub(res.Warnings, tc.warn), "warnings %q", res.Warnings)
			sorted := slices.Clone(res.LogicalTimes)
			slices.Sort(sorted)
			for i, v := range sorted {
				require.Equal(t, int64(i+1), v)
			}
		})
	}

	// A long ring of parents and a long ring of links finish in linear time.
	const n = 20000
	var rows []row
	for i := range n {
		rows = append(rows, row{
			name: fmt.Sprint("r", i), parent: fmt.Sprint("r", (i+1)%n), inst: fmt.Sprintf("s@h%d", i%3),
			start: time.Duration(i) * ms, end: time.Duration(i+5) * ms,
			links: []string{fmt.Sprint("r", (i+7)%n)},
		})
	}
	tr := build(rows)
	res := CorrectClockSkew(DefaultConfig()).Adjust(tr)
	require.True(t, containsSub(res.Warnings, fmt.Sprintf("%d spans form a parent cycle", n)), "%q", res.Warnings)
	require.Len(t, res.LogicalTimes, n)
}

// TestLargeTrace adjusts a 100k-span trace and checks the result.
func TestLargeTrace(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tr, _, _ := genTrace(rng, 100_000, 5*sec, genOpts{links: true})
	begin := time.Now()
	res := CorrectClockSkew(DefaultConfig()).Adjust(tr)
	t.Logf("100k spans adjusted in %v (%d shifted)", time.Since(begin), res.Adjusted)
	require.Positive(t, res.Adjusted)
	requireCausal(t, tr)
	requireLogicalOrder(t, tr, res)
}

// TestRepairThenStamp: RepairClockSkew shifts and marks spans exactly as
// CorrectClockSkew does but stamps no logical timestamps, and
// StampLogicalTimes on the repaired trace (what a reader does with the
// stored trace) gives the logical timestamps CorrectClockSkew assigns.
func TestRepairThenStamp(t *testing.T) {
	correct, repair := CorrectClockSkew(DefaultConfig()), RepairClockSkew(DefaultConfig())
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 43))
		tr, _, _ := genTrace(rng, 2+rng.IntN(100), 5*sec, genOpts{links: true})
		repaired := &span.Trace{ID: tr.ID}
		for i, s := range cloneSpans(tr) {
			repaired.Spans = append(repaired.Spans, span.Span{Span: s, Resource: tr.Spans[i].Resource, Scope: tr.Spans[i].Scope})
		}
		want := correct.Adjust(tr)
		got := repair.Adjust(repaired)
		require.Nil(t, got.LogicalTimes)
		require.Equal(t, want.Offsets, got.Offsets, "seed %d", seed)
		for i, s := range repaired.Spans {
			_, stamped := intAttr(s.Span, AttrLogicalTime)
			require.False(t, stamped, "seed %d", seed)
			require.Equal(t, tr.Spans[i].GetStartTimeUnixNano(), s.GetStartTimeUnixNano(), "seed %d", seed)
			skew, _ := intAttr(tr.Spans[i].Span, AttrClockSkew)
			gotSkew, _ := intAttr(s.Span, AttrClockSkew)
			require.Equal(t, skew, gotSkew, "seed %d", seed)
		}
		require.Empty(t, StampLogicalTimes(repaired), "seed %d", seed)
		requireLogicalOrder(t, repaired, want)
		// Stamping again replaces the timestamps rather than adding them.
		StampLogicalTimes(repaired)
		for _, s := range repaired.Spans {
			n := 0
			for _, kv := range s.GetAttributes() {
				if kv.GetKey() == AttrLogicalTime {
					n++
				}
			}
			require.Equal(t, 1, n, "seed %d", seed)
		}
	}
}
