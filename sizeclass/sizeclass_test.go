package sizeclass

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestClasses: every size maps to the smallest class holding it, wasting
// less than a step up to the linear bound and less than half beyond; Floor
// is the largest class a capacity serves; bad shapes panic.
func TestClasses(t *testing.T) {
	c := New(512, 32, 256<<10)
	require.Equal(t, 36, c.Count())
	require.Equal(t, 256<<10, c.Max())
	for n := 0; n <= c.Max()+1; n += 37 {
		k := c.Of(n)
		if n > c.Max() {
			require.Equal(t, -1, k)
			continue
		}
		require.GreaterOrEqual(t, c.Size(k), n)
		if k > 0 {
			require.Less(t, c.Size(k-1), n, "%d: the smallest class", n)
		}
		if n <= 16<<10 {
			require.Less(t, c.Size(k), max(n, 1)+512)
		} else {
			require.Less(t, c.Size(k), 2*n)
		}
	}
	for k := range c.Count() {
		require.Equal(t, k, c.Of(c.Size(k)))
		require.Equal(t, k, c.Floor(c.Size(k)))
		require.Equal(t, k, c.Floor(c.Size(k)+1), "a grown buffer serves the class below it")
	}
	require.Equal(t, -1, c.Floor(511))
	require.Equal(t, c.Count()-1, c.Floor(1<<30))
	require.Panics(t, func() { New(512, 32, 300<<10) })
	require.Panics(t, func() { New(512, 32, 8<<10) })
}
