package table

import "golang.org/x/sys/unix"

// dropResident unmaps the pages of b from this process without discarding
// them: b is a shared file mapping whose pages were just written and synced,
// so they stay in the page cache and a later read faults them back in.
// Threadline patch (see ../PATCH.md).
func dropResident(b []byte) error { return unix.Madvise(b, unix.MADV_DONTNEED) }
