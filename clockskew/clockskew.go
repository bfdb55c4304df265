// Package clockskew repairs clock skew between the hosts of one trace and gives
// every span a logical (causal) timestamp.
//
// Spans from hosts whose clocks disagree produce children that start before
// their parents and server spans that stick out of their client spans. The
// indexer runs an Adjuster on every assembled trace before it derives metrics
// and stores the trace, so the waterfall and the durations agree with causality.
//
// Jaeger ships the same idea switched off by default, because it made correct
// traces worse (jaeger#1459) and users distrust silent corrections (jaeger#961).
// This package differs in the ways that caused those reports:
//
//   - The unit of correction is a service instance (see InstanceOf), and one
//     offset per instance is estimated from every RPC pair that reaches it, not
//     one offset per parent/child pair.
//   - A CLIENT→SERVER pair constrains the offset to an interval (the server span
//     must lie inside the client span). When zero lies in the intersection of
//     those intervals the instance is not touched, so a correct trace is never
//     "corrected", however off-centre its servers are.
//   - Only CLIENT→SERVER pairs are two-sided. Every other cross-instance child
//     (PRODUCER→CONSUMER, FOLLOWS_FROM, INTERNAL, unknown kinds, servers longer
//     than their client) only has to start no earlier than its parent: an async
//     or fire-and-forget child that outlives its parent is left alone.
//   - Every applied offset is recorded on the span (AttrClockSkew) and reported
//     as a warning, and Raw restores the timestamps as received.
//
// On top, every span gets a logical timestamp (AttrLogicalTime): a position in
// a deterministic linear extension of the causal order (parent → child, which
// includes client → server and producer → consumer, and linked span → linking
// span). The UI can order spans causally even where wall clocks could not be
// repaired.
//
// The package is pure: no I/O, no globals. Bad data (parent cycles, link
// cycles, duplicate span IDs, missing parents) produces warnings, never a panic
// or an error: the trace is always returned usable.
package clockskew

import (
	"cmp"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math"
	"slices"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/threadline/threadline/span"
)

// Attribute keys written on spans.
const (
	// AttrClockSkew is the offset in nanoseconds (int) added to the span's start,
	// end and event timestamps. Present only on spans that were shifted; the
	// original start is start − offset.
	AttrClockSkew = "threadline.clock_skew_ns"
	// AttrLogicalTime is the span's logical timestamp (int, 1..len(spans)).
	AttrLogicalTime = "threadline.logical_time"
)

// Config holds the adjuster's settings.
type Config struct {
	// MaxDelta is the largest offset that is applied to an instance; a larger
	// estimate is reported as a warning and not applied, because it more likely
	// means broken instrumentation than a clock that far off. Zero disables
	// wall-clock adjustment (logical timestamps are still assigned).
	// Default: 1h.
	MaxDelta time.Duration
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{MaxDelta: time.Hour}
}

// RegisterFlags registers the config's flags on fs, using c's values as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.MaxDelta, "clockskew.max-delta", c.MaxDelta,
		"Largest clock-skew offset applied to one service instance of a trace; larger estimates are only reported. 0 disables clock-skew adjustment (logical ordering is still assigned).")
}

// Validate reports settings that cannot work.
func (c Config) Validate() error {
	if c.MaxDelta < 0 {
		return errors.New("clockskew.max-delta must not be negative; use 0 to disable clock-skew adjustment")
	}
	return nil
}

// Instance identifies the clock a span was timed with; see InstanceOf.
type Instance string

// Result reports what Adjust did to one trace.
type Result struct {
	// Warnings are trace-level, human-readable notes on what was shifted and
	// what could not be repaired. Empty for a trace that needed nothing.
	Warnings []string
	// Adjusted is the number of spans whose timestamps were shifted.
	Adjusted int
	// Offsets is the offset applied to each shifted instance (only non-zero
	// offsets are present).
	Offsets map[Instance]time.Duration
	// LogicalTimes holds each span's logical timestamp, parallel to Trace.Spans.
	LogicalTimes []int64
}

