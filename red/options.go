package red

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// Options configures the RED store. Start from DefaultOptions. The Badger
// memory knobs are small on purpose: RED rows are tiny and few, and the
// all-in-one binary must stay under 500 MiB RSS beside the span store.
type Options struct {
	// BucketWidth is the time resolution of stored RED rows; query steps are
	// whole multiples of it. It is part of the on-disk format: reopening a
	// store with another width is refused. Default 10s.
	BucketWidth time.Duration
	// Retention is how long rows and trace links live (Badger TTL from the
	// last write, whole seconds). Default 7 days.
	Retention time.Duration
	// ReplayWindow is how long a partition's record of counted Kafka
	// records is kept after its last write. A replay after a crash and a
	// downtime longer than this counts the records counted but not yet
	// committed before the crash again, so it must exceed the indexer's
	// worst commit lag plus downtime. Default 1h.
	ReplayWindow time.Duration
	// MaxSeriesPerBucket caps the distinct (service, operation, kind, status)
	// series of one bucket, and the series of the cumulative Prometheus
	// counters. Spans of further series are counted under operation
	// "__other__". Default 10000.
	MaxSeriesPerBucket int
	// FlushInterval is how often observed spans are made durable. It bounds
	// how far RED queries lag and how long the indexer holds offsets back.
	// Default 1s.
	FlushInterval time.Duration
	// MaxPendingSpans bounds spans observed but not yet durable; Observe
	// blocks above it, pushing back on the consumer. Default 1,000,000.
	MaxPendingSpans int
	// MaxTracesAwaitingLink bounds the traces remembered between Observe and
	// Link; older ones are forgotten (their Link is counted as missed).
	// Default 20000.
	MaxTracesAwaitingLink int
	// MaxTraceIDsPerSeries caps the kept trace IDs linked to one bucket and
	// series: errors first, then the slowest. Default 20.
	MaxTraceIDsPerSeries int
	// SyncWrites fsyncs every flush. Default false: a process crash (kill -9)
	// keeps Badger's committed writes; only a machine crash can lose the
	// last flushes, and with them counts whose offsets were committed.
	SyncWrites bool
	// MemTableSize is the size of one Badger memtable. Default 8 MiB.
	MemTableSize int64
	// BlockCacheSize caches decompressed blocks. Default 8 MiB.
	BlockCacheSize int64
	// IndexCacheSize caches table indexes and bloom filters. Default 4 MiB.
	IndexCacheSize int64
}

// DefaultOptions returns the defaults documented on each field.
func DefaultOptions() Options {
	return Options{
		BucketWidth:           10 * time.Second,
		Retention:             7 * 24 * time.Hour,
		ReplayWindow:          time.Hour,
		MaxSeriesPerBucket:    10000,
		FlushInterval:         time.Second,
		MaxPendingSpans:       1_000_000,
		MaxTracesAwaitingLink: 20000,
		MaxTraceIDsPerSeries:  20,
		MemTableSize:          8 << 20,
		BlockCacheSize:        8 << 20,
		IndexCacheSize:        4 << 20,
	}
}

// RegisterFlags registers the options as --red.* flags with the current
// values as defaults.
func (o *Options) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&o.BucketWidth, "red.bucket-width", o.BucketWidth, "Time resolution of stored RED metrics (whole seconds; fixed once a store exists).")
	fs.DurationVar(&o.Retention, "red.retention", o.Retention, "How long RED buckets and their trace links are kept.")
	fs.DurationVar(&o.ReplayWindow, "red.replay-window", o.ReplayWindow, "How long a partition's counted Kafka records are remembered so a replay after a crash does not count them twice; must exceed commit lag plus downtime.")
	fs.IntVar(&o.MaxSeriesPerBucket, "red.max-series", o.MaxSeriesPerBucket, "Distinct (service, operation, kind, status) series per bucket; more are counted under operation __other__.")
	fs.DurationVar(&o.FlushInterval, "red.flush-interval", o.FlushInterval, "How often observed spans are made durable (bounds query lag and offset-commit delay).")
	fs.IntVar(&o.MaxPendingSpans, "red.max-pending-spans", o.MaxPendingSpans, "Spans observed but not yet durable before Observe blocks.")
	fs.IntVar(&o.MaxTracesAwaitingLink, "red.max-traces-awaiting-link", o.MaxTracesAwaitingLink, "Traces remembered between counting and the sampler's keep decision.")
	fs.IntVar(&o.MaxTraceIDsPerSeries, "red.max-trace-ids", o.MaxTraceIDsPerSeries, "Kept trace IDs linked to one bucket and series (errors first, then slowest).")
	fs.BoolVar(&o.SyncWrites, "red.sync-writes", o.SyncWrites, "Fsync every RED flush.")
	fs.Int64Var(&o.MemTableSize, "red.memtable-size", o.MemTableSize, "Bytes per Badger memtable of the RED store.")
	fs.Int64Var(&o.BlockCacheSize, "red.block-cache-size", o.BlockCacheSize, "Bytes of decompressed blocks the RED store caches.")
	fs.Int64Var(&o.IndexCacheSize, "red.index-cache-size", o.IndexCacheSize, "Bytes of table indexes and bloom filters the RED store caches.")
}

// Validate rejects settings the store cannot work with.
func (o Options) Validate() error {
	var errs []error
	if o.BucketWidth < time.Second || o.BucketWidth%time.Second != 0 {
		errs = append(errs, fmt.Errorf("red bucket width %s must be a positive whole number of seconds", o.BucketWidth))
	}
	if o.Retention < time.Second {
		errs = append(errs, fmt.Errorf("red retention %s is below one second, the resolution of Badger's TTL", o.Retention))
	}
	if o.ReplayWindow < time.Second {
		errs = append(errs, fmt.Errorf("red replay window %s is below one second", o.ReplayWindow))
	}
	if o.MaxSeriesPerBucket < 1 {
		errs = append(errs, errors.New("red max series per bucket must be at least 1"))
	}
	if o.FlushInterval <= 0 {
		errs = append(errs, errors.New("red flush interval must be positive"))
	}
	if o.MaxPendingSpans < 1 || o.MaxTracesAwaitingLink < 1 || o.MaxTraceIDsPerSeries < 1 {
		errs = append(errs, errors.New("red max pending spans, traces awaiting link and trace IDs per series must each be at least 1"))
	}
	if o.MemTableSize < 1<<20 {
		errs = append(errs, fmt.Errorf("red memtable size %d is below 1 MiB", o.MemTableSize))
	}
	if o.BlockCacheSize <= 0 || o.IndexCacheSize < 0 {
		errs = append(errs, errors.New("red block cache size must be positive and index cache size not negative"))
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
		// Each row is read before it is written, and a bucket's rows are
		// new when it starts: a bloom false positive costs a block read
		// (index/options.go).
		WithBloomFalsePositive(0.001).
		WithNumCompactors(2).
		WithValueLogFileSize(16 << 20).
		WithCompression(options.ZSTD).
		WithZSTDCompressionLevel(1).
		// Rows and counted-record sets are small: keep them in the LSM so expiry
		// and compaction reclaim them without value-log GC.
		WithValueThreshold(256 << 10).
		WithMetricsEnabled(false).
		WithNumGoroutines(2)
}
