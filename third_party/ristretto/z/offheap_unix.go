//go:build unix

package z

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Threadline patch (see ../PATCH.md): an Allocator's buffers live outside
// the Go heap, in anonymous mappings that Release and TrimTo unmap at once.
// Badger's table builders grow an allocator to a whole table (a memtable
// flush: 16 MiB and more) and give it back when the table is written; on
// the Go heap those buffers counted towards the GC's heap goal, which grows
// the heap by GOGC percent of everything live, and stayed resident until a
// collection and the scavenger returned them.

// allocBuffer returns n zeroed bytes outside the Go heap.
func allocBuffer(n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		panic(fmt.Sprintf("z: mmap %d bytes for an allocator buffer: %v", n, err))
	}
	return b
}

// freeBuffer unmaps a buffer from allocBuffer; nothing may use it after.
// It pairs with unix.Mmap through unix.Munmap, which forgets the mapping in
// x/sys's table; this package's own Munmap bypasses that table on Linux.
func freeBuffer(b []byte) {
	if err := unix.Munmap(b[:cap(b)]); err != nil {
		panic(fmt.Sprintf("z: munmap an allocator buffer of %d bytes: %v", cap(b), err))
	}
}
