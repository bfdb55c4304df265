package bus

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// EmbeddedConfig configures the embedded Kafka-protocol broker.
type EmbeddedConfig struct {
	// Addr is the loopback address the broker listens on. Default "127.0.0.1:9092".
	Addr string
	// DataDir persists the log; records survive a crash or restart. Required.
	DataDir string
	// Partitions per topic, equal for every signal so a trace's spans, logs and
	// exemplar links meet on one partition. Default 4.
	Partitions int
	// SyncWrites fsyncs every produced batch before acknowledging it, so an
	// acknowledged span survives a machine crash, not just a process crash.
	// Default false, as in Kafka's own defaults: an acknowledged batch is in
	// the kernel's page cache, which a crash of the process (kill -9) keeps.
	// The stores do not fsync either (--store.sync-writes and the others), so
	// after a machine crash they can lose writes whose offsets were
	// committed; fsyncing here alone would not make the pipeline survive
	// one. It cost about 30% of ingest speed (kfake's single request loop
	// waits on two fsyncs per partition batch): turn it on with the stores'
	// sync options where a machine crash must lose nothing.
	SyncWrites bool
	// Retention bounds the log by age. Default 6h.
	Retention time.Duration
	// RetentionBytes bounds each partition's log by size. Default 512 MiB.
	RetentionBytes int64
	// SegmentBytes is the log segment size; retention drops whole segments, so
	// small segments keep disk close to the bound. Default 16 MiB.
	SegmentBytes int
}

// DefaultEmbeddedConfig returns the defaults documented on EmbeddedConfig.
func DefaultEmbeddedConfig() EmbeddedConfig {
	return EmbeddedConfig{
		Addr:           "127.0.0.1:9092",
		Partitions:     4,
		SyncWrites:     false,
		Retention:      6 * time.Hour,
		RetentionBytes: 512 << 20,
		SegmentBytes:   16 << 20,
	}
}

// RegisterFlags registers the embedded broker's flags on fs.
func (c *EmbeddedConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Addr, "kafka-addr", c.Addr, "loopback address of the embedded Kafka-protocol broker (ignored with --kafka-brokers)")
	fs.IntVar(&c.Partitions, "kafka-partitions", c.Partitions, "partitions per topic created by the embedded broker")
	fs.BoolVar(&c.SyncWrites, "kafka-sync-writes", c.SyncWrites, "fsync every produced batch before acknowledging it; off, an acknowledged span survives a crash of the process but not of the machine (for that, also turn on --store.sync-writes, --red.sync-writes, --logs.sync-writes and --metrics.sync-writes)")
	fs.DurationVar(&c.Retention, "kafka-retention", c.Retention, "how long the embedded broker keeps records")
	fs.Int64Var(&c.RetentionBytes, "kafka-retention-bytes", c.RetentionBytes, "bytes the embedded broker keeps per partition")
	fs.IntVar(&c.SegmentBytes, "kafka-segment-bytes", c.SegmentBytes, "embedded broker log segment size")
}

// Validate rejects settings that cannot work.
func (c *EmbeddedConfig) Validate() error {
	if c.DataDir == "" {
		return errors.New("embedded kafka: a data directory is required")
	}
	if c.Partitions < 1 {
		return fmt.Errorf("embedded kafka: partitions must be at least 1, got %d", c.Partitions)
	}
	if c.SegmentBytes < 1<<20 {
		return fmt.Errorf("embedded kafka: segment bytes must be at least 1 MiB, got %d", c.SegmentBytes)
	}
	if c.Retention <= 0 || c.RetentionBytes <= 0 {
		return errors.New("embedded kafka: retention and retention bytes must be positive")
	}
	return nil
}

// Embedded is a Kafka-protocol broker in this process (franz-go's kfake) with
// its log on disk. It is for one machine; production points --kafka-brokers at
// real Kafka or Redpanda and nothing else changes.
type Embedded struct {
	cluster *kfake.Cluster
	addr    string
	local   *inProcessListener
}

// StartEmbedded starts the broker and creates the topics (idempotently: after a
// restart on the same data dir they already exist with their records).
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig, topics []string, logger *slog.Logger) (*Embedded, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("embedded kafka address %q: %w", cfg.Addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("embedded kafka listens on loopback only, not %q", host)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded kafka port %q: %w", portStr, err)
	}
	opts := []kfake.Opt{
		kfake.Ports(port),
		kfake.DataDir(cfg.DataDir),
		kfake.ClusterID("threadline-embedded"),
		kfake.BrokerConfigs(map[string]string{
			// How often retention runs; the default hour lets disk overshoot.
			"log.cleaner.backoff.ms": "30000",
			"message.max.bytes":      strconv.Itoa(32 << 20),
		}),
	}
	if cfg.SyncWrites {
		opts = append(opts, kfake.SyncWrites())
	}
	var local *inProcessListener
	opts = append(opts, kfake.ListenFn(func(network, address string) (net.Listener, error) {
		tcp, err := net.Listen(network, address)
		if err != nil {
			return nil, err
		}
		local = newInProcessListener(tcp)
		return local, nil
	}))
	cluster, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("start embedded kafka on %s: %w", cfg.Addr, err)
	}
	e := &Embedded{cluster: cluster, addr: cluster.ListenAddrs()[0], local: local}
	if err := e.createTopics(ctx, cfg, topics); err != nil {
		cluster.Close()
		return nil, err
	}
	logger.Info("embedded kafka broker started", "addr", e.addr, "data_dir", cfg.DataDir, "partitions", cfg.Partitions, "sync_writes", cfg.SyncWrites)
	return e, nil
}

// Addr is the broker's host:port.
func (e *Embedded) Addr() string { return e.addr }

// Dial connects a client of this process to the broker in memory (see
// inProcessListener); it has kgo.Dialer's signature and is what
// Config.Dial takes.
func (e *Embedded) Dial(ctx context.Context, network, host string) (net.Conn, error) {
	return e.local.dial(ctx, network, host)
}

// Close stops the broker, persisting its state.
func (e *Embedded) Close() { e.cluster.Close() }

func (e *Embedded) createTopics(ctx context.Context, cfg EmbeddedConfig, topics []string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.addr), kgo.Dialer(e.Dial))
	if err != nil {
		return fmt.Errorf("embedded kafka admin client: %w", err)
	}
	defer cl.Close()
	str := func(s string) *string { return &s }
	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = 10000
	for _, t := range topics {
		rt := kmsg.NewCreateTopicsRequestTopic()
		rt.Topic = t
		rt.NumPartitions = int32(cfg.Partitions)
		rt.ReplicationFactor = 1
		// Topic-level retention also switches kfake's retention ticker on.
		for k, v := range map[string]string{
			"retention.ms":    strconv.FormatInt(cfg.Retention.Milliseconds(), 10),
			"retention.bytes": strconv.FormatInt(cfg.RetentionBytes, 10),
			"segment.bytes":   strconv.Itoa(cfg.SegmentBytes),
		} {
			c := kmsg.NewCreateTopicsRequestTopicConfig()
			c.Name, c.Value = k, str(v)
			rt.Configs = append(rt.Configs, c)
		}
		req.Topics = append(req.Topics, rt)
	}
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	for _, t := range resp.Topics {
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", t.Topic, err)
		}
	}
	return nil
}
