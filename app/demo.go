package app

import (
	"context"
	"flag"
	"log/slog"

	"github.com/threadline/threadline/demo"
)

// DemoConfig turns on the noodle-shop demo traffic inside the all-in-one, so
// `make run` has something to show.
type DemoConfig struct {
	// Enabled starts the demo. Default false.
	Enabled bool
	Demo    demo.Config
}

// RegisterFlags registers --demo, --demo-rate and --demo-skew.
func (c *DemoConfig) RegisterFlags(fs *flag.FlagSet) {
	c.Demo = demo.DefaultConfig()
	fs.BoolVar(&c.Enabled, "demo", c.Enabled, "send realistic demo traffic (a noodle-shop chain's order path) to this all-in-one through the OpenTelemetry SDK")
	fs.Float64Var(&c.Demo.Rate, "demo-rate", c.Demo.Rate, "demo orders per second")
	fs.DurationVar(&c.Demo.Skew, "demo-skew", c.Demo.Skew, "clock offset of the demo's bank-api host, for the clock-skew repair to show")
}

// Start runs the demo against a's OTLP gRPC receiver until ctx ends.
func (c *DemoConfig) Start(ctx context.Context, a *AllInOne, logger *slog.Logger) {
	if !c.Enabled {
		return
	}
	grpcAddr, _ := a.Collector().Receiver().Addrs()
	cfg := c.Demo
	cfg.Endpoint = grpcAddr.String()
	cfg.Logger = logger.With("component", "demo")
	go func() {
		if err := demo.Run(ctx, cfg); err != nil && ctx.Err() == nil {
			logger.Error("demo traffic stopped", "err", err)
		}
	}()
}
