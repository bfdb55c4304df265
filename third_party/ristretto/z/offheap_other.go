//go:build !unix

package z

// allocBuffer and freeBuffer keep allocator buffers on the Go heap where
// anonymous mappings are not available (see offheap_unix.go).
func allocBuffer(n int) []byte { return make([]byte, n) }

func freeBuffer([]byte) {}
