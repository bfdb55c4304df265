package indexer

import (
	"log/slog"
	"sync"
	"time"
)

// badLog logs bad input (records, spans and log lines that do not decode):
// at most badLogBurst lines per badLogInterval, the first line of the next
// interval saying how many were left out. Kafka can hold a flood of bad
// records (a producer writing something else into our topics: a fuzzer
// sent 290k in two minutes), and a line for each would bury the log; the
// counters have every one, the log needs examples.
type badLog struct {
	log      *slog.Logger
	mu       sync.Mutex
	since    time.Time // the current interval's start
	n        int       // lines logged in it
	leftOut  int       // lines left out since the last one logged
	interval time.Duration
}

const (
	badLogBurst    = 10
	badLogInterval = 10 * time.Second
)

func newBadLog(log *slog.Logger) *badLog { return &badLog{log: log, interval: badLogInterval} }

// warn logs msg with args, unless this interval has had its lines.
func (b *badLog) warn(msg string, args ...any) {
	now := time.Now()
	b.mu.Lock()
	if now.Sub(b.since) >= b.interval {
		b.since, b.n = now, 0
	}
	if b.n >= badLogBurst {
		b.leftOut++
		b.mu.Unlock()
		return
	}
	b.n++
	leftOut, log := b.leftOut, b.log
	b.leftOut = 0
	b.mu.Unlock()
	if leftOut > 0 {
		args = append(args, "left_out_before", leftOut)
	}
	log.Warn(msg, args...)
}
