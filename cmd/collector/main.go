// Command collector receives OTLP over gRPC (:4317) and HTTP (:4318), splits
// every request by trace ID and produces it to Kafka, acknowledging the client
// only once Kafka acknowledged every record. It is stateless: run as many
// replicas as the traffic needs.
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
	cfg := app.DefaultCollectorConfig()
	adminAddr := "127.0.0.1:8888"
	os.Exit(app.Main("collector", "OTLP receiver that produces to Kafka keyed by trace ID",
		func(fs *flag.FlagSet) {
			cfg.RegisterFlags(fs)
			fs.StringVar(&adminAddr, "admin-addr", adminAddr, "address for /healthz, /readyz and /metrics")
		},
		func(ctx context.Context, logger *slog.Logger, h *health.Health) error {
			c, err := app.NewCollector(cfg, logger, h)
			if err != nil {
				return err
			}
			return app.RunWithAdmin(ctx, adminAddr, h, logger, c.Run)
		}))
}
