//go:build !linux

package table

// dropResident does nothing where MADV_DONTNEED on a shared file mapping is
// not known to keep the pages (see resident_linux.go).
func dropResident([]byte) error { return nil }
