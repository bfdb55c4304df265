// Command indexer consumes spans from Kafka in a consumer group, assembles
// and decides traces, stores the kept ones in Badger and serves them over the
// gRPC read API that the query service fans out to.
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
	cfg := app.DefaultIndexerConfig()
	adminAddr := "127.0.0.1:8889"
	os.Exit(app.Main("indexer", "Kafka consumer that assembles, samples and stores traces",
		func(fs *flag.FlagSet) {
			cfg.RegisterFlags(fs, true)
			fs.StringVar(&adminAddr, "admin-addr", adminAddr, "address for /healthz, /readyz and /metrics")
		},
		func(ctx context.Context, logger *slog.Logger, h *health.Health) error {
			ix, err := app.NewIndexer(cfg, logger, h)
			if err != nil {
				return err
			}
			return app.RunWithAdmin(ctx, adminAddr, h, logger, ix.Run)
		}))
}
