package app

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/health"
)

// AllInOneConfig configures the single-binary deployment: collector, embedded
// broker (unless --kafka-brokers names external ones), indexer and query.
type AllInOneConfig struct {
	Collector CollectorConfig
	Embedded  bus.EmbeddedConfig
	Indexer   IndexerConfig
	Query     QueryConfig
}

// DefaultAllInOneConfig returns the defaults: everything on loopback, the
// embedded broker under the data dir.
func DefaultAllInOneConfig() AllInOneConfig {
	c := AllInOneConfig{
		Collector: DefaultCollectorConfig(),
		Embedded:  bus.DefaultEmbeddedConfig(),
		Indexer:   DefaultIndexerConfig(),
		Query:     DefaultQueryConfig(),
	}
	c.Collector.Kafka.Brokers = nil // empty: run the embedded broker
	return c
}

// RegisterFlags registers every role's flags once.
func (c *AllInOneConfig) RegisterFlags(fs *flag.FlagSet) {
	c.Collector.RegisterFlags(fs)
	c.Embedded.RegisterFlags(fs)
	c.Indexer.RegisterFlags(fs, false)
	c.Query.RegisterFlags(fs, false)
}

// AllInOne runs every role in one process, wired through the same Kafka
// client code as a distributed deployment.
type AllInOne struct {
	embedded  *bus.Embedded
	collector *Collector
	indexer   *Indexer
	query     *Query
	log       *slog.Logger
}

// NewAllInOne starts the embedded broker (if used) and builds the roles.
func NewAllInOne(ctx context.Context, cfg AllInOneConfig, logger *slog.Logger, h *health.Health) (_ *AllInOne, err error) {
	a := &AllInOne{log: logger}
	defer func() {
		if err != nil {
			a.closeEarly()
		}
	}()
	if len(cfg.Collector.Kafka.Brokers) == 0 {
		cfg.Embedded.DataDir = filepath.Join(cfg.Indexer.DataDir, "kafka")
		a.embedded, err = bus.StartEmbedded(ctx, cfg.Embedded, cfg.Collector.Kafka.Topics(), logger.With("component", "kafka"))
		if err != nil {
			return nil, err
		}
		cfg.Collector.Kafka.Brokers = []string{a.embedded.Addr()}
		cfg.Collector.Kafka.Dial = a.embedded.Dial
	}
	cfg.Indexer.Kafka = cfg.Collector.Kafka
	if cfg.Indexer.AlertRules == "" {
		// One process: the ruler's rules name the alerting metrics.
		cfg.Indexer.AlertRules = cfg.Query.Alerts.RulesFile
	}
	if a.indexer, err = NewIndexer(cfg.Indexer, logger, h); err != nil {
		return nil, err
	}
	cfg.Query.Indexers = []string{a.indexer.ReadAddr()}
	if cfg.Query.Alerts.DataDir == "" {
		// One process is the whole deployment: it is the ruler, and it
		// receives Alertmanager webhooks, with its events under the data dir.
		cfg.Query.Alerts.DataDir = filepath.Join(cfg.Indexer.DataDir, "alerts")
	}
	if a.query, err = NewQuery(cfg.Query, logger, h); err != nil {
		return nil, err
	}
	if a.collector, err = NewCollector(cfg.Collector, logger, h); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *AllInOne) closeEarly() {
	if a.indexer != nil {
		a.indexer.consumer.Close()
		a.indexer.grpc.Stop()
		_ = a.indexer.red.Close()
		_ = a.indexer.logs.Close()
		_ = a.indexer.metrics.Close()
		_ = a.indexer.store.Close()
	}
	if a.query != nil {
		a.query.close()
	}
	if a.embedded != nil {
		a.embedded.Close()
	}
}

// Collector is the collector role (for its bound addresses).
func (a *AllInOne) Collector() *Collector { return a.collector }

// Query is the query role (for its bound address).
func (a *AllInOne) Query() *Query { return a.query }

// Run runs until ctx ends, then shuts down front to back so nothing accepted
// is lost: the collector stops accepting and flushes to Kafka, the indexer
// writes what it holds and commits, the query service stops, the broker
// persists and closes.
func (a *AllInOne) Run(ctx context.Context) error {
	collCtx, stopColl := context.WithCancel(context.Background())
	ixCtx, stopIx := context.WithCancel(context.Background())
	qCtx, stopQ := context.WithCancel(context.Background())
	defer stopColl()
	defer stopIx()
	defer stopQ()
	var (
		wg                   sync.WaitGroup
		collErr, ixErr, qErr error
	)
	collDone, ixDone := make(chan struct{}), make(chan struct{})
	wg.Add(3)
	go func() { defer wg.Done(); defer close(ixDone); ixErr = a.indexer.Run(ixCtx) }()
	go func() { defer wg.Done(); qErr = a.query.Run(qCtx) }()
	go func() { defer wg.Done(); defer close(collDone); collErr = a.collector.Run(collCtx) }()

	// A role that fails on its own takes the process down too.
	select {
	case <-ctx.Done():
	case <-collDone:
	case <-ixDone:
	}
	a.log.Info("shutting down")
	stopColl()
	<-collDone
	stopIx()
	<-ixDone
	stopQ()
	wg.Wait()
	if a.embedded != nil {
		a.embedded.Close()
	}
	err := errors.Join(collErr, ixErr, qErr)
	a.log.Info("stopped", "err", err)
	return err
}
