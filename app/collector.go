package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/health"
	"github.com/threadline/threadline/receiver"
	"github.com/threadline/threadline/span"
)

// CollectorConfig configures the collector role.
type CollectorConfig struct {
	Receiver receiver.Config
	Kafka    bus.Config
}

// DefaultCollectorConfig returns the packages' defaults.
func DefaultCollectorConfig() CollectorConfig {
	return CollectorConfig{Receiver: receiver.DefaultConfig(), Kafka: bus.DefaultConfig()}
}

// RegisterFlags registers the collector's flags.
func (c *CollectorConfig) RegisterFlags(fs *flag.FlagSet) {
	c.Receiver.RegisterFlags(fs)
	c.Kafka.RegisterFlags(fs)
}

// Collector receives OTLP and produces it to Kafka.
type Collector struct {
	recv     *receiver.Receiver
	producer *bus.Producer
	log      *slog.Logger
}

// NewCollector builds the collector and registers its health checks.
func NewCollector(cfg CollectorConfig, logger *slog.Logger, h *health.Health) (*Collector, error) {
	if err := cfg.Receiver.Validate(); err != nil {
		return nil, err
	}
	prod, err := bus.NewProducer(cfg.Kafka, logger.With("component", "producer"), h.Registry())
	if err != nil {
		return nil, err
	}
	recv, err := receiver.New(cfg.Receiver, publisher{prod}, logger.With("component", "receiver"), h.Registry(), receiver.WithLogs(publisher{prod}), receiver.WithMetrics(publisher{prod}))
	if err != nil {
		_ = prod.Close(context.Background())
		return nil, err
	}
	h.AddDependency("kafka", prod.Ping)
	return &Collector{recv: recv, producer: prod, log: logger}, nil
}

// Receiver exposes the OTLP receiver (its bound addresses, for tests).
func (c *Collector) Receiver() *receiver.Receiver { return c.recv }

// Run serves OTLP until ctx ends, lets in-flight requests finish, then flushes
// the producer.
func (c *Collector) Run(ctx context.Context) error {
	err := c.recv.Run(ctx)
	fctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return errors.Join(err, c.producer.Close(fctx))
}

// publisher maps the bus's buffer-full error onto the receiver's
// backpressure error, which clients are told to retry later.
type publisher struct{ p *bus.Producer }

func (p publisher) PublishTraces(ctx context.Context, batches []span.TraceBatch) error {
	return backpressure(p.p.PublishTraces(ctx, batches))
}

func (p publisher) PublishLogs(ctx context.Context, batches []span.LogBatch) error {
	return backpressure(p.p.PublishLogs(ctx, batches))
}

func (p publisher) PublishMetrics(ctx context.Context, data []byte, points int) error {
	return backpressure(p.p.PublishMetrics(ctx, data, points))
}

// ReleasesData passes on the producer's promise to keep no reference to a
// batch after PublishTraces returned nil, so the receiver recycles buffers.
func (p publisher) ReleasesData() bool { return p.p.ReleasesData() }

func backpressure(err error) error {
	if errors.Is(err, bus.ErrBufferFull) {
		return fmt.Errorf("%w: %w", receiver.ErrBackpressure, err)
	}
	return err
}
