// Command loadgen drives OTLP gRPC trace load into a collector for
// benchmarks and prints a JSON report on stdout; see package loadgen.
//
// Every flag can also be set through the environment: --spans-per-request is
// THREADLINE_LOADGEN_SPANS_PER_REQUEST, and so on. Flags win over variables.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/threadline/threadline/app"
	"github.com/threadline/threadline/loadgen"
)

const envPrefix = "THREADLINE_LOADGEN_"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	cfg := loadgen.DefaultConfig()
	cfg.RegisterFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: loadgen [flags]\n\nSends pre-encoded OTLP trace requests over gRPC and prints a JSON report.\nEach flag may also be set as %s<FLAG_NAME> (upper case, dashes as underscores).\n\n", envPrefix)
		fs.PrintDefaults()
	}
	if err := app.ParseFlags(fs, args, envPrefix); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := loadgen.Run(ctx, cfg, logger)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}
