package demo

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"
)

// Config is the demo's settings. Start from DefaultConfig.
type Config struct {
	// Endpoint is the OTLP gRPC host:port the services export traces and
	// logs to, without TLS; it must serve both. Default 127.0.0.1:4317.
	Endpoint string
	// Rate is the mean number of orders per second; arrivals are Poisson.
	// Default 5.
	Rate float64
	// Duration stops the demo after this long; 0 runs until the context
	// ends (SIGINT or SIGTERM in cmd/demo). Default 0.
	Duration time.Duration
	// Orders stops the demo after this many orders; 0 means no limit.
	// Default 0.
	Orders int
	// Seed makes the traffic reproducible: the same seed gives the same
	// orders, outcomes, durations and trace and span IDs. 0 picks a random
	// seed and logs it. Default 0.
	Seed uint64
	// Skew is how far the bank-api host's clock runs ahead of true time
	// (negative: behind), so the indexer's clock-skew repair has something
	// to repair. Default 150ms.
	Skew time.Duration
	// Environment is the deployment.environment of every service. Default
	// "demo".
	Environment string
	// Logger receives progress and the final summary; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Endpoint:    "127.0.0.1:4317",
		Rate:        5,
		Skew:        150 * time.Millisecond,
		Environment: "demo",
	}
}

// RegisterFlags binds the settings to fs, using the values in c as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Endpoint, "otlp-endpoint", c.Endpoint, "OTLP gRPC `host:port` to export the demo traces and logs to (plaintext)")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "mean orders per second")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "stop after this long (0 = until interrupted)")
	fs.IntVar(&c.Orders, "orders", c.Orders, "stop after this many orders (0 = no limit)")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed for reproducible traffic and IDs (0 = random, logged at start)")
	fs.DurationVar(&c.Skew, "skew", c.Skew, "clock offset of the bank-api host, to exercise clock-skew repair")
	fs.StringVar(&c.Environment, "environment", c.Environment, "deployment.environment resource attribute")
}

// maxSkew bounds Skew: beyond it no RPC pair could be repaired and the demo
// would only show garbage.
const maxSkew = time.Minute

// Validate rejects settings that cannot work.
func (c *Config) Validate() error {
	var errs []error
	if c.Endpoint == "" {
		errs = append(errs, errors.New("the OTLP endpoint must be set"))
	}
	if !(c.Rate > 0) || c.Rate > 100_000 {
		errs = append(errs, fmt.Errorf("rate must be above 0 and at most 100000 orders per second, got %g", c.Rate))
	}
	if c.Duration < 0 {
		errs = append(errs, fmt.Errorf("duration must not be negative, got %s", c.Duration))
	}
	if c.Orders < 0 {
		errs = append(errs, fmt.Errorf("orders must not be negative, got %d", c.Orders))
	}
	if c.Skew <= -maxSkew || c.Skew >= maxSkew {
		errs = append(errs, fmt.Errorf("skew must be within ±%s, got %s", maxSkew, c.Skew))
	}
	if c.Environment == "" {
		errs = append(errs, errors.New("the environment must be set"))
	}
	return errors.Join(errs...)
}
