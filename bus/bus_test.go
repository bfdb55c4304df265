package bus

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/threadline/threadline/span"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestLedgerCommitsBelowOldestPending(t *testing.T) {
	l := NewLedger()
	rec := func(p int32, off int64) *kgo.Record { return &kgo.Record{Topic: "t", Partition: p, Offset: off} }
	t0, t1, t2 := l.Begin(rec(0, 10)), l.Begin(rec(0, 11)), l.Begin(rec(0, 12))
	o := l.Begin(rec(1, 5))
	// A trace holds records 10 and 12; 11 is finished by the consumer alone.
	t0.Acquire()
	t2.Acquire()
	for _, tk := range []*Ticket{t0, t1, t2, o} {
		tk.Release()
	}
	c := l.Committable()
	require.Equal(t, int64(10), c["t"][0].Offset, "record 10 still held by its trace")
	require.Equal(t, int64(6), c["t"][1].Offset, "partition 1 fully done")
	require.Equal(t, 2, l.Pending())
	t2.Release() // completing a later record does not move the commit point
	require.Equal(t, int64(10), l.Committable()["t"][0].Offset)
	t0.Release()
	require.Equal(t, int64(13), l.Committable()["t"][0].Offset)
	require.Equal(t, 0, l.Pending())
	l.Forget(map[string][]int32{"t": {0}})
	_, ok := l.Committable()["t"][0]
	require.False(t, ok)
}

// TestLedgerPendingCount: Pending, a running count, agrees with counting
// the held tickets with references, through acquires and releases in any
// order, completed tickets acquired again, commits that drop completed
// tickets and forgotten partitions.
func TestLedgerPendingCount(t *testing.T) {
	l := NewLedger()
	held := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		n := 0
		for _, p := range l.parts {
			for _, tk := range p.pending {
				if tk.refs > 0 {
					n++
				}
			}
		}
		return n
	}
	rng := rand.New(rand.NewPCG(7, 8))
	var tickets []*Ticket
	offsets := map[int32]int64{}
	for step := range 5000 {
		switch op := rng.IntN(10); {
		case op < 3:
			p := rng.Int32N(3)
			tickets = append(tickets, l.Begin(&kgo.Record{Topic: "t", Partition: p, Offset: offsets[p]}))
			offsets[p]++
		case op < 5 && len(tickets) > 0:
			tickets[rng.IntN(len(tickets))].Acquire()
		case op < 8 && len(tickets) > 0:
			if tk := tickets[rng.IntN(len(tickets))]; tk.refs > 0 {
				tk.Release()
			}
		case op == 8:
			l.Committable()
		default:
			if rng.IntN(20) == 0 {
				l.Forget(map[string][]int32{"t": {rng.Int32N(3)}})
			}
		}
		require.Equal(t, held(), l.Pending(), "step %d", step)
	}
}

func startBroker(t *testing.T, dir string) *Embedded {
	t.Helper()
	cfg := DefaultEmbeddedConfig()
	cfg.Addr, cfg.DataDir, cfg.SyncWrites, cfg.Partitions = "127.0.0.1:0", dir, false, 3
	e, err := StartEmbedded(context.Background(), cfg, []string{"otlp_spans", "otlp_logs", "otlp_metrics"}, discard())
	require.NoError(t, err)
	return e
}

// startProducer starts a producer with the default config against e,
// closed when the test ends.
func startProducer(t *testing.T, e *Embedded) *Producer {
	t.Helper()
	kcfg := DefaultConfig()
	kcfg.Brokers = []string{e.Addr()}
	p, err := NewProducer(kcfg, discard(), prometheus.NewRegistry())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close(context.Background())) })
	return p
}

type collecting struct {
	mu        sync.Mutex
	keys      []string
	gone      int
	committed map[int32]int64 // partition → offset last reported committed
}

func (c *collecting) HandleRecords(_ context.Context, recs []*kgo.Record, tickets []*Ticket) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, r := range recs {
		c.keys = append(c.keys, string(r.Key))
		tickets[i].Release()
	}
}

func (c *collecting) PartitionsGone(map[string][]int32) { c.mu.Lock(); c.gone++; c.mu.Unlock() }

