package indexer

import "github.com/threadline/threadline/span"

// decisionCache remembers recent decisions (reasons kept, nil for dropped) so a
// span arriving after its trace was decided follows that decision instead of
// starting a new, partial trace. It is a bounded FIFO: memory stays fixed.
type decisionCache struct {
	m    map[span.TraceID][]string
	ring []span.TraceID
	next int
	full bool
}

func newDecisionCache(size int) *decisionCache {
	return &decisionCache{m: make(map[span.TraceID][]string, size), ring: make([]span.TraceID, size)}
}

func (c *decisionCache) get(id span.TraceID) ([]string, bool) {
	r, ok := c.m[id]
	return r, ok
}

func (c *decisionCache) put(id span.TraceID, reasons []string) {
	if _, ok := c.m[id]; ok {
		c.m[id] = reasons
		return
	}
	if c.full {
		delete(c.m, c.ring[c.next])
	}
	c.ring[c.next] = id
	c.m[id] = reasons
	c.next++
	if c.next == len(c.ring) {
		c.next, c.full = 0, true
	}
}

func (c *decisionCache) len() int { return len(c.m) }
