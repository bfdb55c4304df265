package index

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// Options configures the span store. The zero value is not useful; start from
// DefaultOptions. The memory knobs are sized so that the all-in-one binary
// (collector, broker, indexer and query in one process) stays under 500 MiB
// RSS: Badger's defaults (64 MiB memtables × 5, 256 MiB block cache) alone
// would take more than that.
type Options struct {
	// Retention is how long every key lives (Badger TTL, whole seconds).
	// 0 keeps data forever. Default 7 days.
	Retention time.Duration
	// SyncWrites fsyncs every commit. Default false: Kafka offsets are
	// committed only after a write returns, so a crash replays the batch and
	// idempotent writes make the replay harmless.
	SyncWrites bool
	// MemTableSize is the size of one Badger memtable. Default 16 MiB.
	// A memtable flush builds one table of its whole size in memory, and
	// the store holds up to NumMemtables of them, so this sets most of the
	// store's standing memory. (Upstream Badger also kept every pooled
	// table builder at its largest size, which made this and BaseTableSize
	// matter several times over: 32 MiB and 2 MiB kept about 740 MiB of
	// builders after a 1M-span run; third_party/ristretto trims them now.)
	MemTableSize int64
	// BaseTableSize is the size of one SSTable in the LSM's base level
	// (deeper levels double it). Default 1 MiB; see MemTableSize.
	BaseTableSize int64
	// NumMemtables is how many memtables may be held before writes stall.
	// Default 2.
	NumMemtables int
	// BlockCacheSize caches decompressed blocks. Default 8 MiB. Writes read
	// blocks only for bloom-filter false positives and late spans, and
	// searches mostly for posting fragments of recent seconds. With the
	// bloom filters at 0.1% (badgerOptions), 32 MiB held 10–40 MiB more peak
	// RSS under full load than 8 MiB, for no CPU gain in three interleaved
	// pairs of the end-to-end benchmark (run with GOGC=60).
	BlockCacheSize int64
	// IndexCacheSize caches table indexes and bloom filters. Default 16 MiB.
	IndexCacheSize int64
	// BlockSize is the uncompressed size of one SSTable block. Default
	// 64 KiB: larger blocks give the compressor more context (4 KiB
	// blocks cost about 40% more disk per span with ZSTD); point reads
	// decompress a whole block, which the block cache amortises.
	BlockSize int
	// NumCompactors is the number of concurrent compaction goroutines.
	// Default 2 (Badger's minimum).
	NumCompactors int
	// ValueLogFileSize caps one value-log file. Default 64 MiB.
	ValueLogFileSize int64
	// Compression is the SSTable block compression: "zstd" (level 1),
	// "snappy" or "none". Default "zstd". Span bytes live in chunk groups,
	// compressed once and kept in the value log (FORMAT.md), so tables hold
	// only keys, summaries and postings. On the load generator's spans the
	// tables took 41 bytes per span with ZSTD, 50 with Snappy and 83 with
	// none, at the same CPU within noise.
	Compression string
	// GCInterval is how often value-log GC runs. Default 5 minutes.
	GCInterval time.Duration
	// MaxTagKeys caps the distinct attribute keys remembered for the tag
	// APIs. Default 500.
	MaxTagKeys int
	// MaxTagValuesPerKey caps the distinct values remembered per attribute
	// key, and the operations remembered per service. Default 1000.
	MaxTagValuesPerKey int
	// MaxServices caps the distinct services remembered. Default 1000.
	MaxServices int
	// MaxIndexedValuesPerKey is the number of distinct values an attribute
	// key may have and still get postings. A key that exceeds it (IDs,
	// URLs with IDs, timestamps) stops being indexed for good; search
	// checks such tags against stored spans instead. Default 200.
	MaxIndexedValuesPerKey int
}

