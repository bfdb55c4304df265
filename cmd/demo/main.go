// Command demo sends realistic noodle-shop order traces to an OTLP gRPC
// endpoint until interrupted; see package demo. `make run` starts it beside
// the all-in-one.
//
// Every flag can also be set through the environment: --otlp-endpoint is
// THREADLINE_DEMO_OTLP_ENDPOINT, and so on. Flags win over variables.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"go.opentelemetry.io/otel"

	"github.com/threadline/threadline/app"
	"github.com/threadline/threadline/demo"
)

const envPrefix = "THREADLINE_DEMO_"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	cfg := demo.DefaultConfig()
	cfg.RegisterFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: demo [flags]\n\nSends simulated noodle-shop order traces over OTLP gRPC until interrupted.\nEach flag may also be set as %s<FLAG_NAME> (upper case, dashes as underscores).\n\n", envPrefix)
		fs.PrintDefaults()
	}
	if err := app.ParseFlags(fs, args, envPrefix); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg.Logger = logger
	// The SDK reports export failures (collector not up yet, say) through
	// the global otel error handler; route them to our structured log
	// instead of the SDK's default stderr logger.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		logger.Warn("export traces", "err", err)
	}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return demo.Run(ctx, cfg)
}
