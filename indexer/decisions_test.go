package indexer

import (
	"slices"
	"testing"

	"github.com/threadline/threadline/span"
)

func tid(n byte) span.TraceID { return span.TraceID{15: n, 0: 1} }

func TestDecisionCache(t *testing.T) {
	c := newDecisionCache(3)
	c.put(tid(1), []string{"error", "baseline"})
	c.put(tid(2), nil)
	c.put(tid(3), []string{"error", "baseline"})

	if r, ok := c.get(tid(1)); !ok || !slices.Equal(r, []string{"error", "baseline"}) {
		t.Fatalf("get(1) = %q, %v", r, ok)
	}
	if r, ok := c.get(tid(2)); !ok || r != nil {
		t.Fatalf("get(2) = %q, %v; want dropped", r, ok)
	}
	if _, ok := c.get(tid(9)); ok {
		t.Fatal("get of an unknown trace found a decision")
	}
	if len(c.lists) != 2 {
		t.Fatalf("%d reason lists interned, want 2 (none, error+baseline)", len(c.lists))
	}

	// A re-decided trace keeps its place; a fourth trace evicts the oldest.
	c.put(tid(2), []string{"exemplar"})
	if r, _ := c.get(tid(2)); !slices.Equal(r, []string{"exemplar"}) {
		t.Fatalf("get(2) after re-put = %q", r)
	}
	c.put(tid(4), []string{"baseline"})
	if _, ok := c.get(tid(1)); ok {
		t.Fatal("oldest decision not evicted")
	}
	if c.len() != 3 {
		t.Fatalf("len = %d, want 3", c.len())
	}

	// Lists that join to the same text are still told apart.
	c.put(tid(5), []string{"a", "b"})
	c.put(tid(6), []string{"a\x01b"})
	r5, _ := c.get(tid(5))
	r6, _ := c.get(tid(6))
	if !slices.Equal(r5, []string{"a", "b"}) || !slices.Equal(r6, []string{"a\x01b"}) {
		t.Fatalf("got %q and %q", r5, r6)
	}
}

func TestDecisionCacheInternOverflow(t *testing.T) {
	c := newDecisionCache(8)
	c.put(tid(1), []string{"baseline"})
	for i := range maxReasonLists {
		c.intern([]string{string(rune('a' + i%26)), string(rune(i))})
	}
	// The cache started over: old entries are gone, new ones work.
	if _, ok := c.get(tid(1)); ok {
		t.Fatal("entry survived the reset")
	}
	c.put(tid(2), []string{"error"})
	if r, ok := c.get(tid(2)); !ok || !slices.Equal(r, []string{"error"}) {
		t.Fatalf("get after reset = %q, %v", r, ok)
	}
}
