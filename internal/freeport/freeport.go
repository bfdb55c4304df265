// Package freeport picks loopback TCP addresses for child processes to
// listen on: the end-to-end tests and benchmarks start the real binaries
// with their ports given as flags.
//
// A port the kernel hands out for a listen on port 0 lies in its ephemeral
// range, and once that listener is closed the kernel may hand the port out
// again, to any outgoing connection, before the child binds it; the child
// then fails to start, now and then. So ports are picked below the range,
// where no connection takes them, and none is returned twice by a process.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
)

var (
	mu   sync.Mutex
	used = map[int]bool{}
)

// lowest is where ports are picked from, up to the ephemeral range.
const lowest = 10000

// Addr returns "127.0.0.1:port" for a port that was free when picked.
func Addr() (string, error) {
	mu.Lock()
	defer mu.Unlock()
	if low := ephemeralLow(); low > lowest+1000 {
		for range 1000 {
			port := lowest + rand.IntN(low-lowest)
			if used[port] {
				continue
			}
			if addr, ok := probe(port); ok {
				used[port] = true
				return addr, nil
			}
		}
	}
	// No room below the range: take one the kernel hands out.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// probe reports whether port can be listened on now.
func probe(port int) (string, bool) {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return "", false
	}
	addr := l.Addr().String()
	return addr, l.Close() == nil
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux;
// 32768 where it cannot be read, the common default).
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		_, _ = fmt.Sscan(string(b), &low)
	}
	return low
}
