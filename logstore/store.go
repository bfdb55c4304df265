// Package logstore is the indexer's log correlation store: the log lines of
// kept traces (every level), of dropped traces (WARN and above) and without
// a trace (by level policy), searchable two ways.
//
//   - Bleve indexes body and attributes for full-text search and the Loki
//     subset. It is sharded by time, one index per ShardDuration under
//     dir/bleve/<start unix ns>, opened lazily and closed when idle, so
//     retention deletes whole directories instead of documents one by one.
//   - Badger (dir/badger) keys every line of a trace by trace ID, for the
//     trace → logs jump, with the retention as TTL. It also persists the
//     level Policy's overrides so they survive a restart.
//
// Writes are idempotent: a line's Badger key and Bleve document ID derive
// from its trace ID, span ID, time and a hash of body and attributes, so a
// Kafka replay after a crash rewrites the same entries.
package logstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// Store is the log store. Its methods are safe for concurrent use.
type Store struct {
	db      *badger.DB
	shards  *shardSet
	opts    Options
	logger  *slog.Logger
	policy  *Policy
	metrics *metrics
	now     func() time.Time

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

type metrics struct {
	written       prometheus.Counter
	skippedOld    prometheus.Counter
	writeErrors   prometheus.Counter
	writeLatency  prometheus.Histogram
	shardsDeleted prometheus.Counter
}

// Open opens (or creates) the store in dir. reg may be nil. A failed open
// closes whatever it opened.
func Open(dir string, logger *slog.Logger, reg prometheus.Registerer, opts Options) (st *Store, err error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("open log store: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	defaults, _ := opts.defaults() // validated above
	db, err := badger.Open(opts.badgerOptions(filepath.Join(dir, "badger"), badgerLogger{logger.With("component", "badger-logs")}))
	if err != nil {
		return nil, fmt.Errorf("open log store %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			if cerr := db.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("close log store after failed open: %w", cerr))
			}
		}
	}()
	shards, err := openShardSet(filepath.Join(dir, "bleve"), opts.ShardDuration, logger)
	if err != nil {
		return nil, fmt.Errorf("open log store %s: %w", dir, err)
	}
	policy, err := newPolicy(db, defaults, opts.MaxOverrideDuration)
	if err != nil {
		return nil, fmt.Errorf("open log store %s: %w", dir, err)
	}
	s := &Store{
		db: db, shards: shards, opts: opts, logger: logger, policy: policy,
		now:  time.Now,
		stop: make(chan struct{}),
	}
	if err := s.registerMetrics(reg); err != nil {
		return nil, fmt.Errorf("open log store %s: %w", dir, err)
	}
	s.wg.Add(1)
	go s.maintenanceLoop()
	return s, nil
}

func (s *Store) registerMetrics(reg prometheus.Registerer) error {
	s.metrics = &metrics{
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_logstore_lines_written_total",
			Help: "Log lines written to the log store, including replays.",
		}),
		skippedOld: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_logstore_lines_expired_total",
			Help: "Log lines not written because their time is already past retention.",
		}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_logstore_write_errors_total",
			Help: "Log store Write calls that failed.",
		}),
		writeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "threadline_logstore_write_duration_seconds",
			Help:    "Latency of log store Write calls.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		shardsDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_logstore_shards_deleted_total",
			Help: "Bleve log shards deleted by retention.",
		}),
	}
	if reg == nil {
		return nil
	}
	cs := []prometheus.Collector{
		s.metrics.written, s.metrics.skippedOld, s.metrics.writeErrors, s.metrics.writeLatency, s.metrics.shardsDeleted,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "threadline_logstore_shards",
			Help: "Bleve log shards on disk.",
		}, func() float64 { n, _ := s.shards.counts(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "threadline_logstore_shards_open",
			Help: "Bleve log shards open (the rest are closed until read).",
		}, func() float64 { _, n := s.shards.counts(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "threadline_logstore_level_overrides",
			Help: "Time-boxed log level overrides in force.",
		}, func() float64 { return float64(len(s.policy.Overrides(time.Now()))) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}

// Policy returns the level policy the indexer applies before Write.
func (s *Store) Policy() *Policy { return s.policy }

// Keep reports whether the store's level policy keeps a line (Policy.Keep).
func (s *Store) Keep(service string, severity int32, traceKept, hasTrace bool, now time.Time) bool {
	return s.policy.Keep(service, severity, traceKept, hasTrace, now)
}

// Write stores records. Records already past retention are skipped. A
// record without a trace ID is only indexed in Bleve. Writing the same
// record twice leaves one copy.
func (s *Store) Write(ctx context.Context, recs []Record) (err error) {
	start := time.Now()
	defer func() {
		s.metrics.writeLatency.Observe(time.Since(start).Seconds())
		if err != nil {
			s.metrics.writeErrors.Inc()
		}
	}()
	now := s.now()
	cutoff := now.Add(-s.opts.Retention).UnixNano()
	// Build every entry before touching either store.
	byShard := map[int64][]prepared{}
	var withTrace []prepared
	n := 0
	for _, r := range recs {
		p, err := prepare(r, now)
		if err != nil {
			return fmt.Errorf("write logs: %w", err)
		}
		if p.adjNs <= cutoff || int64(p.origNs) <= cutoff {
			s.metrics.skippedOld.Inc()
			continue
		}
		b := s.shards.bucket(p.adjNs)
		byShard[b] = append(byShard[b], p)
		if p.hasTrace {
			withTrace = append(withTrace, p)
		}
		n++
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("write logs: %w", err)
	}
	// Badger first: if Bleve then fails, the replay rewrites both.
	if len(withTrace) > 0 {
		wb := s.db.NewWriteBatch()
		for _, p := range withTrace {
			exp := time.Unix(0, min(int64(p.origNs), p.adjNs)).Add(s.opts.Retention)
			e := badger.NewEntry(p.key, p.value)
			e.ExpiresAt = uint64(exp.Unix()) + 1
			if err := wb.SetEntry(e); err != nil {
				wb.Cancel()
				return fmt.Errorf("write logs to badger: %w", err)
			}
		}
		if err := wb.Flush(); err != nil {
			return fmt.Errorf("write logs to badger: %w", err)
		}
	}
	for b, ps := range byShard {
		if err := s.indexShard(b, ps, now); err != nil {
			return fmt.Errorf("write logs to bleve: %w", err)
		}
	}
	s.metrics.written.Add(float64(n))
	return nil
}

func (s *Store) indexShard(start int64, ps []prepared, now time.Time) error {
	sh, err := s.shards.acquire(start, true, now)
	if err != nil {
		return err
	}
	defer s.shards.release(sh)
	batch := sh.idx.NewBatch()
	for _, p := range ps {
		text := p.body
		var attrs []string
		if len(p.attrs) > 0 {
			var sb strings.Builder
			sb.WriteString(p.body)
			attrs = make([]string, 0, len(p.attrs))
			for k, v := range p.attrs {
				sb.WriteByte('\n')
				sb.WriteString(v)
				attrs = append(attrs, k+"="+v)
			}
			text = sb.String()
		}
		doc := map[string]any{
			fieldText:    text,
			fieldService: p.service,
			fieldLevel:   levelLabel(p.sev),
			fieldTime:    time.Unix(0, p.adjNs),
			fieldSrc:     string(p.value),
		}
		if len(attrs) > 0 {
			doc[fieldAttr] = attrs
		}
		if p.hasTrace {
			doc[fieldTrace] = p.trace.String()
		}
		if !p.spanID.IsZero() {
			doc[fieldSpan] = p.spanID.String()
		}
		if err := batch.Index(p.id, doc); err != nil {
			return fmt.Errorf("index log line: %w", err)
		}
	}
	if err := sh.idx.Batch(batch); err != nil {
		return fmt.Errorf("commit shard %d: %w", start, err)
	}
	return nil
}

// RunMaintenance closes idle shards, deletes shards past retention and
// purges expired overrides, as the background loop does every
// MaintenanceInterval.
func (s *Store) RunMaintenance() error {
	now := s.now()
	deleted, err := s.shards.maintain(now, s.opts.ShardIdleTimeout, now.Add(-s.opts.Retention).UnixNano())
	s.metrics.shardsDeleted.Add(float64(deleted))
	if deleted > 0 {
		s.logger.Info("deleted expired log shards", "shards", deleted)
	}
	s.policy.Overrides(now) // purges expired ones
	return err
}

func (s *Store) maintenanceLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.MaintenanceInterval)
	defer t.Stop()
	lastGC := time.Now()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		if err := s.RunMaintenance(); err != nil {
			s.logger.Warn("log store maintenance", "err", err)
		}
		if time.Since(lastGC) >= 5*time.Minute {
			lastGC = time.Now()
			// Reclaim value-log space of expired keys; ErrNoRewrite means
			// nothing was worth it.
			for s.db.RunValueLogGC(0.5) == nil {
			}
		}
	}
}

// Close stops maintenance and closes every shard and Badger.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.wg.Wait()
		var errs []error
		if err := s.shards.close(); err != nil {
			errs = append(errs, err)
		}
		if err := s.db.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close log badger: %w", err))
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// badgerLogger routes Badger's log lines to slog; its INFO chatter becomes
// Debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Debug(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.l.Debug(fmt.Sprintf(f, a...)) }
