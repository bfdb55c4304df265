package logstore

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// Options configures the log store and the level policy. Start from
// DefaultOptions. Badger's memory is kept small (the trace → logs keys are a
// side index; Bleve holds the bulk) so that the all-in-one stays under
// 500 MiB RSS next to the span store.
type Options struct {
	// Retention is how long log lines are kept, counted from each line's own
	// time. Bleve shards are deleted whole once their end is past it; Badger
	// keys carry it as TTL. Default 7 days.
	Retention time.Duration
	// ShardDuration is the time span of one Bleve index. Shorter shards
	// make retention finer and searches of recent data touch less; longer
	// ones mean fewer open indexes. Default 1 hour.
	ShardDuration time.Duration
	// ShardIdleTimeout closes a Bleve shard nobody has written or read for
	// this long; it is reopened on demand. Default 5 minutes.
	ShardIdleTimeout time.Duration
	// MaintenanceInterval is how often idle shards are closed, expired
	// shards deleted and Badger's value log collected. Default 1 minute.
	MaintenanceInterval time.Duration
	// MinLevel is the lowest level stored for a line without a trace.
	// Default INFO.
	MinLevel string
	// MinLevelDropped is the lowest level stored for a line of a trace the
	// sampler dropped. Default WARN.
	MinLevelDropped string
	// MaxOverrideDuration caps a level override. Default 24h.
	MaxOverrideDuration time.Duration
	// SyncWrites fsyncs every Badger commit. Default false: Kafka replays
	// what was not yet written and writes are idempotent.
	SyncWrites bool
	// MemTableSize is the size of one Badger memtable. Default 8 MiB.
	MemTableSize int64
	// BlockCacheSize is Badger's decompressed block cache. Default 8 MiB.
	BlockCacheSize int64
	// IndexCacheSize is Badger's index and bloom-filter cache. Default 4 MiB.
	IndexCacheSize int64
}

// DefaultOptions returns the defaults documented on each field.
func DefaultOptions() Options {
	return Options{
		Retention:           7 * 24 * time.Hour,
		ShardDuration:       time.Hour,
		ShardIdleTimeout:    5 * time.Minute,
		MaintenanceInterval: time.Minute,
		MinLevel:            "INFO",
		MinLevelDropped:     "WARN",
		MaxOverrideDuration: 24 * time.Hour,
		MemTableSize:        8 << 20,
		BlockCacheSize:      8 << 20,
		IndexCacheSize:      4 << 20,
	}
}

// RegisterFlags registers the options with the current values as defaults.
// The level flags keep the names the issue gave them (no "logs." prefix).
func (o *Options) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&o.Retention, "logs.retention", o.Retention, "How long log lines are kept, from each line's time; whole Bleve shards are deleted past it.")
	fs.DurationVar(&o.ShardDuration, "logs.shard-duration", o.ShardDuration, "Time span of one Bleve log index shard.")
	fs.DurationVar(&o.ShardIdleTimeout, "logs.shard-idle-timeout", o.ShardIdleTimeout, "Close a Bleve shard unused for this long (reopened on demand).")
	fs.StringVar(&o.MinLevel, "logs-min-level", o.MinLevel, "Lowest level stored for log lines without a trace (trace, debug, info, warn, error, fatal).")
	fs.StringVar(&o.MinLevelDropped, "logs-min-level-dropped", o.MinLevelDropped, "Lowest level stored for log lines of traces the sampler dropped; lines of kept traces are stored at every level.")
	fs.DurationVar(&o.MaxOverrideDuration, "logs.max-override-duration", o.MaxOverrideDuration, "Longest time-boxed level override accepted by POST /api/v1/logs/levels.")
	fs.BoolVar(&o.SyncWrites, "logs.sync-writes", o.SyncWrites, "Fsync every trace → logs commit.")
}

// Validate rejects settings the store cannot work with.
func (o Options) Validate() error {
	var errs []error
	if o.Retention < time.Second {
		errs = append(errs, fmt.Errorf("logs.retention %s is below one second, the resolution of Badger's TTL", o.Retention))
	}
	if o.ShardDuration < time.Millisecond {
		errs = append(errs, fmt.Errorf("logs.shard-duration %s is below one millisecond", o.ShardDuration))
	}
	if o.ShardDuration > o.Retention {
		errs = append(errs, fmt.Errorf("logs.shard-duration %s exceeds logs.retention %s: a shard is only deleted whole, so it would outlive the retention", o.ShardDuration, o.Retention))
	}
	if o.ShardIdleTimeout <= 0 || o.MaintenanceInterval <= 0 {
		errs = append(errs, errors.New("logs shard idle timeout and maintenance interval must be positive"))
	}
	if o.MaxOverrideDuration <= 0 {
		errs = append(errs, errors.New("logs.max-override-duration must be positive"))
	}
	if _, err := o.defaults(); err != nil {
		errs = append(errs, err)
	}
	if o.MemTableSize < 1<<20 || o.BlockCacheSize <= 0 || o.IndexCacheSize < 0 {
		errs = append(errs, errors.New("logs Badger memtable must be at least 1 MiB and the block cache positive"))
	}
	return errors.Join(errs...)
}

func (o Options) defaults() (Defaults, error) {
	minLevel, err := ParseLevel(o.MinLevel)
	if err != nil {
		return Defaults{}, fmt.Errorf("logs-min-level: %w", err)
	}
	minDropped, err := ParseLevel(o.MinLevelDropped)
	if err != nil {
		return Defaults{}, fmt.Errorf("logs-min-level-dropped: %w", err)
	}
	return Defaults{MinLevel: minLevel, MinLevelDropped: minDropped}, nil
}

func (o Options) badgerOptions(dir string, logger badger.Logger) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(logger).
		WithSyncWrites(o.SyncWrites).
		WithMemTableSize(o.MemTableSize).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(o.BlockCacheSize).
		WithIndexCacheSize(o.IndexCacheSize).
		WithBlockSize(64 << 10).
		WithNumCompactors(2).
		WithValueLogFileSize(64 << 20).
		WithCompression(options.ZSTD).
		WithZSTDCompressionLevel(1).
		WithValueThreshold(64 << 10).
		WithMetricsEnabled(false).
		WithNumGoroutines(2)
}
