package freeport

import (
	"net"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAddrBelowEphemeralRange: the addresses can be listened on, are never
// handed out twice, and lie below the kernel's ephemeral range.
func TestAddrBelowEphemeralRange(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		addr, err := Addr()
		require.NoError(t, err)
		require.False(t, seen[addr], "%s handed out twice", addr)
		seen[addr] = true
		_, p, err := net.SplitHostPort(addr)
		require.NoError(t, err)
		port, err := strconv.Atoi(p)
		require.NoError(t, err)
		require.GreaterOrEqual(t, port, lowest)
		require.Less(t, port, ephemeralLow())
		l, err := net.Listen("tcp", addr)
		require.NoError(t, err)
		require.NoError(t, l.Close())
	}
}
