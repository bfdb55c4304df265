package bus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/threadline/threadline/span"
)

// recycling keeps a copy of every record's value, then recycles the record,
// as the indexer does once it has packed a record.
type recycling struct {
	mu     sync.Mutex
	values map[string][]byte // by key
}

func (h *recycling) HandleRecords(_ context.Context, recs []*kgo.Record, tickets []*Ticket) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, r := range recs {
		h.values[string(r.Key)] = bytes.Clone(r.Value)
		r.Recycle()
		tickets[i].Release()
	}
}

func (h *recycling) PartitionsGone(map[string][]int32) {}
func (h *recycling) Committed(string, int32, int64)    {}

func (h *recycling) count() int { h.mu.Lock(); defer h.mu.Unlock(); return len(h.values) }

// testValue is a compressible record value unique to trace i, so the
// producer's snappy batches are decompressed into the consumer's buffers.
func testValue(i int) []byte {
	return bytes.Repeat(fmt.Appendf(nil, "trace %06d span data;", i), 20+i%50)
}

// TestInProcessConnections: the all-in-one's clients reach the embedded
// broker through Embedded.Dial, in memory, while other processes still use
// its TCP port. Records produced in memory are read byte for byte over TCP
// and in memory, by consumers that recycle each record after copying it, so
// their batches' buffers are reused (a buffer reused too early would
// overwrite values still to be read). After Close, Dial fails.
func TestInProcessConnections(t *testing.T) {
	e := startBroker(t, t.TempDir())
	closed := false
	t.Cleanup(func() {
		if !closed {
			e.Close()
		}
	})
	kcfg := DefaultConfig()
	kcfg.Brokers = []string{e.Addr()}
	// Counted, so the test fails if a client ignores Dial and takes TCP.
	var dials atomic.Int64
	kcfg.Dial = func(ctx context.Context, network, host string) (net.Conn, error) {
		dials.Add(1)
		return e.Dial(ctx, network, host)
	}
	p, err := NewProducer(kcfg, discard(), prometheus.NewRegistry())
	require.NoError(t, err)
	const n = 3000
	want := map[string][]byte{}
	for start := 0; start < n; start += 500 {
		var batch []span.TraceBatch
		for i := start; i < start+500; i++ {
			id := span.TraceID{byte(i >> 8), byte(i), 7}
			batch = append(batch, span.TraceBatch{ID: id, Spans: 1, Data: testValue(i)})
			want[id.String()] = testValue(i)
		}
		require.NoError(t, p.PublishTraces(context.Background(), batch))
	}
	require.NoError(t, p.Close(context.Background()))
	require.Positive(t, dials.Load(), "the producer connected in memory")

	for _, inMemory := range []bool{false, true} {
		t.Run(fmt.Sprintf("inMemory=%v", inMemory), func(t *testing.T) {
			ccfg := kcfg
			before := dials.Load()
			if !inMemory {
				ccfg.Dial = nil
			}
			h := &recycling{values: map[string][]byte{}}
			cc := DefaultConsumerConfig()
			cc.Group = fmt.Sprintf("g-%v", inMemory)
			c, err := NewConsumer(ccfg, cc, []string{kcfg.TracesTopic}, h, discard(), prometheus.NewRegistry())
			require.NoError(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			require.Eventually(t, func() bool { return h.count() >= n }, 30*time.Second, 10*time.Millisecond)
			cancel()
			require.NoError(t, <-done)
			c.Close()
			if inMemory {
				require.Greater(t, dials.Load(), before, "the consumer connected in memory")
			} else {
				require.Equal(t, before, dials.Load(), "the consumer connected over TCP")
			}
			require.Len(t, h.values, n)
			for k, v := range want {
				require.Equal(t, v, h.values[k], "trace %s", k)
			}
			require.Positive(t, c.buffers.returned.Load(), "recycled records gave their batches' buffers back")
		})
	}

	e.Close()
	closed = true
	_, err = e.Dial(context.Background(), "tcp", e.Addr())
	require.ErrorIs(t, err, net.ErrClosed)
}

// TestDecompressBuffers: the pool hands out a buffer that fits a Snappy
// batch's decoded size, in its size classes, reusing one put back for that
// size or a little larger, and keeps nothing too small or too big for its
// classes.
func TestDecompressBuffers(t *testing.T) {
	p := newDecompressBuffers()
	require.Len(t, p.pools, decompressSizes.Count())
	snappy := func(n int) []byte { return s2.EncodeSnappy(nil, make([]byte, n)) }
	const step = 16 << 10
	require.Equal(t, step, cap(p.GetDecompressBytes(snappy(1000), kgo.CodecSnappy)))
	require.Equal(t, 4*step, cap(p.GetDecompressBytes(snappy(3*step+1), kgo.CodecSnappy)))
	require.Equal(t, 512<<10, cap(p.GetDecompressBytes(snappy(300<<10), kgo.CodecSnappy)))
	require.Nil(t, p.GetDecompressBytes(snappy(decompressSizes.Max()+1), kgo.CodecSnappy), "the codec allocates a batch too big to keep")
	require.Zero(t, p.reused.Load())

	// sync.Pool may drop what is put (always under the race detector, now
	// and then): try a few times.
	reuses := func(put, want int) bool {
		for range 20 {
			kept := make([]byte, 7, put)
			p.PutDecompressBytes(kept)
			b := p.GetDecompressBytes(snappy(want), kgo.CodecSnappy)
			if cap(b) == put && &b[:1][0] == &kept[:1][0] {
				require.Empty(t, b)
				return true
			}
		}
		return false
	}
	require.True(t, reuses(3*step, 3*step), "the buffer put back for that size")
	require.True(t, reuses(5*step+100, 4*step), "one a little larger (grown by a codec)")
	require.False(t, reuses(8*step, 4*step), "not one far larger")
	require.False(t, reuses(step-1, 100), "not one smaller than the smallest size")
	require.Positive(t, p.reused.Load())
}

// TestDialCancelled: a dial whose context ends before the broker accepts
// returns the context's error.
func TestDialCancelled(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l := newInProcessListener(tcp)
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = l.dial(ctx, "tcp", "x")
	require.True(t, errors.Is(err, context.Canceled), "got %v", err)
	// Nobody accepts, so a dial can only end by its context or by Close.
	go func() { time.Sleep(20 * time.Millisecond); l.Close() }()
	_, err = l.dial(context.Background(), "tcp", "x")
	require.ErrorIs(t, err, net.ErrClosed)
}
