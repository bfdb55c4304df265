//go:build !unix

package z

// OffHeapAlloc and OffHeapFree keep buffers on the Go heap where anonymous
// mappings are not available (see offheap_unix.go).
func OffHeapAlloc(n int) []byte { return make([]byte, n) }

// OffHeapFree does nothing: the GC frees what OffHeapAlloc returned.
func OffHeapFree([]byte) {}
