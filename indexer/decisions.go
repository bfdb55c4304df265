package indexer

import (
	"encoding/binary"
	"slices"

	"github.com/threadline/threadline/span"
)

// decisionCache remembers recent decisions (reasons kept, nil for dropped) so a
// span arriving after its trace was decided follows that decision instead of
// starting a new, partial trace. It is a bounded FIFO: memory stays fixed.
//
// It holds hundreds of thousands of entries, so an entry is pointer-free:
// the trace ID and the number of its reason list, interned (traces are kept
// for a handful of reason combinations). A map of trace ID to []string took
// about 85 bytes per entry, all of it scanned by every GC cycle; this takes
// about 40, none of it scanned.
type decisionCache struct {
	m    map[span.TraceID]uint32 // index into lists
	ring []span.TraceID
	next int
	full bool

	lists  [][]string        // interned reason lists; lists[0] is nil (dropped)
	listOf map[string]uint32 // encoded reasons (see intern) -> index into lists
	key    []byte            // scratch
}

// maxReasonLists bounds the interned reason lists. Reasons come from a small
// fixed set, so it is never reached in practice; if it is, the cache starts
// over, which only costs late spans their trace's decision.
const maxReasonLists = 1 << 12

func newDecisionCache(size int) *decisionCache {
	c := &decisionCache{m: make(map[span.TraceID]uint32, size), ring: make([]span.TraceID, size)}
	c.reset()
	return c
}

func (c *decisionCache) reset() {
	clear(c.m)
	c.next, c.full = 0, false
	c.lists = [][]string{nil}
	c.listOf = map[string]uint32{}
}

// get returns the reasons a trace was kept for (nil: dropped) and whether it
// was decided. The slice is shared: callers must not modify it.
func (c *decisionCache) get(id span.TraceID) ([]string, bool) {
	i, ok := c.m[id]
	if !ok {
		return nil, false
	}
	return c.lists[i], true
}

func (c *decisionCache) put(id span.TraceID, reasons []string) {
	i := c.intern(reasons)
	if _, ok := c.m[id]; ok {
		c.m[id] = i
		return
	}
	if c.full {
		delete(c.m, c.ring[c.next])
	}
	c.ring[c.next] = id
	c.m[id] = i
	c.next++
	if c.next == len(c.ring) {
		c.next, c.full = 0, true
	}
}

// intern returns the number of a reason list, adding it if new.
func (c *decisionCache) intern(reasons []string) uint32 {
	if len(reasons) == 0 {
		return 0
	}
	c.key = c.key[:0]
	for _, r := range reasons {
		c.key = binary.AppendUvarint(c.key, uint64(len(r)))
		c.key = append(c.key, r...)
	}
	if i, ok := c.listOf[string(c.key)]; ok {
		return i
	}
	if len(c.lists) >= maxReasonLists {
		c.reset()
	}
	i := uint32(len(c.lists))
	c.lists = append(c.lists, slices.Clone(reasons))
	c.listOf[string(c.key)] = i
	return i
}

func (c *decisionCache) len() int { return len(c.m) }
