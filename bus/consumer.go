package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/threadline/threadline/sizeclass"
)

// RecordHandler is what a Consumer feeds. Calls never overlap: HandleRecords runs
// on the poll loop and rebalances are held back while it runs.
type RecordHandler interface {
	// HandleRecords takes a polled batch. Each record's ticket must be released
	// once the record is fully processed (see Ledger). A record whose key and
	// value the handler no longer reads may be recycled (kgo.Record.Recycle):
	// once every record of a fetched batch is, the buffer the batch was
	// decompressed into is reused (decompressBuffers). Records not recycled
	// are left to the garbage collector, buffer and all.
	HandleRecords(ctx context.Context, recs []*kgo.Record, tickets []*Ticket)
	// PartitionsGone is called after partitions were revoked or lost; state
	// held for them must be dropped (their next owner replays it).
	PartitionsGone(parts map[string][]int32)
	// Committed is called after the group accepted a commit of these
	// offsets: the records below them will not be replayed.
	Committed(topic string, partition int32, offset int64)
}

// ConsumerConfig tunes the group consumer.
type ConsumerConfig struct {
	// Group is the consumer group ID. Default "threadline-indexer".
	Group string
	// CommitInterval is how often completed offsets are committed. Default 1s.
	CommitInterval time.Duration
	// MaxPendingRecords pauses fetching while this many consumed records are
	// still in progress, so memory stays bounded when writes fall behind.
	// Default 200000.
	MaxPendingRecords int
}

// DefaultConsumerConfig returns the defaults documented on ConsumerConfig.
func DefaultConsumerConfig() ConsumerConfig {
	return ConsumerConfig{Group: "threadline-indexer", CommitInterval: time.Second, MaxPendingRecords: 200000}
}

// Consumer reads topics in a consumer group and commits only offsets whose
// records the handler has completed.
type Consumer struct {
	cl      *kgo.Client
	cfg     ConsumerConfig
	handler RecordHandler
	ledger  *Ledger
	buffers *decompressBuffers
	log     *slog.Logger

	assignedMu sync.Mutex
	assigned   int

	records *prometheus.CounterVec
	lag     *prometheus.GaugeVec
	commits *prometheus.CounterVec
}

// NewConsumer joins group cfg.Group over topics.
func NewConsumer(kcfg Config, cfg ConsumerConfig, topics []string, h RecordHandler, logger *slog.Logger, reg prometheus.Registerer) (*Consumer, error) {
	if err := kcfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Group == "" {
		return nil, errors.New("kafka consumer: group must not be empty")
	}
	opts, err := kcfg.clientOpts()
	if err != nil {
		return nil, err
	}
	c := &Consumer{
		cfg: cfg, handler: h, ledger: NewLedger(), log: logger,
		buffers: newDecompressBuffers(),
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_kafka_consumed_records_total",
			Help: "Records consumed from Kafka, by topic.",
		}, []string{"topic"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "threadline_kafka_consumer_lag_records",
			Help: "Records between the last consumed offset and the partition's high watermark.",
		}, []string{"topic", "partition"}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_kafka_commits_total",
			Help: "Offset commits, by result.",
		}, []string{"result"}),
	}
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "threadline_kafka_pending_records",
		Help: "Consumed records whose traces are not yet decided and written (offsets held back).",
	}, func() float64 { return float64(c.ledger.Pending()) })
	returned := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "threadline_kafka_decompress_buffers_returned_total",
		Help: "Buffers of fetched batches given back once every record of the batch was recycled.",
	}, func() float64 { return float64(c.buffers.returned.Load()) })
	reused := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "threadline_kafka_decompress_buffers_reused_total",
		Help: "Fetched batches decompressed into a buffer given back earlier rather than a new one.",
	}, func() float64 { return float64(c.buffers.reused.Load()) })
	for _, col := range []prometheus.Collector{c.records, c.lag, c.commits, pending, returned, reused} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register consumer metrics: %w", err)
		}
	}
	opts = append(opts,
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(topics...),
		// The range balancer gives one member partition p of every topic:
		// with equal partition counts, a trace's spans and log lines (both
		// keyed by trace ID) reach the same indexer. The default cooperative
		// balancer spreads each topic on its own.
		kgo.Balancers(kgo.RangeBalancer()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// Fetched batches are held decompressed until handled, about five
		// times their size on the wire for OTLP spans, and the client
		// fetches the next while the last is handled: 4 MiB fetches held
		// about 40 MB under a backlog; larger fetches did not raise
		// throughput.
		kgo.FetchMaxBytes(1<<20),
		kgo.FetchMaxPartitionBytes(512<<10),
		kgo.WithPools(c.buffers),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			c.addAssigned(m, 1)
			c.log.Info("partitions assigned", "partitions", m)
		}),
		kgo.OnPartitionsRevoked(c.onGone("revoked")),
		kgo.OnPartitionsLost(c.onGone("lost")),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("create kafka consumer: %w", err)
	}
	c.cl = cl
	return c, nil
}

