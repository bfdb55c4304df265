//go:build unix

package span

import "syscall"

// processCPU is the CPU time this process has used (user+system, all threads,
// GC included), in nanoseconds. Benchmarks report it per span because the
// budget is in CPU-seconds and wall time is meaningless on a busy machine.
func processCPU() (int64, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return ru.Utime.Nano() + ru.Stime.Nano(), true
}
