package index

import (
	"runtime"
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

// TestBadgerAllocatorOffHeap checks the second patch: an allocator's buffers
// (a table build's blocks and index) are zeroed memory outside the Go heap,
// so they do not raise the GC's heap goal, and Release gives them back at
// once.
func TestBadgerAllocatorOffHeap(t *testing.T) {
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	a := z.NewAllocator(1<<10, "test")
	buf := a.Allocate(32 << 20)
	require.Len(t, buf, 32<<20)
	require.Zero(t, buf[0]|buf[len(buf)/2]|buf[len(buf)-1], "allocator memory starts zeroed")
	buf[0], buf[len(buf)-1] = 1, 2 // and is writable
	require.Less(t, heap(), before+(4<<20), "32 MiB of allocator buffers on the Go heap")
	a.Release()
}
