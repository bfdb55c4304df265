package indexer

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/sampling"
)

// lockedBuffer is a log sink safe for the indexer's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSpace(l.b.String()), "\n")
}

// TestBadInputLogLimited: a flood of undecodable records is counted in
// full and logged by example: badLogBurst lines per interval, the first
// line of the next saying how many were left out.
func TestBadInputLogLimited(t *testing.T) {
	h := newHarness(t, testConfig(), sampling.DefaultConfig())
	var out lockedBuffer
	h.ix.bad.mu.Lock()
	h.ix.bad.log, h.ix.bad.interval = slog.New(slog.NewTextHandler(&out, nil)), time.Hour
	h.ix.bad.mu.Unlock()
	flood := func(n int) {
		recs := make([]*kgo.Record, n)
		tickets := make([]*bus.Ticket, n)
		for i := range recs {
			recs[i] = &kgo.Record{Topic: "otlp_spans", Key: traceID(i).AppendHex(nil), Offset: h.offset, Value: []byte{0x0a, 0xff}}
			h.offset++
			tickets[i] = h.ledger.Begin(recs[i])
		}
		h.ix.HandleRecords(context.Background(), recs, tickets)
	}
	flood(100)
	require.Equal(t, 100.0, counterValue(t, h.ix.m.badRecords))
	require.Len(t, out.lines(), badLogBurst)
	require.Contains(t, out.lines()[0], "skipping undecodable record")
	require.Zero(t, h.ledger.Pending(), "skipped records are released")

	h.ix.bad.mu.Lock()
	h.ix.bad.interval = 0 // the next line starts a new interval
	h.ix.bad.mu.Unlock()
	flood(1)
	lines := out.lines()
	require.Len(t, lines, badLogBurst+1)
	require.Contains(t, lines[badLogBurst], "left_out_before=90")
}