// Adjuster repairs one trace in place.
type Adjuster interface {
	Adjust(t *span.Trace) Result
}

// AdjusterFunc adapts a function to Adjuster.
type AdjusterFunc func(*span.Trace) Result

// Adjust calls f(t).
func (f AdjusterFunc) Adjust(t *span.Trace) Result { return f(t) }

// CorrectClockSkew returns an Adjuster that estimates one clock offset per
// service instance of a trace, shifts the instance's spans by it, and assigns
// logical timestamps. A negative cfg.MaxDelta is treated as zero (disabled).
//
// Adjust mutates the spans in place. It first undoes an earlier adjustment
// (spans carrying AttrClockSkew), so running it again on a trace that gained
// late spans re-estimates from the original timestamps instead of compounding.
func CorrectClockSkew(cfg Config) Adjuster {
	maxDelta := max(int64(cfg.MaxDelta), 0)
	return AdjusterFunc(func(t *span.Trace) Result { return adjust(t, maxDelta) })
}

var _ Adjuster = AdjusterFunc(nil)

const unbounded = math.MaxInt64

// tree is a trace's span tree, built once per Adjust. Spans are addressed by
// their index in Trace.Spans; int32 indices keep the per-span arrays small.
type tree struct {
	spans    []span.Span
	byID     map[span.SpanID]int32 // first span with each ID; nil for small trees (lookup)
	parent   []int32               // -1 for a root (no parent, missing parent, or cycle broken here)
	childOff []int32               // CSR: children of i are childIdx[childOff[i]:childOff[i+1]]
	childIdx []int32
	order    []int32 // breadth-first from the roots: parents before children
	roots    []int32
	start    []int64 // start time, ns, as received
	end      []int64
	valid    []bool   // start and end are usable for skew estimation
	idKeys   []uint64 // span IDs as numbers, for tie-breaks
	inst     []int32
	insts    []Instance
	warnings []string
}

func (tr *tree) warnf(format string, args ...any) {
	tr.warnings = append(tr.warnings, fmt.Sprintf(format, args...))
}

func adjust(t *span.Trace, maxDelta int64) Result {
	for i := range t.Spans {
		unadjust(&t.Spans[i])
	}
	tr := buildTree(t)
	res := Result{}
	if maxDelta > 0 && len(tr.insts) > 1 {
		res.Offsets, res.Adjusted = tr.correct(maxDelta)
	}
	res.LogicalTimes = tr.logicalTimes(t.ID)
	attrs := newIntAttrs(len(tr.spans))
	for i := range tr.spans {
		attrs.set(&tr.spans[i], AttrLogicalTime, res.LogicalTimes[i])
	}
	res.Warnings = tr.warnings
	return res
}

// smallTree is the span count up to which the tree scans its spans instead
// of building maps: most traces have a handful of spans, for which a map's
// allocation and hashing cost more than the scan. A variable for the test
// that compares the two.
var smallTree = 16

