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
	"sync"
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
// It is safe for concurrent use.
func CorrectClockSkew(cfg Config) Adjuster { return newAdjuster(cfg, true) }

// RepairClockSkew is CorrectClockSkew without the logical timestamps
// (Result.LogicalTimes is nil, and no span gets AttrLogicalTime). The
// indexer stores traces so: a reader assigns logical timestamps to the
// whole trace as stored (StampLogicalTimes), which numbers the spans of
// every write of it together, and the store neither keeps nor indexes an
// attribute it can compute.
func RepairClockSkew(cfg Config) Adjuster { return newAdjuster(cfg, false) }

func newAdjuster(cfg Config, logical bool) Adjuster {
	maxDelta := max(int64(cfg.MaxDelta), 0)
	return AdjusterFunc(func(t *span.Trace) Result {
		var res Result
		withTree(len(t.Spans), func(tr *tree) { res = tr.adjust(t, maxDelta, logical) })
		return res
	})
}

// StampLogicalTimes assigns every span of t its logical timestamp
// (AttrLogicalTime, replacing one it carries) from the trace as it is,
// timestamps already adjusted, and returns the warnings of the ordering
// (span links that form a cycle). It is safe for concurrent use.
func StampLogicalTimes(t *span.Trace) []string {
	var warnings []string
	withTree(len(t.Spans), func(tr *tree) {
		tr.build(t)
		tr.stampLogical(t.ID, tr.newStamps(nil, true))
		warnings = tr.warnings
	})
	return warnings
}

// trees holds the trees of Adjust and StampLogicalTimes: they run once per
// trace, from several goroutines at once, and most traces are small, so
// reusing a tree's arrays spares the dozens of allocations building one
// would cost each trace.
var trees sync.Pool

// withTree calls f with a tree for a trace of n spans.
func withTree(n int, f func(*tree)) {
	if n > maxPooledSpans {
		// A large trace amortizes its allocations over its spans;
		// buffers grown for it would be part waste, kept alive by the
		// pool after the trace is gone.
		f(newTree(0))
		return
	}
	tr, _ := trees.Get().(*tree)
	if tr == nil {
		tr = newTree(maxSlab)
	}
	f(tr)
	tr.reset()
	trees.Put(tr)
}

// maxPooledSpans is the largest trace adjusted with a pooled tree.
const maxPooledSpans = 4096

var _ Adjuster = AdjusterFunc(nil)

const unbounded = math.MaxInt64

// tree is a trace's span tree, built once per Adjust. Spans are addressed by
// their index in Trace.Spans; int32 indices keep the per-span arrays small.
//
// Every array is carved from the tree's slabs, which outlive the trace when
// the tree is pooled. Only what a trace needs is built: instances, children
// and the instance call graph only for a trace with a skewed pair.
type tree struct {
	spans  []span.Span
	byID   map[span.SpanID]int32 // first span with each ID; nil for small trees (lookup)
	parent []int32               // -1 for a root (no parent, missing parent, or cycle broken here)
	start  []int64               // start time, ns, as received (as shifted, once applied)
	end    []int64
	valid  []bool   // start and end are usable for skew estimation
	idKeys []uint64 // span IDs as numbers, for tie-breaks

	// Set by groupInstances.
	inst  []int32
	insts []instKey // by first appearance; the array is reused across traces

	kinds    []edge // set by correct, for cross-instance children
	warnings []string

	i32   slab[int32]
	i64   slab[int64]
	u64   slab[uint64]
	flags slab[bool]
	edges slab[edge]
}

// newTree returns a tree whose slabs grow their buffers up to limit
// elements (see slab).
func newTree(limit int) *tree {
	return &tree{
		i32: slab[int32]{limit: limit}, i64: slab[int64]{limit: limit}, u64: slab[uint64]{limit: limit},
		flags: slab[bool]{limit: limit}, edges: slab[edge]{limit: limit},
	}
}

// reset readies a used tree for the next trace. It drops every reference
// into the trace (so a pooled tree does not keep it alive) and the warnings,
// which the caller now owns, and keeps the arrays.
func (tr *tree) reset() {
	clear(tr.insts)
	*tr = tree{
		insts: tr.insts[:0],
		i32:   tr.i32.reset(), i64: tr.i64.reset(), u64: tr.u64.reset(),
		flags: tr.flags.reset(), edges: tr.edges.reset(),
	}
}

