package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	"github.com/threadline/threadline/alerting"
	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/clockskew"
	"github.com/threadline/threadline/health"
	"github.com/threadline/threadline/index"
	"github.com/threadline/threadline/indexer"
	"github.com/threadline/threadline/logstore"
	"github.com/threadline/threadline/metricstore"
	logspb "github.com/threadline/threadline/proto/logs/v1"
	metricspb "github.com/threadline/threadline/proto/metrics/v1"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/readapi"
	"github.com/threadline/threadline/red"
	"github.com/threadline/threadline/residency"
	"github.com/threadline/threadline/sampling"
)

// IndexerConfig configures the indexer role.
type IndexerConfig struct {
	// DataDir holds the span store (DataDir/spans). Default "./data".
	DataDir string
	// GRPCAddr serves the read API to the query service. Default "127.0.0.1:9095".
	GRPCAddr string
	// AlertRules is the alert rules YAML (the ruler's file): exemplars of
	// the metrics its kind-metric rules evaluate keep their traces (reason
	// exemplar). In the all-in-one it is the query role's --alert-rules.
	// Default "" (no exemplar pinning).
	AlertRules string
	Sampling   sampling.Config
	Skew       clockskew.Config
	Kafka      bus.Config
	Consumer   bus.ConsumerConfig
	Indexer    indexer.Config
	Store      index.Options
	RED        red.Options
	Logs       logstore.Options
	Metrics    metricstore.Options
}

// DefaultIndexerConfig returns the packages' defaults.
func DefaultIndexerConfig() IndexerConfig {
	return IndexerConfig{
		DataDir:  "./data",
		GRPCAddr: "127.0.0.1:9095",
		Sampling: sampling.DefaultConfig(),
		Skew:     clockskew.DefaultConfig(),
		Kafka:    bus.DefaultConfig(),
		Consumer: bus.DefaultConsumerConfig(),
		Indexer:  indexer.DefaultConfig(),
		Store:    index.DefaultOptions(),
		RED:      red.DefaultOptions(),
		Logs:     logstore.DefaultOptions(),
		Metrics:  metricstore.DefaultOptions(),
	}
}

