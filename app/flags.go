// Package app assembles Threadline's roles — collector, indexer, query and the
// all-in-one — from their packages. Each role parses flags into the packages'
// Configs, calls their constructors and runs the results until the context
// ends; cmd/* are thin mains around it, so the all-in-one runs the very same
// code as the separate binaries.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"
)

// EnvPrefix starts the environment variable of every flag of the Threadline
// binaries: --data-dir is THREADLINE_DATA_DIR.
const EnvPrefix = "THREADLINE_"

// EnvName is the environment variable that sets a flag: prefix, then the flag
// name upper-cased with '-' and '.' as '_'.
func EnvName(prefix, flagName string) string {
	return prefix + strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToUpper(flagName))
}

// ParseFlags applies environment variables, then the command line (which wins),
// and documents the variables in --help.
func ParseFlags(fs *flag.FlagSet, args []string, envPrefix string) error {
	fs.VisitAll(func(f *flag.Flag) { f.Usage += " [$" + EnvName(envPrefix, f.Name) + "]" })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if v, ok := os.LookupEnv(EnvName(envPrefix, f.Name)); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("$%s: %w", EnvName(envPrefix, f.Name), err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return fs.Parse(args)
}

// LoggingConfig selects the structured log format and level.
type LoggingConfig struct {
	// Level is debug, info, warn or error. Default info.
	Level string
	// Format is json or text. Default text.
	Format string
}

// RegisterFlags registers --log-level and --log-format.
func (c *LoggingConfig) RegisterFlags(fs *flag.FlagSet) {
	c.Level, c.Format = "info", "text"
	fs.StringVar(&c.Level, "log-level", c.Level, "log level: debug, info, warn or error")
	fs.StringVar(&c.Format, "log-format", c.Format, "log format: text or json")
}

// Logger builds the slog logger the flags ask for.
func (c *LoggingConfig) Logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", c.Level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch c.Format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("log format %q: want text or json", c.Format)
	}
}

// serveHTTP serves h on addr until ctx ends, then shuts down gracefully.
// ready, if not nil, receives the bound address.
func serveHTTP(ctx context.Context, addr string, h http.Handler, logger *slog.Logger, what string, ready func(net.Addr)) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s on %s: %w", what, addr, err)
	}
	if ready != nil {
		ready(lis.Addr())
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	logger.Info(what+" listening", "addr", lis.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", what, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shut down %s: %w", what, err)
	}
	return nil
}

// RunWithAdmin runs role alongside an HTTP server for the health endpoints and
// metrics; the admin server stops only after role returned, so /healthz
// answers throughout a graceful shutdown.
func RunWithAdmin(ctx context.Context, addr string, h interface{ Register(*http.ServeMux) }, logger *slog.Logger, role func(context.Context) error) error {
	mux := http.NewServeMux()
	h.Register(mux)
	registerPprof(mux)
	adminCtx, stopAdmin := context.WithCancel(context.Background())
	adminErr := make(chan error, 1)
	go func() { adminErr <- serveHTTP(adminCtx, addr, mux, logger, "admin HTTP", nil) }()
	err := role(ctx)
	stopAdmin()
	return errors.Join(err, <-adminErr)
}

// registerPprof mounts the profiler when THREADLINE_PPROF=1: opt-in, for
// benchmarks and incidents, never on by default. Besides the named profiles
// (heap, goroutine, mutex…) and the CPU profile, it serves the execution
// trace, which shows what the profile cannot: how long goroutines waited to
// run, and what they blocked on. Not the command line (/debug/pprof/cmdline):
// flags may carry secrets.
func registerPprof(mux *http.ServeMux) {
	if os.Getenv("THREADLINE_PPROF") == "1" {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	}
}