// DefaultOptions returns the defaults documented on each field.
func DefaultOptions() Options {
	return Options{
		Retention:          7 * 24 * time.Hour,
		MemTableSize:       16 << 20,
		BaseTableSize:      1 << 20,
		NumMemtables:       2,
		BlockCacheSize:     8 << 20,
		IndexCacheSize:     16 << 20,
		BlockSize:          64 << 10,
		NumCompactors:      2,
		ValueLogFileSize:   64 << 20,
		Compression:        "zstd",
		GCInterval:         5 * time.Minute,
		MaxTagKeys:         500,
		MaxTagValuesPerKey: 1000,
		MaxServices:        1000,

		MaxIndexedValuesPerKey: 200,
	}
}

// RegisterFlags registers the options as --store.* flags with the current
// values as defaults.
func (o *Options) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&o.Retention, "store.retention", o.Retention, "How long kept traces are stored (Badger TTL, whole seconds); 0 keeps them forever.")
	fs.BoolVar(&o.SyncWrites, "store.sync-writes", o.SyncWrites, "Fsync every span-store commit. Off by default: Kafka replays anything not yet written.")
	fs.Int64Var(&o.MemTableSize, "store.memtable-size", o.MemTableSize, "Bytes per Badger memtable.")
	fs.Int64Var(&o.BaseTableSize, "store.base-table-size", o.BaseTableSize, "Bytes per SSTable in the LSM's base level (deeper levels double it).")
	fs.IntVar(&o.NumMemtables, "store.num-memtables", o.NumMemtables, "Badger memtables held before writes stall.")
	fs.Int64Var(&o.BlockCacheSize, "store.block-cache-size", o.BlockCacheSize, "Bytes of decompressed blocks Badger caches.")
	fs.Int64Var(&o.IndexCacheSize, "store.index-cache-size", o.IndexCacheSize, "Bytes of table indexes and bloom filters Badger caches.")
	fs.IntVar(&o.BlockSize, "store.block-size", o.BlockSize, "Uncompressed bytes per SSTable block; larger compresses better.")
	fs.IntVar(&o.NumCompactors, "store.num-compactors", o.NumCompactors, "Concurrent Badger compactions (at least 2).")
	fs.Int64Var(&o.ValueLogFileSize, "store.value-log-file-size", o.ValueLogFileSize, "Bytes per Badger value-log file.")
	fs.StringVar(&o.Compression, "store.compression", o.Compression, "SSTable block compression: zstd, snappy or none (span chunks are compressed once on their own, see FORMAT.md).")
	fs.DurationVar(&o.GCInterval, "store.gc-interval", o.GCInterval, "How often value-log garbage collection runs.")
	fs.IntVar(&o.MaxTagKeys, "store.max-tag-keys", o.MaxTagKeys, "Distinct attribute keys remembered for the tag-name API.")
	fs.IntVar(&o.MaxTagValuesPerKey, "store.max-tag-values", o.MaxTagValuesPerKey, "Distinct values remembered per attribute key (and operations per service).")
	fs.IntVar(&o.MaxIndexedValuesPerKey, "store.max-indexed-values", o.MaxIndexedValuesPerKey, "Distinct values an attribute key may have and still be indexed; keys above it are searched by checking stored spans.")
	fs.IntVar(&o.MaxServices, "store.max-services", o.MaxServices, "Distinct services remembered for the services API.")
}

