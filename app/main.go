package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/KimMachineGun/automemlimit/memlimit"

	"github.com/threadline/threadline/health"
)

// Main is the body of every cmd: it parses flags (and their environment
// variables), builds the logger and the health/metrics registry, and runs
// run until SIGINT or SIGTERM, which start a graceful shutdown. It returns
// the process exit code.
func Main(name, about string, register func(fs *flag.FlagSet), run func(ctx context.Context, logger *slog.Logger, h *health.Health) error) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s — %s\n\nEvery flag can also be set by the environment variable shown after it.\n\nFlags:\n", name, about)
		fs.PrintDefaults()
	}
	var logCfg LoggingConfig
	logCfg.RegisterFlags(fs)
	register(fs)
	if err := ParseFlags(fs, os.Args[1:], EnvPrefix); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	logger, err := logCfg.Logger(os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	logger = logger.With("app", name)
	setMemoryLimit(logger, memlimit.FromCgroup)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	version := health.Version()
	logger.Info("starting", "version", version)
	if err := run(ctx, logger, health.New(version)); err != nil {
		logger.Error("exiting", "err", err)
		return 1
	}
	return 0
}

// setMemoryLimit sets the Go runtime's soft memory limit (GOMEMLIMIT) to 90%
// of the container's memory limit, when there is one. The heap normally
// grows to twice what is live before a collection; near the container's
// limit the runtime collects sooner instead, trading CPU for not being
// OOM-killed with a decision buffer and uncommitted offsets in hand. An
// explicit GOMEMLIMIT wins, and AUTOMEMLIMIT=off (or another ratio in
// (0, 1]) changes it.
func setMemoryLimit(logger *slog.Logger, limit memlimit.Provider) {
	set, err := memlimit.Set(memlimit.WithProvider(limit))
	switch {
	case errors.Is(err, memlimit.ErrNoCgroup) || errors.Is(err, memlimit.ErrCgroupsNotSupported):
		logger.Debug("no container memory limit found; GOMEMLIMIT left unset", "err", err)
	case err != nil:
		logger.Warn("could not read the container memory limit; GOMEMLIMIT left unset", "err", err)
	case set < math.MaxInt64:
		logger.Info("Go memory limit set", "gomemlimit_bytes", set)
	default:
		logger.Debug("the container has no memory limit; GOMEMLIMIT left unset")
	}
}

// indexerGOGC is the garbage collector's percent in a process that runs an
// indexer (the indexer and the all-in-one), unless GOGC is set. The heap
// grows to 1.8 times what is live before a collection instead of twice: the
// indexer's live heap (the decision buffer, records in flight, pools) is
// most of the process's memory, and at the end-to-end benchmark's load this
// takes 30–45 MiB off its peak RSS (420–437 against 465–473 MiB in three
// interleaved runs) for CPU within the noise: the garbage collector takes
// about 4% of the CPU at the default, now that the indexer reuses its
// buffers.
const indexerGOGC = 80

// setIndexerGC sets indexerGOGC unless the environment sets GOGC.
func setIndexerGC(logger *slog.Logger) {
	if os.Getenv("GOGC") != "" {
		return
	}
	if old := debug.SetGCPercent(indexerGOGC); old != indexerGOGC {
		logger.Debug("GC percent set for the indexer", "gogc", indexerGOGC, "was", old)
	}
}