// slab hands out zeroed slices carved from one buffer that is kept across
// traces, so a pooled tree serves a trace no larger than those it has seen
// without allocating. A slice that does not fit under the limit is
// allocated on its own.
type slab[T any] struct {
	buf   []T
	used  int
	limit int // largest buffer, in elements; 0: every slice on its own
}

// maxSlab is the buffer limit of a pooled tree: enough for the arrays of a
// trace of maxPooledSpans spans with a few links each. It bounds what a
// pooled tree keeps alive.
const maxSlab = 32 * maxPooledSpans

func (s *slab[T]) take(n int) []T {
	if s.used+n > len(s.buf) {
		if s.used+n > s.limit {
			return make([]T, n)
		}
		// Slices handed out so far keep the old buffer alive. The new one
		// fits this trace's arrays so far, so after a few traces of one size
		// a single buffer serves them all.
		s.buf = make([]T, min(max(2*len(s.buf), s.used+n), s.limit))
		s.used = 0
	}
	out := s.buf[s.used : s.used+n : s.used+n]
	s.used += n
	clear(out)
	return out
}

func (s slab[T]) reset() slab[T] { return slab[T]{buf: s.buf, limit: s.limit} }

func (tr *tree) warnf(format string, args ...any) {
	tr.warnings = append(tr.warnings, fmt.Sprintf(format, args...))
}

// adjust repairs t's timestamps and, when logical, assigns logical
// timestamps.
func (tr *tree) adjust(t *span.Trace, maxDelta int64, logical bool) Result {
	for i := range t.Spans {
		unadjust(&t.Spans[i])
	}
	tr.build(t)
	// A trace without a skewed pair needs no offset (see skewed): most
	// traces stop here, before instances and the call graph are built.
	var off []int64
	if maxDelta > 0 && tr.skewed() {
		tr.groupInstances()
		if len(tr.insts) > 1 {
			off = tr.correct(maxDelta)
		}
	}
	if off == nil && !logical {
		return Result{Warnings: tr.warnings}
	}
	stamps := tr.newStamps(off, logical)
	res := Result{}
	if off != nil {
		room := 1
		if logical {
			room = 2 // and AttrLogicalTime
		}
		res.Offsets, res.Adjusted = tr.apply(off, &stamps, room)
		tr.checkResidual()
	}
	if logical {
		res.LogicalTimes = tr.stampLogical(t.ID, stamps)
	}
	res.Warnings = tr.warnings
	return res
}

// stampLogical assigns the logical timestamps, with room from stamps.
func (tr *tree) stampLogical(id span.TraceID, stamps intAttrs) []int64 {
	times := tr.logicalTimes(id)
	for i := range tr.spans {
		stamps.set(&tr.spans[i], AttrLogicalTime, times[i], 1)
	}
	return times
}

// smallTree is the span count up to which the tree scans its spans instead
// of building maps: most traces have a handful of spans, for which a map's
// allocation and hashing cost more than the scan. A variable for the test
// that compares the two.
var smallTree = 16

// build fills in the tree's spans, times, IDs and parents, and breaks
// parent cycles.
func (tr *tree) build(t *span.Trace) {
	n := len(t.Spans)
	tr.spans = t.Spans
	tr.parent = tr.i32.take(n)
	tr.start, tr.end = tr.i64.take(n), tr.i64.take(n)
	tr.valid = tr.flags.take(n)
	tr.idKeys = tr.u64.take(n)
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
}

// skewed reports whether some parent/child pair with usable times is out of
// order: the child starts before its parent, or it is the server of an RPC
// pair (see classify) and ends after its client. Without such a pair every
// instance's estimate is 0 (0 lies in each pair's interval, see estimate),
// so correct would shift nothing and warn nothing. Pairs within one
// instance are checked too: that only sends a few traces down the full path.
func (tr *tree) skewed() bool {
	for c, p := range tr.parent {
		if p < 0 || !tr.valid[p] || !tr.valid[c] {
			continue
		}
		if tr.start[c] < tr.start[p] {
			return true
		}
		if tr.end[c] > tr.end[p] && tr.classify(p, int32(c)) == edgeRPC {
			return true
		}
	}
	return false
}