// RegisterFlags registers the indexer's flags; withKafka is false in the
// all-in-one, where the collector already registered the Kafka flags.
func (c *IndexerConfig) RegisterFlags(fs *flag.FlagSet, withKafka bool) {
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory for the span store (and the embedded broker's log in the all-in-one)")
	fs.StringVar(&c.GRPCAddr, "indexer-grpc-addr", c.GRPCAddr, "address of the indexer's gRPC read API, used by the query service")
	c.Sampling.RegisterFlags(fs)
	c.Skew.RegisterFlags(fs)
	fs.StringVar(&c.Consumer.Group, "kafka-consumer-group", c.Consumer.Group, "Kafka consumer group of the indexers")
	if withKafka {
		c.Kafka.RegisterFlags(fs)
		fs.StringVar(&c.AlertRules, "alert-rules", c.AlertRules, "alert rules YAML (the ruler's file): exemplars of the metrics its kind-metric rules evaluate keep the traces they name")
	}
	c.Indexer.RegisterFlags(fs)
	c.Store.RegisterFlags(fs)
	c.RED.RegisterFlags(fs)
	c.Logs.RegisterFlags(fs)
	c.Metrics.RegisterFlags(fs)
}

// Indexer consumes spans, decides and stores traces, and serves reads.
type Indexer struct {
	cfg      IndexerConfig
	store    *index.Store
	red      *red.Store
	logs     *logstore.Store
	metrics  *metricstore.Store
	pager    *residency.Pager
	ix       *indexer.Indexer
	consumer *bus.Consumer
	grpc     *grpc.Server
	lis      net.Listener
	log      *slog.Logger
}

// NewIndexer opens the store, joins the consumer group and binds the read API.
func NewIndexer(cfg IndexerConfig, logger *slog.Logger, h *health.Health) (_ *Indexer, err error) {
	setIndexerGC(logger)
	if err := cfg.Skew.Validate(); err != nil {
		return nil, err
	}
	decider, err := sampling.NewTailSampler(cfg.Sampling, h.Registry())
	if err != nil {
		return nil, err
	}
	var alertingMetrics indexer.AlertingMetrics
	if cfg.AlertRules != "" {
		groups, err := alerting.LoadRules(cfg.AlertRules)
		if err != nil {
			return nil, err
		}
		if rules := alerting.NewMetricRules(groups); rules.Len() > 0 {
			alertingMetrics = rules
		}
	}
	fetcher, err := bus.NewFetcher(cfg.Kafka)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cfg.DataDir, "spans")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	store, err := index.Open(dir, logger.With("component", "store"), h.Registry(), cfg.Store)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, store.Close())
		}
	}()
	redStore, err := red.Open(filepath.Join(cfg.DataDir, "red"), logger.With("component", "red"), h.Registry(), cfg.RED)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, redStore.Close())
		}
	}()
	logStore, err := logstore.Open(filepath.Join(cfg.DataDir, "logs"), logger.With("component", "logstore"), h.Registry(), cfg.Logs)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, logStore.Close())
		}
	}()
	metricStore, err := metricstore.Open(filepath.Join(cfg.DataDir, "metrics"), logger.With("component", "metricstore"), h.Registry(), cfg.Metrics)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, metricStore.Close())
		}
	}()
	// One pager for every store of the data dir: they all map their files.
	pager, err := residency.New(cfg.DataDir, logger.With("component", "residency"), h.Registry())
	if err != nil {
		return nil, err
	}
	cfg.Indexer.LogsTopic, cfg.Indexer.MetricsTopic = cfg.Kafka.LogsTopic, cfg.Kafka.MetricsTopic
	cfg.Indexer.TracesTopic, cfg.Indexer.ExemplarsTopic = cfg.Kafka.TracesTopic, cfg.Kafka.ExemplarsTopic
	ix, err := indexer.New(cfg.Indexer, indexer.Parts{
		Store:    store,
		Stages:   []indexer.Stage{indexer.SkewRepair(clockskew.RepairClockSkew(cfg.Skew))},
		Decider:  decider,
		Observer: redStore,
		Logs:     logStore,
		Metrics:  metricStore,
		Alerting: alertingMetrics,
		Fetcher:  fetcher,
	}, logger.With("component", "indexer"), h.Registry())
	if err != nil {
		return nil, err
	}
	consumer, err := bus.NewConsumer(cfg.Kafka, cfg.Consumer, cfg.Kafka.Topics(), ix, logger.With("component", "consumer"), h.Registry())
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		consumer.Close()
		return nil, fmt.Errorf("listen indexer read API on %s: %w", cfg.GRPCAddr, err)
	}
	srv := grpc.NewServer(grpc.MaxSendMsgSize(256 << 20))
	readerpb.RegisterReaderServer(srv, readapi.New(store, logger.With("component", "readapi"), readapi.WithRED(redStore)))
	logspb.RegisterLogReaderServer(srv, readapi.NewLogs(logStore, logStore.Policy(), logger.With("component", "readapi")))
	metricspb.RegisterMetricReaderServer(srv, readapi.NewMetrics(metricStore, logger.With("component", "readapi")))
	h.AddLocal("store", store.Writable)
	h.AddLocal("kafka_partitions", func(context.Context) error {
		if consumer.Assigned() == 0 {
			return errors.New("no partitions assigned yet")
		}
		return nil
	})
	h.AddDependency("kafka", consumer.Ping)
	return &Indexer{cfg: cfg, store: store, red: redStore, logs: logStore, metrics: metricStore, pager: pager, ix: ix, consumer: consumer, grpc: srv, lis: lis, log: logger}, nil
}

// ReadAddr is the bound address of the read API.
func (i *Indexer) ReadAddr() string { return i.lis.Addr().String() }

// Run consumes and serves until ctx ends. Shutdown order matters: stop
// consuming, decide and write every buffered trace, commit the offsets that
// are now complete, leave the group, stop serving reads, close the store.
func (i *Indexer) Run(ctx context.Context) error {
	ixCtx, stopIx := context.WithCancel(context.Background())
	defer stopIx()
	ixDone := make(chan error, 1)
	go func() { ixDone <- i.ix.Run(ixCtx) }()
	grpcDone := make(chan error, 1)
	go func() { grpcDone <- i.grpc.Serve(i.lis) }()
	go i.pager.Run(ctx)
	i.log.Info("indexer read API listening", "addr", i.ReadAddr())

	consErr := i.consumer.Run(ctx)
	stopIx()
	ixErr := <-ixDone // returns once every buffered trace is decided and written
	// Closing the metrics store flushes its counts, which releases the last
	// records they held: only then is the final commit complete.
	redErr := i.red.Close()
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	i.consumer.CommitNow(cctx)
	i.consumer.Close()
	i.grpc.GracefulStop()
	grpcErr := <-grpcDone
	if errors.Is(grpcErr, grpc.ErrServerStopped) {
		grpcErr = nil
	}
	return errors.Join(consErr, ixErr, redErr, grpcErr, i.store.Close(), i.logs.Close(), i.metrics.Close())
}