func (c *Consumer) addAssigned(m map[string][]int32, sign int) {
	n := 0
	for _, ps := range m {
		n += len(ps)
	}
	c.assignedMu.Lock()
	c.assigned += sign * n
	c.assignedMu.Unlock()
}

// onGone commits what is complete for the partitions, then lets the handler
// drop their state. Pending records are replayed by the next owner.
func (c *Consumer) onGone(why string) func(context.Context, *kgo.Client, map[string][]int32) {
	return func(ctx context.Context, cl *kgo.Client, m map[string][]int32) {
		c.addAssigned(m, -1)
		if why == "revoked" {
			c.commit(ctx, m)
		}
		c.handler.PartitionsGone(m)
		c.ledger.Forget(m)
		c.log.Info("partitions "+why, "partitions", m)
	}
}

// Assigned reports how many partitions this member owns (readiness).
func (c *Consumer) Assigned() int {
	c.assignedMu.Lock()
	defer c.assignedMu.Unlock()
	return c.assigned
}

// Run polls until ctx is done, then commits what is complete and leaves the
// group. The handler must have released its tickets (flushed) before Close
// for the final commit to include them; see CommitNow.
func (c *Consumer) Run(ctx context.Context) error {
	commitTick := time.NewTicker(c.cfg.CommitInterval)
	defer commitTick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-commitTick.C:
			c.commit(ctx, nil)
		default:
		}
		if c.ledger.Pending() >= c.cfg.MaxPendingRecords {
			// Backpressure: let writes catch up instead of buffering more.
			c.cl.AllowRebalance()
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		pollCtx, cancel := context.WithTimeout(ctx, c.cfg.CommitInterval)
		fetches := c.cl.PollFetches(pollCtx)
		cancel()
		if fetches.IsClientClosed() {
			return nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				c.log.Warn("kafka fetch error", "topic", t, "partition", p, "err", err)
			}
		})
		var recs []*kgo.Record
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) == 0 {
				return
			}
			last := p.Records[len(p.Records)-1]
			c.lag.WithLabelValues(p.Topic, fmt.Sprint(p.Partition)).Set(float64(p.HighWatermark - last.Offset - 1))
			c.records.WithLabelValues(p.Topic).Add(float64(len(p.Records)))
			recs = append(recs, p.Records...)
		})
		if len(recs) > 0 {
			tickets := make([]*Ticket, len(recs))
			for i, r := range recs {
				tickets[i] = c.ledger.Begin(r)
			}
			c.handler.HandleRecords(ctx, recs, tickets)
		}
		c.cl.AllowRebalance()
	}
}

// CommitNow commits every completed offset synchronously.
func (c *Consumer) CommitNow(ctx context.Context) { c.commit(ctx, nil) }