func buildTree(t *span.Trace) *tree {
	n := len(t.Spans)
	// One allocation per element type: parent, inst, childOff, fill and
	// order (the children, childIdx, come after it once counted).
	i32 := make([]int32, 5*n+1)
	i64 := make([]int64, 2*n)
	tr := &tree{
		spans:    t.Spans,
		parent:   i32[:n:n],
		inst:     i32[n : 2*n : 2*n],
		childOff: i32[2*n : 3*n+1 : 3*n+1],
		start:    i64[:n:n],
		end:      i64[n:],
		valid:    make([]bool, n),
		idKeys:   make([]uint64, n),
	}
	if n > smallTree {
		tr.byID = make(map[span.SpanID]int32, n)
	}
	dups := 0
	for i, s := range t.Spans {
		tr.idKeys[i] = idKey(s.GetSpanId())
		if id, ok := spanID(s.GetSpanId()); ok {
			if _, seen := tr.lookup(id, i); seen {
				dups++ // children attach to the first span with the ID
			} else if tr.byID != nil {
				tr.byID[id] = int32(i)
			}
		}
		st, en := s.GetStartTimeUnixNano(), s.GetEndTimeUnixNano()
		tr.valid[i] = st > 0 && st <= math.MaxInt64/2 && en >= st && en <= math.MaxInt64/2
		tr.start[i], tr.end[i] = int64(st), int64(en)
	}
	if dups > 0 {
		tr.warnf("clock skew: %d spans share a span ID with an earlier span; their children attach to the first", dups)
	}
	for i, s := range t.Spans {
		tr.parent[i] = -1
		if pid, ok := spanID(s.GetParentSpanId()); ok {
			if p, ok := tr.lookup(pid, n); ok {
				tr.parent[i] = p
			}
		}
	}
	tr.breakParentCycles()

	// Children in CSR form: one allocation instead of one slice per span.
	for _, p := range tr.parent {
		if p >= 0 {
			tr.childOff[p+1]++
		}
	}
	for i := range n {
		tr.childOff[i+1] += tr.childOff[i]
	}
	tr.childIdx = make([]int32, tr.childOff[n])
	fill := i32[3*n+1 : 4*n+1 : 4*n+1]
	copy(fill, tr.childOff[:n])
	for i, p := range tr.parent {
		if p >= 0 {
			tr.childIdx[fill[p]] = int32(i)
			fill[p]++
		}
	}
	tr.order = i32[4*n+1 : 4*n+1 : 5*n+1]
	for i, p := range tr.parent {
		if p < 0 {
			tr.roots = append(tr.roots, int32(i))
			tr.order = append(tr.order, int32(i))
		}
	}
	for k := 0; k < len(tr.order); k++ {
		i := tr.order[k]
		tr.order = append(tr.order, tr.childIdx[tr.childOff[i]:tr.childOff[i+1]]...)
	}

	// Spans share resources: an instance is computed once per resource.
	var byRes map[*span.Resource]int32
	var byName map[Instance]int32
	if n > smallTree {
		byRes, byName = map[*span.Resource]int32{}, map[Instance]int32{}
	}
	for i, s := range t.Spans {
		tr.inst[i] = tr.instance(i, s.Resource, byRes, byName)
	}
	return tr
}

// instance returns the index in insts of span i's instance, adding it when
// new. A small tree (nil maps) finds a resource among the spans before i
// and a name among insts by scanning.
func (tr *tree) instance(i int, res *span.Resource, byRes map[*span.Resource]int32, byName map[Instance]int32) int32 {
	if byRes == nil {
		if j := slices.IndexFunc(tr.spans[:i], func(o span.Span) bool { return o.Resource == res }); j >= 0 {
			return tr.inst[j]
		}
		name := InstanceOf(res)
		if k := slices.Index(tr.insts, name); k >= 0 {
			return int32(k)
		}
		tr.insts = append(tr.insts, name)
		return int32(len(tr.insts) - 1)
	}
	if id, ok := byRes[res]; ok {
		return id
	}
	name := InstanceOf(res)
	id, ok := byName[name]
	if !ok {
		id = int32(len(tr.insts))
		tr.insts = append(tr.insts, name)
		byName[name] = id
	}
	byRes[res] = id
	return id
}

// lookup returns the first span with the ID among the first n, from byID or,
// for a small tree, by scanning.
func (tr *tree) lookup(id span.SpanID, n int) (int32, bool) {
	if tr.byID != nil {
		i, ok := tr.byID[id]
		return i, ok && int(i) < n
	}
	if i := slices.Index(tr.idKeys[:n], idKey(id[:])); i >= 0 {
		return int32(i), true
	}
	return -1, false
}

