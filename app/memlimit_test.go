package app

import (
	"bytes"
	"errors"
	"log/slog"
	"runtime/debug"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/stretchr/testify/require"
)

// TestSetMemoryLimit: a container limit becomes a Go soft limit at 90% of
// it; an explicit GOMEMLIMIT wins; no cgroup leaves the runtime alone.
func TestSetMemoryLimit(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	t.Setenv("GOMEMLIMIT", "")
	setMemoryLimit(logger, memlimit.Limit(1<<30))
	require.EqualValues(t, 9*(1<<30)/10, debug.SetMemoryLimit(-1))
	require.Contains(t, logs.String(), "Go memory limit set")

	debug.SetMemoryLimit(before)
	setMemoryLimit(logger, func() (uint64, error) { return 0, memlimit.ErrNoCgroup })
	require.Equal(t, before, debug.SetMemoryLimit(-1))
	require.Contains(t, logs.String(), "no container memory limit found")

	setMemoryLimit(logger, func() (uint64, error) { return 0, errors.New("permission denied") })
	require.Equal(t, before, debug.SetMemoryLimit(-1))
	require.Contains(t, logs.String(), "could not read the container memory limit")

	t.Setenv("GOMEMLIMIT", "3GiB")
	setMemoryLimit(logger, memlimit.Limit(1<<30))
	require.Equal(t, before, debug.SetMemoryLimit(-1), "an explicit GOMEMLIMIT is the runtime's, not ours")
}

// TestSetIndexerGC: a process running an indexer collects at indexerGOGC,
// unless GOGC is set, which wins.
func TestSetIndexerGC(t *testing.T) {
	before := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(before) })
	logger := slog.New(slog.DiscardHandler)
	t.Setenv("GOGC", "")
	setIndexerGC(logger)
	require.Equal(t, indexerGOGC, debug.SetGCPercent(100))
	t.Setenv("GOGC", "150")
	setIndexerGC(logger)
	require.Equal(t, 100, debug.SetGCPercent(100), "an explicit GOGC is the runtime's")
}