func (c *collecting) Committed(_ string, p int32, offset int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.committed == nil {
		c.committed = map[int32]int64{}
	}
	c.committed[p] = offset
}

// committedTotal is the sum of the offsets reported committed: with every
// partition read from its start, the records committed.
func (c *collecting) committedTotal() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, o := range c.committed {
		n += o
	}
	return n
}

func (c *collecting) count() int { c.mu.Lock(); defer c.mu.Unlock(); return len(c.keys) }

// TestProduceConsumeResume produces trace batches, consumes them in a group,
// and checks a second consumer resumes after the committed offsets.
func TestProduceConsumeResume(t *testing.T) {
	e := startBroker(t, t.TempDir())
	t.Cleanup(e.Close)
	p := startProducer(t, e)
	kcfg := DefaultConfig()
	kcfg.Brokers = []string{e.Addr()}

	batches := func(n int, seed byte) []span.TraceBatch {
		var out []span.TraceBatch
		for i := range n {
			id := span.TraceID{seed, byte(i), 1}
			out = append(out, span.TraceBatch{ID: id, Spans: 1, Data: []byte{}})
		}
		return out
	}
	require.NoError(t, p.PublishTraces(context.Background(), batches(50, 1)))

	consume := func(want int) *collecting {
		h := &collecting{}
		ccfg := DefaultConsumerConfig()
		ccfg.CommitInterval = 50 * time.Millisecond
		c, err := NewConsumer(kcfg, ccfg, []string{kcfg.TracesTopic}, h, discard(), prometheus.NewRegistry())
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		require.Eventually(t, func() bool { return h.count() >= want }, 20*time.Second, 10*time.Millisecond)
		cancel()
		require.NoError(t, <-done)
		c.CommitNow(context.Background())
		c.Close()
		return h
	}
	h := consume(50)
	require.Equal(t, 50, h.count())
	// The handler heard of every commit (RED forgets what lies below).
	require.Equal(t, int64(50), h.committedTotal())
	for _, k := range h.keys {
		require.Regexp(t, "^[0-9a-f]{32}$", k)
	}
	require.NoError(t, p.PublishTraces(context.Background(), batches(20, 2)))
	h2 := consume(20)
	time.Sleep(200 * time.Millisecond)
	require.Equal(t, 20, h2.count(), "the second member starts after the committed offsets")
}

// TestProduceErrorsAreRetryable: a full buffer is ErrBufferFull; a dead broker
// fails within the produce timeout instead of hanging.
func TestProduceErrorsAreRetryable(t *testing.T) {
	e := startBroker(t, t.TempDir())
	kcfg := DefaultConfig()
	kcfg.Brokers = []string{e.Addr()}
	kcfg.MaxBufferedBytes = 1 << 10
	kcfg.ProduceTimeout = 2 * time.Second
	p, err := NewProducer(kcfg, discard(), prometheus.NewRegistry())
	require.NoError(t, err)
	big := []span.TraceBatch{{ID: span.TraceID{1}, Data: make([]byte, 700)}, {ID: span.TraceID{2}, Data: make([]byte, 700)}}
	err = p.PublishTraces(context.Background(), big)
	require.ErrorIs(t, err, ErrBufferFull)

	e.Close()
	start := time.Now()
	err = p.PublishTraces(context.Background(), []span.TraceBatch{{ID: span.TraceID{3}, Data: []byte("x")}})
	require.Error(t, err)
	require.False(t, errors.Is(err, ErrBufferFull))
	require.Less(t, time.Since(start), 15*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = p.Close(ctx)
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Brokers = nil }, "at least one broker"},
		{func(c *Config) { c.SASLMechanism = "GSSAPI" }, "unknown SASL mechanism"},
		{func(c *Config) { c.SASLMechanism = "PLAIN" }, "needs --kafka-sasl-user"},
		{func(c *Config) { c.TLSCertFile = "x" }, "go together"},
		{func(c *Config) { c.ProduceTimeout = 0 }, "must be positive"},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		require.ErrorContains(t, c.Validate(), tc.want)
	}
	ok := DefaultConfig()
	require.NoError(t, ok.Validate())
}