func (c *Consumer) commit(ctx context.Context, only map[string][]int32) {
	offs := c.ledger.Committable()
	if only != nil {
		keep := map[string]map[int32]kgo.EpochOffset{}
		for t, ps := range only {
			for _, p := range ps {
				if eo, ok := offs[t][p]; ok {
					if keep[t] == nil {
						keep[t] = map[int32]kgo.EpochOffset{}
					}
					keep[t][p] = eo
				}
			}
		}
		offs = keep
	}
	if len(offs) == 0 {
		return
	}
	c.cl.CommitOffsetsSync(ctx, offs, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err == nil {
			for _, t := range resp.Topics {
				for _, p := range t.Partitions {
					if p.ErrorCode != 0 {
						err = fmt.Errorf("commit %s/%d: error code %d", t.Topic, p.Partition, p.ErrorCode)
						continue
					}
					if eo, ok := offs[t.Topic][p.Partition]; ok {
						c.handler.Committed(t.Topic, p.Partition, eo.Offset)
					}
				}
			}
		}
		if err != nil {
			c.commits.WithLabelValues("error").Inc()
			if !errors.Is(err, context.Canceled) {
				c.log.Warn("kafka offset commit failed", "err", err)
			}
			return
		}
		c.commits.WithLabelValues("ok").Inc()
	})
}

// Ping reports whether a broker answers, for dependency health.
func (c *Consumer) Ping(ctx context.Context) error { return c.cl.Ping(ctx) }

// Close leaves the group and closes the client.
func (c *Consumer) Close() { c.cl.Close() }

// decompressBuffers recycles the buffers the client decompresses fetched
// batches into (kgo.PoolDecompressBytes). Every span the indexer reads
// arrives in one: 1.4 GB per 1.5M spans of the end-to-end benchmark, a
// sixth of what the all-in-one allocated, and so a sixth of what set how
// often the garbage collector ran. Buffers come in steps of 16
// KiB up to 256 KiB (a producer's batch is tens of KiB under load), then
// in powers of two up to 8 MiB (a batch is at most 1 MiB by default), one
// sync.Pool per size: a pool keeps what was put back and not taken again
// for at most two garbage collections, so it holds about what the batches
// in flight need.
type decompressBuffers struct {
	pools    []sync.Pool  // per class of decompressSizes: *[]byte of its size
	returned atomic.Int64 // buffers put back and kept (threadline_kafka_decompress_buffers_returned_total)
	reused   atomic.Int64 // buffers handed out again (threadline_kafka_decompress_buffers_reused_total)
}

var decompressSizes = sizeclass.New(16<<10, 16, 8<<20)

// decompressReach is how many classes above its own a batch looks in for a
// free buffer.
const decompressReach = 2

func newDecompressBuffers() *decompressBuffers {
	return &decompressBuffers{pools: make([]sync.Pool, decompressSizes.Count())}
}

// GetDecompressBytes returns a buffer that fits the batch: a free one of
// its size or a little larger, else a new one. The size of a Snappy batch
// is known from its header; for other codecs (and Xerial framing) it is
// not, and the codec grows a buffer too small (the grown one comes back to
// the pool of the largest size it holds).
func (p *decompressBuffers) GetDecompressBytes(src []byte, codec kgo.CompressionCodecType) []byte {
	need := 0
	if codec == kgo.CodecSnappy {
		need, _ = s2.DecodedLen(src) // 0 for Xerial framing or a bad header: the codec decides
	}
	c := decompressSizes.Of(need)
	if c < 0 {
		return nil // the codec allocates it; it is not kept
	}
	for k := c; k <= min(c+decompressReach, len(p.pools)-1); k++ {
		if b, ok := p.pools[k].Get().(*[]byte); ok {
			p.reused.Add(1)
			return (*b)[:0]
		}
	}
	return make([]byte, 0, decompressSizes.Size(c))
}

// PutDecompressBytes keeps a buffer the client is done with (zeroed by the
// client) for a batch of its size.
func (p *decompressBuffers) PutDecompressBytes(b []byte) {
	c := decompressSizes.Floor(cap(b))
	if c < 0 || cap(b) > decompressSizes.Max() {
		return
	}
	p.returned.Add(1)
	p.pools[c].Put(&b)
}
