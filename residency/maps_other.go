//go:build !linux

package residency

func fileMappings() ([]mapping, error) { return nil, errUnsupported }

func pageOut(mapping) error { return errUnsupported }

// ResidentBytes needs /proc/self/smaps (see maps_linux.go).
func ResidentBytes(string) (map[string]int64, error) { return nil, errUnsupported }
