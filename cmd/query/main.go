// Command query serves the UI and the HTTP APIs (native, Tempo- and
// Jaeger-compatible) on :16686. It is stateless: it fans every read out to
// the indexers' gRPC read APIs and merges the answers.
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
	cfg := app.DefaultQueryConfig()
	os.Exit(app.Main("query", "query service: UI and trace APIs over the indexers",
		func(fs *flag.FlagSet) { cfg.RegisterFlags(fs, true) },
		func(ctx context.Context, logger *slog.Logger, h *health.Health) error {
			q, err := app.NewQuery(cfg, logger, h)
			if err != nil {
				return err
			}
			return q.Run(ctx)
		}))
}
