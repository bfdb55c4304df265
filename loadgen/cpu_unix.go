//go:build unix

package loadgen

import (
	"syscall"
	"time"
)

// processCPU returns the user plus system CPU time this process has used, so
// a benchmark can subtract the load generator's share of a shared machine.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
