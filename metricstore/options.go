package metricstore

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// Options configures the metric store. Start from DefaultOptions. Received
// metrics are far lower volume than spans (a few points per series per
// export interval), so Badger's memory is kept small: the all-in-one runs it
// next to the span and log stores.
type Options struct {
	// Retention is how long points and exemplar links are kept, counted from
	// each one's own time (Badger TTL). Points already past it are not
	// written. Default 7 days.
	Retention time.Duration
	// SyncWrites fsyncs every commit. Default false: Kafka replays what was
	// not yet written and writes are idempotent.
	SyncWrites bool
	// MemTableSize is the size of one Badger memtable. Default 4 MiB.
	MemTableSize int64
	// BlockCacheSize is Badger's decompressed block cache. Default 4 MiB.
	BlockCacheSize int64
	// IndexCacheSize is Badger's index and bloom-filter cache. Default 2 MiB.
	IndexCacheSize int64
}

// DefaultOptions returns the defaults documented on each field.
func DefaultOptions() Options {
	return Options{
		Retention:      7 * 24 * time.Hour,
		MemTableSize:   4 << 20,
		BlockCacheSize: 4 << 20,
		IndexCacheSize: 2 << 20,
	}
}

// RegisterFlags registers the options with the current values as defaults.
func (o *Options) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&o.Retention, "metrics.retention", o.Retention, "How long received metric points and exemplar links are kept, from each one's time.")
	fs.BoolVar(&o.SyncWrites, "metrics.sync-writes", o.SyncWrites, "Fsync every metric store commit.")
}

// Validate rejects settings the store cannot work with.
func (o Options) Validate() error {
	var errs []error
	if o.Retention < time.Second {
		errs = append(errs, fmt.Errorf("metrics.retention must be at least 1s (Badger TTLs have whole-second resolution), got %s", o.Retention))
	}
	if o.MemTableSize < 1<<20 || o.BlockCacheSize <= 0 || o.IndexCacheSize < 0 {
		errs = append(errs, errors.New("metrics Badger memtable must be at least 1 MiB and the block cache positive"))
	}
	return errors.Join(errs...)
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
		WithBlockSize(16 << 10).
		WithNumCompactors(2).
		WithValueLogFileSize(16 << 20).
		WithCompression(options.ZSTD).
		WithZSTDCompressionLevel(1).
		// Points and links are tens of bytes: keep every value in the LSM
		// tree so TTL expiry is reclaimed by compaction alone, without
		// value-log GC.
		WithValueThreshold(64 << 10).
		WithMetricsEnabled(false).
		WithNumGoroutines(2)
}