// breakParentCycles cuts every loop in the parent relation (bad data: a span
// that is its own ancestor). Each loop is cut at its earliest span, which
// becomes a root, so the rest of the package can rely on a forest.
func (tr *tree) breakParentCycles() {
	const (
		unseen = iota
		onPath
		done
	)
	state := make([]uint8, len(tr.parent))
	var path []int32
	for i := range tr.parent {
		path = path[:0]
		j := int32(i)
		for j >= 0 && state[j] == unseen {
			state[j] = onPath
			path = append(path, j)
			j = tr.parent[j]
		}
		if j >= 0 && state[j] == onPath {
			// path[k:] is the loop that closes at j.
			k := slices.Index(path, j)
			loop := path[k:]
			cut := slices.MinFunc(loop, func(a, b int32) int { return tr.cmpStart(a, b) })
			tr.parent[cut] = -1
			tr.warnf("clock skew: %d spans form a parent cycle; treated span %x as a root", len(loop), tr.spans[cut].GetSpanId())
		}
		for _, p := range path {
			state[p] = done
		}
	}
}

// cmpStart orders spans by start time, then span ID, then position: the
// deterministic tie-break used wherever the package must pick one span.
func (tr *tree) cmpStart(a, b int32) int {
	if c := cmp.Compare(tr.start[a], tr.start[b]); c != 0 {
		return c
	}
	if c := cmp.Compare(tr.idKeys[a], tr.idKeys[b]); c != 0 {
		return c
	}
	return cmp.Compare(a, b)
}

// edge is how a child constrains its instance's offset relative to its parent.
type edge uint8

const (
	// edgeStart: the child must not start before its parent; its end is free
	// (async, fire-and-forget, unknown kinds).
	edgeStart edge = iota
	// edgeRPC: a SERVER child lies inside its CLIENT parent.
	edgeRPC
)

func (tr *tree) classify(p, c int32) edge {
	ps, cs := tr.spans[p], tr.spans[c]
	if ps.GetKind() != tracepb.Span_SPAN_KIND_CLIENT || cs.GetKind() != tracepb.Span_SPAN_KIND_SERVER {
		return edgeStart
	}
	if followsFrom(cs.Span, ps.GetSpanId()) {
		return edgeStart
	}
	// A server longer than its client cannot fit at any offset: a one-way or
	// async RPC. Centring it would move its start before the client's.
	if tr.end[c]-tr.start[c] > tr.end[p]-tr.start[p] {
		return edgeStart
	}
	// A failed client that gave up (timeout, cancel) while the server kept
	// going: the server starts inside the client and ends after it. That is
	// what a timeout looks like, not skew.
	if ps.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR &&
		tr.start[c] >= tr.start[p] && tr.start[c] <= tr.end[p] {
		return edgeStart
	}
	return edgeRPC
}

// followsFrom reports whether s links to parent with the OpenTracing
// FOLLOWS_FROM reference type, as the Jaeger→OTLP translation writes it.
func followsFrom(s *tracepb.Span, parent []byte) bool {
	for _, l := range s.GetLinks() {
		if string(l.GetSpanId()) != string(parent) {
			continue
		}
		for _, kv := range l.GetAttributes() {
			if kv.GetKey() == "opentracing.ref_type" && kv.GetValue().GetStringValue() == "follows_from" {
				return true
			}
		}
	}
	return false
}

