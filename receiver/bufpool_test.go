package receiver

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBufferPool(t *testing.T) {
	var p bufferPool
	for _, n := range []int{0, 1, 256, 257, 4096, 300_000, 1 << 24} {
		b := p.Get(n)
		require.Len(t, *b, n)
		require.GreaterOrEqual(t, cap(*b), n)
		c := cap(*b)
		require.Zero(t, c&(c-1), "capacity %d is a size class", c)
		p.Put(b)
	}
	// A buffer comes back sized to the new request, whatever it held.
	b := p.Get(1000)
	(*b)[999] = 7
	p.Put(b)
	again := p.Get(600)
	require.Len(t, *again, 600)
	require.Equal(t, 1024, cap(*again))
	// Oversized and foreign buffers are not pooled.
	big := p.Get(1<<24 + 1)
	require.Len(t, *big, 1<<24+1)
	p.Put(big)
	odd := make([]byte, 1000)
	p.Put(&odd)
	require.Equal(t, 512, cap(*p.Get(300)), "the odd-sized buffer was not handed out")
}
