//go:build !linux

package residency

func fileMappings() ([]mapping, error) { return nil, errUnsupported }

func pageOut(mapping) error { return errUnsupported }