// correct estimates and applies one offset per instance. Instances are decided
// in topological order of the instance call graph where it has no loops, so an
// instance is estimated only after every instance that calls it; a loop (A
// calls B calls A) is broken in discovery order. The instance of the largest
// root subtree is the reference clock (offset 0).
func (tr *tree) correct(maxDelta int64) (map[Instance]time.Duration, int) {
	n, k := len(tr.spans), len(tr.insts)
	// Cross-instance edges grouped by the child's instance (in) and by the
	// parent's instance (out), both as lists of child span indices.
	inOff, outOff := make([]int32, k+1), make([]int32, k+1)
	cross := 0
	for c, p := range tr.parent {
		if p >= 0 && tr.inst[p] != tr.inst[c] {
			inOff[tr.inst[c]+1]++
			outOff[tr.inst[p]+1]++
			cross++
		}
	}
	if cross == 0 {
		return nil, 0
	}
	for i := range k {
		inOff[i+1] += inOff[i]
		outOff[i+1] += outOff[i]
	}
	in, out := make([]int32, cross), make([]int32, cross)
	inFill, outFill := slices.Clone(inOff[:k]), slices.Clone(outOff[:k])
	kinds := make([]edge, n)
	for c, p := range tr.parent {
		if p >= 0 && tr.inst[p] != tr.inst[c] {
			in[inFill[tr.inst[c]]] = int32(c)
			inFill[tr.inst[c]]++
			out[outFill[tr.inst[p]]] = int32(c)
			outFill[tr.inst[p]]++
			kinds[c] = tr.classify(p, int32(c))
		}
	}
	indeg := make([]int32, k)
	for i := range k {
		indeg[i] = inOff[i+1] - inOff[i]
	}

	off := make([]int64, k)
	decided := make([]bool, k)
	discovered := make([]bool, k)
	var ready, disc []int32
	decide := func(c int32, o int64) {
		decided[c], off[c] = true, o
		for _, ch := range out[outOff[c]:outOff[c+1]] {
			d := tr.inst[ch]
			indeg[d]--
			if decided[d] {
				continue
			}
			if !discovered[d] {
				discovered[d] = true
				disc = append(disc, d)
			}
			if indeg[d] == 0 {
				ready = append(ready, d)
			}
		}
	}
	estimate := func(c int32) {
		o := tr.estimate(c, in[inOff[c]:inOff[c+1]], kinds, off, decided)
		if o > maxDelta || o < -maxDelta {
			tr.warnf("clock skew: estimated offset %v for instance %s exceeds max delta %v; not applied",
				time.Duration(o), tr.insts[c], time.Duration(maxDelta))
			o = 0
		}
		decide(c, o)
	}

	seeds := tr.rootsBySize()
	for _, r := range seeds {
		if decided[tr.inst[r]] {
			continue
		}
		decide(tr.inst[r], 0)
		for {
			var next int32 = -1
			for len(ready) > 0 && next < 0 {
				if d := ready[0]; !decided[d] {
					next = d
				}
				ready = ready[1:]
			}
			// Nothing ready: a loop in the instance graph, or an instance also
			// called from a subtree not reached yet. Decide the earliest
			// discovered instance from the constraints known so far.
			for len(disc) > 0 && next < 0 {
				if d := disc[0]; !decided[d] {
					next = d
				}
				disc = disc[1:]
			}
			if next < 0 {
				break
			}
			estimate(next)
		}
	}

	// Apply, then report per instance.
	counts := make([]int, k)
	adjusted := 0
	for i := range tr.spans {
		if tr.shifts(int32(i), off) {
			adjusted++
		}
	}
	attrs := newIntAttrs(adjusted)
	for i := range tr.spans {
		if !tr.shifts(int32(i), off) {
			continue
		}
		o := off[tr.inst[i]]
		s := &tr.spans[i]
		shift(s.Span, o)
		s.ForgetWire()
		attrs.set(s, AttrClockSkew, o)
		tr.start[i] += o
		tr.end[i] += o
		counts[tr.inst[i]]++
	}
	var offsets map[Instance]time.Duration
	for c, o := range off {
		if o == 0 || counts[c] == 0 {
			continue
		}
		if offsets == nil {
			offsets = map[Instance]time.Duration{}
		}
		offsets[tr.insts[c]] = time.Duration(o)
		tr.warnf("clock skew: shifted %d spans of instance %s by %v", counts[c], tr.insts[c], time.Duration(o))
	}
	tr.checkResidual(kinds)
	return offsets, adjusted
}

// shifts reports whether span i is moved by its instance's offset. Spans
// without usable timestamps are never moved.
func (tr *tree) shifts(i int32, off []int64) bool {
	o := off[tr.inst[i]]
	return o != 0 && tr.valid[i] && tr.start[i]+o > 0
}

