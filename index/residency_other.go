//go:build !linux

package index

func fileMappings() ([]mapping, error) { return nil, errNoPageOut }

func pageOut(mapping) error { return errNoPageOut }