// Validate rejects settings Badger would refuse or that defeat the store.
func (o Options) Validate() error {
	var errs []error
	if o.Retention < 0 {
		errs = append(errs, errors.New("store retention must not be negative; use 0 to keep data forever"))
	}
	if o.Retention > 0 && o.Retention < time.Second {
		errs = append(errs, fmt.Errorf("store retention %s is below one second, the resolution of Badger's TTL", o.Retention))
	}
	if o.MemTableSize < 1<<20 {
		errs = append(errs, fmt.Errorf("store memtable size %d is below 1 MiB", o.MemTableSize))
	}
	if o.BaseTableSize < 64<<10 {
		errs = append(errs, fmt.Errorf("store base table size %d is below 64 KiB", o.BaseTableSize))
	}
	if o.NumMemtables < 1 {
		errs = append(errs, errors.New("store needs at least one memtable"))
	}
	if o.BlockCacheSize <= 0 {
		errs = append(errs, errors.New("store block cache size must be positive: compressed blocks are decompressed on every read without it"))
	}
	if o.IndexCacheSize < 0 {
		errs = append(errs, errors.New("store index cache size must not be negative"))
	}
	if o.BlockSize < 1<<10 {
		errs = append(errs, fmt.Errorf("store block size %d is below 1 KiB", o.BlockSize))
	}
	if o.NumCompactors < 2 {
		errs = append(errs, errors.New("store needs at least 2 compactors (Badger's minimum)"))
	}
	if o.ValueLogFileSize < 1<<20 || o.ValueLogFileSize >= 2<<30 {
		errs = append(errs, fmt.Errorf("store value-log file size %d must be between 1 MiB and 2 GiB", o.ValueLogFileSize))
	}
	if o.Compression != "zstd" && o.Compression != "snappy" && o.Compression != "none" {
		errs = append(errs, fmt.Errorf("store compression %q is not zstd, snappy or none", o.Compression))
	}
	if o.GCInterval <= 0 {
		errs = append(errs, errors.New("store value-log GC interval must be positive"))
	}
	if o.MaxTagKeys < 1 || o.MaxTagValuesPerKey < 1 || o.MaxServices < 1 || o.MaxIndexedValuesPerKey < 1 {
		errs = append(errs, errors.New("store tag-key, tag-value, indexed-value and service caps must each be at least 1"))
	}
	return errors.Join(errs...)
}

// badgerOptions maps Options onto Badger's, keeping small values in the LSM
// (where the block compressor sees them) rather than the value log.
func (o Options) badgerOptions(dir string, logger badger.Logger) badger.Options {
	compression := options.ZSTD
	switch o.Compression {
	case "snappy":
		compression = options.Snappy
	case "none":
		compression = options.None
	}
	return badger.DefaultOptions(dir).
		WithLogger(logger).
		WithSyncWrites(o.SyncWrites).
		WithMemTableSize(o.MemTableSize).
		WithNumMemtables(o.NumMemtables).
		WithBaseTableSize(o.BaseTableSize).
		// Four L0 tables before compacting into L1: every L0 table spans
		// the whole key range (summaries are keyed by random trace IDs),
		// so each L0 compaction rewrites all of L1, and doing it every
		// second flush cost about a fifth more CPU per span on the
		// benchmark. Reads check a few more tables' bloom filters.
		WithNumLevelZeroTables(max(4, o.NumMemtables)).
		WithNumLevelZeroTablesStall(max(12, 3*o.NumMemtables)).
		WithBlockCacheSize(o.BlockCacheSize).
		WithIndexCacheSize(o.IndexCacheSize).
		// Most summary reads are of traces not stored yet: every table
		// that may hold the key (each L0 table, one per deeper level) is
		// asked its bloom filter, and a false positive reads and
		// decompresses a 64 KiB block for nothing. At Badger's 1%, with an
		// 8 MiB block cache, that decompression took 2.6% of the
		// all-in-one's CPU under full load (0.5% with a 32 MiB cache,
		// which held 50 MiB more peak RSS at GOGC=60). Upstream Badger
		// sized filters at 10 bits per key for 0.1%, answering 1.15%;
		// the patched one takes the 15 bits 0.1% needs (measured 0.105%,
		// third_party/badger/PATCH.md §4), about 0.3 B per span more.
		WithBloomFalsePositive(0.001).
		WithBlockSize(o.BlockSize).
		WithNumCompactors(o.NumCompactors).
		WithValueLogFileSize(o.ValueLogFileSize).
		WithCompression(compression).
		WithZSTDCompressionLevel(1).
		// Chunk groups (tens of KB) and summary blocks (several KB under
		// load) go to the value log, written once; keys, summary
		// references and most posting fragments stay in the LSM.
		WithValueThreshold(4 << 10).
		// Commits of span data are serialised (Store.writeMu) and nothing
		// else writes the keys they read, so tracking every read for
		// conflicts would be pure overhead.
		WithDetectConflicts(false).
		// Badger's expvar metrics are process-global; ours are per store.
		WithMetricsEnabled(false).
		WithNumGoroutines(2)
}
