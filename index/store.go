// Package index is the indexer's Badger store for kept traces: span chunks
// by trace ID, a merged summary per trace, per-batch posting fragments for
// service, operation, span name, status and attribute values, start-time
// and duration indexes, and bounded lists of services, operations and tags.
//
// Each indexer owns its store (Badger is single-process) and serves reads
// from it; writes are idempotent so a Kafka replay after a crash rewrites
// the same keys. The key layout is documented at the top of writer.go and
// in FORMAT.md.
package index

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/threadline/threadline/span"
)

// KeptTrace is a trace the sampler kept, with why.
type KeptTrace struct {
	Trace span.Trace
	// Reasons the trace was kept: error, latency_topn, exemplar, alert, baseline.
	Reasons []string
	// Warnings recorded while processing it, e.g. clock-skew adjustments.
	Warnings []string
}

// StoredTrace is every stored span of a trace. Spans of one resource (and
// scope) share one *span.Resource (*span.Scope), so span.ToTracesData
// regroups them as they were reported.
type StoredTrace struct {
	Spans    []span.Span
	Reasons  []string
	Warnings []string
}

// Store is the span store. Its methods are safe for concurrent use.
type Store struct {
	db      *badger.DB
	dir     string
	logger  *slog.Logger
	opts    Options
	metrics *metrics
	lists   *listCache
	blobs   *blobCache
	card    *cardinality
	dicts   *chunkDicts
	groups  *groupCodec
	writeMu sync.Mutex // serialises commits, see writeTraces
	// preparers holds the preparers of finished batches, emptied, for the
	// next ones (getPreparer).
	preparers sync.Pool
	// postings gathers the posting lists of committed batches until Flush
	// (under flushMu) writes them (postings.go).
	postings pendingPostings
	flushMu  sync.Mutex
	flushNow chan struct{} // a write found postingFlushTraces gathered
	// seqHint is the highest seq handed out per start millisecond (guarded by
	// writeMu), so allocating a seq for the n-th trace of one millisecond
	// does not probe the n-1 taken before it. Above seqFloor this process
	// handed out every seq the store holds, so the hint is exact there and
	// allocation reads nothing; at or below it (seqs written before open,
	// or hints forgotten to bound the map) freeSeq checks the store.
	seqHint  map[uint64]uint64
	seqFloor uint64

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

type metrics struct {
	spansWritten  prometheus.Counter
	tracesWritten prometheus.Counter
	writeLatency  prometheus.Histogram
	writeErrors   prometheus.Counter
}

// Open opens (or creates) the store in dir. reg may be nil to skip metrics
// registration. A failed open closes whatever it opened.
func Open(dir string, logger *slog.Logger, reg prometheus.Registerer, opts Options) (st *Store, err error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("open span store: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	db, err := badger.Open(opts.badgerOptions(dir, badgerLogger{logger.With("component", "badger")}))
	if err != nil {
		return nil, fmt.Errorf("open span store %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			if cerr := db.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("close span store after failed open: %w", cerr))
			}
		}
	}()
	codec, err := newGroupCodec()
	if err != nil {
		return nil, fmt.Errorf("open span store %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			codec.close()
		}
	}()
	s := &Store{
		groups:   codec,
		db:       db,
		dir:      dir,
		logger:   logger,
		opts:     opts,
		lists:    newListCache(opts.Retention),
		blobs:    &blobCache{refresh: opts.Retention / 2, written: map[uint64]time.Time{}},
		card:     newCardinality(opts.MaxIndexedValuesPerKey, opts.Retention),
		dicts:    &chunkDicts{},
		stop:     make(chan struct{}),
		flushNow: make(chan struct{}, 1),
	}
	if err := s.load(); err != nil {
		return nil, fmt.Errorf("open span store %s: %w", dir, err)
	}
	if err := s.registerMetrics(reg); err != nil {
		return nil, fmt.Errorf("open span store %s: %w", dir, err)
	}
	s.wg.Add(2)
	go s.gcLoop()
	go s.postingLoop()
	return s, nil
}

func (s *Store) registerMetrics(reg prometheus.Registerer) error {
	s.metrics = &metrics{
		spansWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_store_spans_written_total",
			Help: "Spans written to the span store, including rewrites of stored spans.",
		}),
		tracesWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_store_traces_written_total",
			Help: "Trace writes to the span store (a trace with late spans counts once per write).",
		}),
		writeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "threadline_store_write_duration_seconds",
			Help:    "Latency of WriteTraces calls.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_store_write_errors_total",
			Help: "WriteTraces calls and posting-list flushes that failed.",
		}),
	}
	if reg == nil {
		return nil
	}
	size := func(ext string) func() float64 {
		return func() float64 { return float64(dirSize(s.dir, ext)) }
	}
	cs := []prometheus.Collector{
		s.metrics.spansWritten, s.metrics.tracesWritten, s.metrics.writeLatency, s.metrics.writeErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "threadline_store_disk_bytes",
			Help:        "Bytes of span-store files on disk.",
			ConstLabels: prometheus.Labels{"kind": "lsm"},
		}, size(".sst")),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "threadline_store_disk_bytes",
			Help:        "Bytes of span-store files on disk.",
			ConstLabels: prometheus.Labels{"kind": "vlog"},
		}, size(".vlog")),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "threadline_store_postings_pending_traces",
			Help: "Traces written whose posting lists are not yet (found by ID, not yet by search).",
		}, func() float64 { return float64(s.postings.pending()) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}

