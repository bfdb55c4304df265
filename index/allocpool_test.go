package index

import (
	"testing"

	"github.com/dgraph-io/ristretto/v2/z"
	"github.com/stretchr/testify/require"
)

// TestBadgerAllocatorPoolTrims checks that the patched ristretto
// (third_party/ristretto, PATCH.md) is the one built in: a pooled allocator
// comes back with only its first buffer, not with everything a table build
// grew it to, or Badger's builder pools hold hundreds of MiB for good.
func TestBadgerAllocatorPoolTrims(t *testing.T) {
	pool := z.NewAllocatorPool(1)
	defer pool.Release()

	a := pool.Get(1<<10, "test")
	first := a.Allocated()
	a.Allocate(8 << 20) // a table build growing the arena
	require.Greater(t, a.Allocated(), uint64(8<<20))
	pool.Return(a)

	b := pool.Get(1<<10, "test")
	require.Same(t, a, b, "the pool hands back the allocator it kept")
	require.Equal(t, first, b.Allocated(), "a pooled allocator keeps only its first buffer")
	require.Len(t, b.Allocate(4<<20), 4<<20, "and grows again when asked")
	pool.Return(b)
}