// groupInstances sets inst and insts: spans share resources, so an
// instance is computed once per resource. A small tree finds a resource
// among the spans before it and a name among insts by scanning.
func (tr *tree) groupInstances() {
	n := len(tr.spans)
	tr.inst = tr.i32.take(n)
	if n <= smallTree {
		for i, s := range tr.spans {
			if j := slices.IndexFunc(tr.spans[:i], func(o span.Span) bool { return o.Resource == s.Resource }); j >= 0 {
				tr.inst[i] = tr.inst[j]
				continue
			}
			key := instanceKey(s.Resource)
			k := slices.IndexFunc(tr.insts, key.sameName)
			if k < 0 {
				k = len(tr.insts)
				tr.insts = append(tr.insts, key)
			}
			tr.inst[i] = int32(k)
		}
		return
	}
	byRes, byName := map[*span.Resource]int32{}, map[Instance]int32{}
	for i, s := range tr.spans {
		id, ok := byRes[s.Resource]
		if !ok {
			key := instanceKey(s.Resource)
			name := key.name()
			if id, ok = byName[name]; !ok {
				id = int32(len(tr.insts))
				tr.insts = append(tr.insts, key)
				byName[name] = id
			}
			byRes[s.Resource] = id
		}
		tr.inst[i] = id
	}
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
	state := tr.i32.take(len(tr.parent))
	path := tr.i32.take(len(tr.parent))[:0] // a span is on at most one path
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

// correct estimates one offset per instance, indexed like insts, and sets
// kinds; it returns nil when no child is on another instance than its parent
// (nothing to estimate or check). Instances are decided in topological order
// of the instance call graph where it has no loops, so an instance is
// estimated only after every instance that calls it; a loop (A calls B calls
// A) is broken in discovery order. The instance of the largest root subtree
// is the reference clock (offset 0).
func (tr *tree) correct(maxDelta int64) []int64 {
	n, k := len(tr.spans), len(tr.insts)
	// Cross-instance edges grouped by the child's instance (in) and by the
	// parent's instance (out), both as lists of child span indices.
	inOff, outOff := tr.i32.take(k+1), tr.i32.take(k+1)
	cross := 0
	for c, p := range tr.parent {
		if p >= 0 && tr.inst[p] != tr.inst[c] {
			inOff[tr.inst[c]+1]++
			outOff[tr.inst[p]+1]++
			cross++
		}
	}
	if cross == 0 {
		return nil
	}
	for i := range k {
		inOff[i+1] += inOff[i]
		outOff[i+1] += outOff[i]
	}
	in, out := tr.i32.take(cross), tr.i32.take(cross)
	inFill, outFill := tr.i32.take(k), tr.i32.take(k)
	copy(inFill, inOff)
	copy(outFill, outOff)
	kinds := tr.edges.take(n)
	for c, p := range tr.parent {
		if p >= 0 && tr.inst[p] != tr.inst[c] {
			in[inFill[tr.inst[c]]] = int32(c)
			inFill[tr.inst[c]]++
			out[outFill[tr.inst[p]]] = int32(c)
			outFill[tr.inst[p]]++
			kinds[c] = tr.classify(p, int32(c))
		}
	}
	tr.kinds = kinds
	indeg := tr.i32.take(k)
	for i := range k {
		indeg[i] = inOff[i+1] - inOff[i]
	}

	off := tr.i64.take(k)
	decided, discovered := tr.flags.take(k), tr.flags.take(k)
	// Each instance joins each queue at most once.
	ready, disc := tr.i32.take(k)[:0], tr.i32.take(k)[:0]
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
		o := tr.estimate(c, in[inOff[c]:inOff[c+1]], off, decided)
		if o > maxDelta || o < -maxDelta {
			tr.warnf("clock skew: estimated offset %v for instance %s exceeds max delta %v; not applied",
				time.Duration(o), tr.insts[c].name(), time.Duration(maxDelta))
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
	return off
}

// apply shifts every span that moves by its instance's offset, stamps it
// with AttrClockSkew (growing its attribute list by room: the attributes
// to be stamped on it), and reports per instance.
func (tr *tree) apply(off []int64, stamps *intAttrs, room int) (map[Instance]time.Duration, int) {
	counts := tr.i32.take(len(tr.insts))
	adjusted := 0
	for i := range tr.spans {
		if !tr.shifts(int32(i), off) {
			continue
		}
		o := off[tr.inst[i]]
		s := &tr.spans[i]
		shift(s.Span, o)
		s.ForgetWire()
		stamps.set(s, AttrClockSkew, o, room)
		tr.start[i] += o
		tr.end[i] += o
		counts[tr.inst[i]]++
		adjusted++
	}
	var offsets map[Instance]time.Duration
	for c, o := range off {
		if o == 0 || counts[c] == 0 {
			continue
		}
		if offsets == nil {
			offsets = map[Instance]time.Duration{}
		}
		name := tr.insts[c].name()
		offsets[name] = time.Duration(o)
		tr.warnf("clock skew: shifted %d spans of instance %s by %v", counts[c], name, time.Duration(o))
	}
	return offsets, adjusted
}

// newStamps returns room for the attributes Adjust writes: AttrLogicalTime
// on every span when logical, and AttrClockSkew on each span off shifts
// (nil: none).
func (tr *tree) newStamps(off []int64, logical bool) intAttrs {
	stamps, lists := 0, 0
	for i := range tr.spans {
		s := tr.spans[i].Span
		if s == nil {
			continue
		}
		need := 0
		if logical {
			need++
		}
		if off != nil && tr.shifts(int32(i), off) {
			need++
		}
		if need == 0 {
			continue
		}
		stamps += need
		if cap(s.Attributes)-len(s.Attributes) < need {
			lists += len(s.Attributes) + need
		}
	}
	return newIntAttrs(stamps, lists)
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
func (tr *tree) estimate(c int32, edges []int32, off []int64, decided []bool) int64 {
	lo, hi := int64(math.MinInt64), int64(unbounded)
	mids := tr.i64.take(len(edges))[:0]
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
		if tr.kinds[ch] == edgeRPC {
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
		len(mids), tr.insts[c].name(), time.Duration(m))
	return m
}

// checkResidual warns about cross-instance edges that are still out of order
// after adjustment, so the UI can say which spans are not to be trusted.
func (tr *tree) checkResidual() {
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
		if tr.kinds[c] == edgeRPC && tr.end[c] > tr.end[p] {
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
	order, roots := tr.breadthFirst()
	size := tr.i32.take(len(tr.spans))
	for k := len(order) - 1; k >= 0; k-- {
		i := order[k]
		size[i]++
		if p := tr.parent[i]; p >= 0 {
			size[p] += size[i]
		}
	}
	slices.SortFunc(roots, func(a, b int32) int {
		if c := cmp.Compare(size[b], size[a]); c != 0 {
			return c
		}
		return tr.cmpStart(a, b)
	})
	return roots
}

// successors returns every span's successors in CSR form, those of span i
// being succ[off[i]:off[i+1]]: its children in span order, then the extra
// edges from[k] → to[k] in their order.
func (tr *tree) successors(from, to []int32) (off, succ []int32) {
	n := len(tr.spans)
	off = tr.i32.take(n + 1)
	for _, p := range tr.parent {
		if p >= 0 {
			off[p+1]++
		}
	}
	for _, f := range from {
		off[f+1]++
	}
	for i := range n {
		off[i+1] += off[i]
	}
	succ = tr.i32.take(int(off[n]))
	fill := tr.i32.take(n)
	copy(fill, off)
	for c, p := range tr.parent {
		if p >= 0 {
			succ[fill[p]] = int32(c)
			fill[p]++
		}
	}
	for k, f := range from {
		succ[fill[f]] = to[k]
		fill[f]++
	}
	return off, succ
}

// breadthFirst returns the spans breadth-first from the roots (parents
// before children) and the roots, in span order.
func (tr *tree) breadthFirst() (order, roots []int32) {
	n := len(tr.spans)
	childOff, childIdx := tr.successors(nil, nil)
	// The parent relation is a forest: every span is reached exactly once.
	order = tr.i32.take(n)[:0]
	roots = tr.i32.take(n)[:0]
	for i, p := range tr.parent {
		if p < 0 {
			roots = append(roots, int32(i))
			order = append(order, int32(i))
		}
	}
	for k := 0; k < len(order); k++ {
		i := order[k]
		order = append(order, childIdx[childOff[i]:childOff[i+1]]...)
	}
	return order, roots
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
