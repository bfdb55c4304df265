package clockskew

import (
	"slices"

	"github.com/threadline/threadline/span"
)

// logicalTimes numbers the spans 1..n in a linear extension of the causal
// order: a span's number is greater than its parent's (which covers client →
// server and producer → consumer) and greater than that of every span of the
// same trace it links to. That is the Lamport condition, made a total order so
// the UI can sort on it alone: among spans whose causes are all numbered, the
// one with the earliest adjusted start (then lowest span ID) goes next.
//
// Links can form loops in bad data (A links B, B links A, or a parent links
// its own child). When every remaining span waits on another, the earliest
// waiting span is numbered anyway and a warning is recorded, so the walk
// always ends.
func (tr *tree) logicalTimes(traceID span.TraceID) []int64 {
	n := len(tr.spans)
	// Same-trace link edges, linked span first; few spans have any.
	var from, to []int32
	for i, s := range tr.spans {
		for _, l := range s.GetLinks() {
			if j, ok := tr.linked(traceID, l.GetTraceId(), l.GetSpanId()); ok && j != int32(i) {
				from, to = append(from, j), append(to, int32(i))
			}
		}
	}
	succOff, succ := tr.successors(from, to)
	indeg := tr.i32.take(n)
	for c, p := range tr.parent {
		if p >= 0 {
			indeg[c]++
		}
	}
	for _, c := range to {
		indeg[c]++
	}

	h := spanHeap{tr: tr, items: tr.i32.take(n)[:0]} // a span is pushed at most once
	for i := range n {
		if indeg[i] == 0 {
			h.push(int32(i))
		}
	}
	out := make([]int64, n)
	var byStart []int32 // built only if a loop forces a span out of order
	next, forced := 0, 0
	for t := int64(1); t <= int64(n); t++ {
		if len(h.items) == 0 {
			if byStart == nil {
				byStart = tr.i32.take(n)
				for i := range byStart {
					byStart[i] = int32(i)
				}
				slices.SortFunc(byStart, tr.cmpStart)
			}
			for out[byStart[next]] != 0 {
				next++
			}
			indeg[byStart[next]] = 0
			h.push(byStart[next])
			forced++
		}
		i := h.pop()
		out[i] = t
		for _, c := range succ[succOff[i]:succOff[i+1]] {
			indeg[c]--
			if indeg[c] == 0 {
				h.push(c)
			}
		}
	}
	if forced > 0 {
		tr.warnf("logical time: span links form a causal loop; %d spans were ordered by start time before all their causes", forced)
	}
	return out
}

// linked resolves a link to a span index when it points into this trace.
func (tr *tree) linked(traceID span.TraceID, linkTrace, linkSpan []byte) (int32, bool) {
	if len(linkTrace) != 0 && string(linkTrace) != string(traceID[:]) {
		return 0, false
	}
	id, ok := spanID(linkSpan)
	if !ok {
		return 0, false
	}
	return tr.lookup(id, len(tr.spans))
}

// spanHeap is a binary min-heap of span indices ordered by tree.cmpStart.
// Hand-written rather than container/heap to avoid boxing every index.
type spanHeap struct {
	tr    *tree
	items []int32
}

func (h *spanHeap) push(i int32) {
	h.items = append(h.items, i)
	k := len(h.items) - 1
	for k > 0 {
		p := (k - 1) / 2
		if h.tr.cmpStart(h.items[k], h.items[p]) >= 0 {
			break
		}
		h.items[k], h.items[p] = h.items[p], h.items[k]
		k = p
	}
}

func (h *spanHeap) pop() int32 {
	top := h.items[0]
	last := len(h.items) - 1
	h.items[0] = h.items[last]
	h.items = h.items[:last]
	k := 0
	for {
		l, r, m := 2*k+1, 2*k+2, k
		if l < last && h.tr.cmpStart(h.items[l], h.items[m]) < 0 {
			m = l
		}
		if r < last && h.tr.cmpStart(h.items[r], h.items[m]) < 0 {
			m = r
		}
		if m == k {
			return top
		}
		h.items[k], h.items[m] = h.items[m], h.items[k]
		k = m
	}
}
