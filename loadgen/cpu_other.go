//go:build !unix

package loadgen

import "time"

// processCPU is not measured on this platform; reports show 0.
func processCPU() time.Duration { return 0 }
