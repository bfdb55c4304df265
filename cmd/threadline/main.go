// Command threadline is the all-in-one: OTLP collector, an embedded
// Kafka-protocol broker, the indexer and the query service in one process,
// for a single machine. Point --kafka-brokers at Kafka or Redpanda to use an
// external broker instead; nothing else changes.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"

	"github.com/threadline/threadline/app"
	"github.com/threadline/threadline/health"
)

func main() {
	cfg := app.DefaultAllInOneConfig()
	var demo app.DemoConfig
	os.Exit(app.Main("threadline", "the all-in-one tracing collector and correlation store",
		func(fs *flag.FlagSet) {
			cfg.RegisterFlags(fs)
			demo.RegisterFlags(fs)
		},
		func(ctx context.Context, logger *slog.Logger, h *health.Health) error {
			a, err := app.NewAllInOne(ctx, cfg, logger, h)
			if err != nil {
				return err
			}
			demo.Start(ctx, a, logger)
			return a.Run(ctx)
		}))
}