// estimate returns the offset for instance c from its incoming cross-instance
// edges whose parent instance is decided.
//
// Each RPC pair allows offsets in [client.start − server.start, client.end −
// server.end] (parent times already adjusted); every other edge allows
// [parent.start − child.start, +∞). When 0 is in the intersection the
// instance is left alone (never "correct" a correct trace). Otherwise the
// midpoint of the intersection is taken: for a single pair that is Jaeger's and
// Zipkin's centring (network latency split evenly), and with more pairs it is
// the value farthest from violating any of them. Choosing the end closest to 0
// instead would assume zero network latency and be biased by a full one-way
// latency. With only lower bounds, the smallest sufficient shift is taken. An
// empty intersection (pairs disagree) falls back to the median of the pairs'
// centring offsets, with a warning.
func (tr *tree) estimate(c int32, edges []int32, kinds []edge, off []int64, decided []bool) int64 {
	lo, hi := int64(math.MinInt64), int64(unbounded)
	var mids []int64
	used := 0
	for _, ch := range edges {
		p := tr.parent[ch]
		if !decided[tr.inst[p]] || !tr.valid[p] || !tr.valid[ch] {
			continue
		}
		po := off[tr.inst[p]]
		l := tr.start[p] + po - tr.start[ch]
		lo = max(lo, l)
		used++
		if kinds[ch] == edgeRPC {
			h := tr.end[p] + po - tr.end[ch]
			hi = min(hi, h)
			mids = append(mids, l+(h-l)/2)
		}
	}
	switch {
	case used == 0:
		return 0
	case lo <= hi && lo <= 0 && 0 <= hi:
		return 0
	case lo <= hi && hi == unbounded:
		return lo
	case lo <= hi:
		return lo + (hi-lo)/2
	}
	slices.Sort(mids)
	m := mids[len(mids)/2]
	if len(mids)%2 == 0 {
		a := mids[len(mids)/2-1]
		m = a + (m-a)/2
	}
	tr.warnf("clock skew: %d RPC pairs into instance %s disagree (no single offset fits all); used their median centring offset %v",
		len(mids), tr.insts[c], time.Duration(m))
	return m
}

// checkResidual warns about cross-instance edges that are still out of order
// after adjustment, so the UI can say which spans are not to be trusted.
func (tr *tree) checkResidual(kinds []edge) {
	before, outside := 0, 0
	var example []byte
	for c, p := range tr.parent {
		if p < 0 || tr.inst[p] == tr.inst[c] || !tr.valid[p] || !tr.valid[c] {
			continue
		}
		bad := false
		if tr.start[c] < tr.start[p] {
			before++
			bad = true
		}
		if kinds[c] == edgeRPC && tr.end[c] > tr.end[p] {
			outside++
			bad = true
		}
		if bad && example == nil {
			example = tr.spans[c].GetSpanId()
		}
	}
	if before+outside > 0 {
		tr.warnf("clock skew: after adjustment %d spans still start before their parent and %d server spans end after their client (e.g. span %x)",
			before, outside, example)
	}
}

// rootsBySize orders roots so the one with the largest subtree (most likely
// the real root when parents are missing) comes first.
func (tr *tree) rootsBySize() []int32 {
	size := make([]int32, len(tr.spans))
	for k := len(tr.order) - 1; k >= 0; k-- {
		i := tr.order[k]
		size[i]++
		if p := tr.parent[i]; p >= 0 {
			size[p] += size[i]
		}
	}
	roots := slices.Clone(tr.roots)
	slices.SortFunc(roots, func(a, b int32) int {
		if c := cmp.Compare(size[b], size[a]); c != 0 {
			return c
		}
		return tr.cmpStart(a, b)
	})
	return roots
}

func spanID(b []byte) (span.SpanID, bool) {
	var id span.SpanID
	if len(b) != len(id) {
		return id, false
	}
	copy(id[:], b)
	return id, !id.IsZero()
}

// idKey turns an 8-byte span ID into a number with the same order as the bytes.
func idKey(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
