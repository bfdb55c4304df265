//go:build unix

package z

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Threadline patch (see ../PATCH.md): an Allocator's buffers, and Badger's
// memtable arenas (third_party/badger/skl), live outside the Go heap, in
// anonymous mappings that are unmapped as soon as their owner releases them.
// Badger's table builders grow an allocator to a whole table (a memtable
// flush: 16 MiB and more) and give it back when the table is written, and a
// memtable's arena is fixed at 1.3 times the memtable size from its creation;
// on the Go heap those buffers counted towards the GC's heap goal, which grows
// the heap by GOGC percent of everything live, and stayed resident until a
// collection and the scavenger returned them.

// OffHeapAlloc returns n zeroed bytes outside the Go heap. Pages are
// resident only once written. Free them with OffHeapFree.
func OffHeapAlloc(n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		panic(fmt.Sprintf("z: mmap %d bytes off the Go heap: %v", n, err))
	}
	return b
}

// OffHeapFree unmaps a buffer from OffHeapAlloc; nothing may use it after
// (a late use faults). It pairs with unix.Mmap through unix.Munmap, which
// forgets the mapping in x/sys's table; this package's own Munmap bypasses
// that table on Linux.
func OffHeapFree(b []byte) {
	if err := unix.Munmap(b[:cap(b)]); err != nil {
		panic(fmt.Sprintf("z: munmap %d bytes off the Go heap: %v", cap(b), err))
	}
}