// dirSize sums the sizes of the files in dir whose names end in ext.
func dirSize(dir, ext string) int64 {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ext) {
			continue
		}
		if info, err := e.Info(); err == nil {
			n += info.Size()
		}
	}
	return n
}

// loadSeqFloor sets seqFloor to the largest seq on disk.
func (s *Store) loadSeqFloor(txn *badger.Txn) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixSeq}, Reverse: true})
	defer it.Close()
	it.Seek([]byte{prefixSeq, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	if it.Valid() {
		k := it.Item().Key()
		if len(k) != 9 {
			return fmt.Errorf("trace reference key %x: %w", k, ErrCorrupt)
		}
		s.seqFloor = beUint64(k[1:])
	}
	return nil
}

// DiskBytes is the size of the store's SSTables and value log on disk.
func (s *Store) DiskBytes() int64 {
	return dirSize(s.dir, ".sst") + dirSize(s.dir, ".vlog")
}

// load restores the list cache and the high-cardinality marks from disk,
// so the caps hold across restarts, known values are not rewritten and
// keys that stopped being indexed stay unindexed.
func (s *Store) load() error {
	return s.db.View(func(txn *badger.Txn) error {
		if err := s.dicts.load(txn); err != nil {
			return err
		}
		if err := s.loadSeqFloor(txn); err != nil {
			return err
		}
		now := time.Now()
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixHighCard}})
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			at := now
			if exp := item.ExpiresAt(); exp > 0 && s.opts.Retention > 0 {
				at = time.Unix(int64(exp), 0).Add(-s.blobTTL())
			}
			s.card.load(string(item.Key()[1:]), at)
		}
		it.Close()
		for _, p := range []byte{prefixSvcList, prefixOpList, prefixTagName, prefixTagValue} {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{p}})
			for it.Rewind(); it.Valid(); it.Next() {
				item := it.Item()
				group, ok := listGroup(item.Key())
				if !ok {
					continue
				}
				at := now
				if exp := item.ExpiresAt(); exp > 0 && s.opts.Retention > 0 {
					at = time.Unix(int64(exp), 0).Add(-s.opts.Retention)
				}
				s.lists.load(group, item.KeyCopy(nil), at)
			}
			it.Close()
		}
		return nil
	})
}

// gcLoop runs value-log GC every GCInterval until Close. The value log
// holds the chunk groups (group.go); a file is rewritten, or deleted, once
// compactions have found at least half of it expired or replaced.
func (s *Store) gcLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		// Each successful run rewrites one file; repeat while it finds work.
		for range 16 {
			if err := s.db.RunValueLogGC(0.5); err != nil {
				if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
					s.logger.Warn("value-log GC", "err", err)
				}
				break
			}
			select {
			case <-s.stop:
				return
			default:
			}
		}
	}
}

// Close stops value-log GC, writes the posting lists gathered (Flush) and
// closes Badger, flushing memtables. It is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.wg.Wait()
		if err := s.Flush(context.Background()); err != nil {
			s.closeErr = fmt.Errorf("close span store: %w", err)
		}
		if err := s.db.Close(); err != nil {
			s.closeErr = errors.Join(s.closeErr, fmt.Errorf("close span store: %w", err))
		}
		s.groups.close()
	})
	return s.closeErr
}

var healthKey = []byte{prefixHealth, 'h', 'e', 'a', 'l', 't', 'h'}

// Writable is the readiness probe: it writes a tiny key and reads it back.
func (s *Store) Writable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("span store health: %w", err)
	}
	want := appendU64(nil, uint64(time.Now().UnixNano()))
	err := s.db.Update(func(txn *badger.Txn) error {
		return txn.SetEntry(badger.NewEntry(healthKey, want).WithTTL(time.Hour))
	})
	if err != nil {
		return fmt.Errorf("span store health write: %w", err)
	}
	err = s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(healthKey)
		if err != nil {
			return err
		}
		got, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		if string(got) != string(want) {
			return errors.New("read back a different value")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("span store health read: %w", err)
	}
	return nil
}

// badgerLogger routes Badger's log lines to slog; Badger's INFO chatter
// (compactions, table flushes) becomes Debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.log(slog.LevelError, f, a) }
func (b badgerLogger) Warningf(f string, a ...any) { b.log(slog.LevelWarn, f, a) }
func (b badgerLogger) Infof(f string, a ...any)    { b.log(slog.LevelDebug, f, a) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.log(slog.LevelDebug, f, a) }

func (b badgerLogger) log(level slog.Level, f string, a []any) {
	if b.l.Enabled(context.Background(), level) {
		b.l.Log(context.Background(), level, strings.TrimSpace(fmt.Sprintf(f, a...)))
	}
}
