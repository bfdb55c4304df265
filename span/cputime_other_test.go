//go:build !unix

package span

func processCPU() (int64, bool) { return 0, false }
