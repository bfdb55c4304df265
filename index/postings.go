package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Posting lists are written for several batches at once. Written per
// batch, values every trace shares (a service, a status) cost one key per
// batch, but values that vary by resource (host.name, service.instance.id,
// service.version) cost one per host and batch, a few seqs each: once the
// summaries had left the LSM (sumblock.go), postings were most of its
// bytes, which every flush and compaction copies. So a commit hands its
// batch's postings to pendingPostings, and they are written together once
// postingFlushTraces traces or postingFlushAge have gathered (Flush): one
// fragment per value per flush.
//
// A trace is readable by ID once its commit returns, and found by search
// once its postings are written. Until then a crash loses its postings, so
// the writer's callers learn when they are durable (WriteTracesThen's
// callback) and keep the traces' sources (Kafka offsets) until then; a
// replay rewrites the traces and their postings, in fragments grouped
// differently, which search dedupes.

// postingFlushAge is the longest a committed batch waits for its postings.
const postingFlushAge = time.Second

// postingFlushTraces is a variable for tests. Four times it bounds what
// gathers while a flush runs: past it, writers flush themselves.
var postingFlushTraces = 16384

// pendingPostings gathers the postings of committed batches.
type pendingPostings struct {
	mu sync.Mutex
	g  gathered
	// spare is the map of a flush that succeeded, with its lists emptied,
	// for the next gathering to fill (recycle).
	spare map[string]*[]uint64
}

// gathered is what pendingPostings holds, and what a flush takes.
type gathered struct {
	seqs    map[string]*[]uint64 // posting prefix -> seqs of every batch gathered (may be empty)
	traces  int                  // traces of the batches gathered
	since   time.Time            // when the first batch gathered was added
	waiters []func()             // durable callbacks of the batches gathered
}

func (g *gathered) empty() bool { return g.traces == 0 && len(g.waiters) == 0 }

// add gathers a committed batch: frags[i] are the seqs of postings[i] (nil
// for none), durable its callback (nil for none). It copies the seqs: the
// caller reuses frags for its next batch.
func (p *pendingPostings) add(postings [][]byte, frags [][]uint64, traces int, durable func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := &p.g
	if g.seqs == nil {
		g.seqs, p.spare = p.spare, nil
		if g.seqs == nil {
			g.seqs = map[string]*[]uint64{}
		}
	}
	if g.empty() {
		g.since = time.Now()
	}
	for i, seqs := range frags {
		if len(seqs) == 0 {
			continue
		}
		if list, ok := g.seqs[string(postings[i])]; ok { // no copy of the key
			*list = append(*list, seqs...)
		} else {
			list := slices.Clone(seqs)
			g.seqs[string(postings[i])] = &list
		}
	}
	g.traces += traces
	if durable != nil {
		g.waiters = append(g.waiters, durable)
	}
}

// pending is the number of traces gathered.
func (p *pendingPostings) pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.g.traces
}

// due reports whether the first batch gathered has waited postingFlushAge.
func (p *pendingPostings) due(now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.g.empty() && now.Sub(p.g.since) >= postingFlushAge
}

// take empties p and returns what it held.
func (p *pendingPostings) take() gathered {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.g
	p.g = gathered{}
	return g
}

// restore gathers again what a failed flush took, ahead of what was added
// meanwhile.
func (p *pendingPostings) restore(old gathered) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := &p.g
	if g.seqs == nil {
		g.seqs = map[string]*[]uint64{}
	}
	for k, s := range old.seqs {
		if len(*s) == 0 {
			continue
		}
		if list, ok := g.seqs[k]; ok {
			*list = append(*s, *list...)
		} else {
			g.seqs[k] = s
		}
	}
	if g.empty() || old.since.Before(g.since) {
		g.since = old.since
	}
	g.traces += old.traces
	g.waiters = append(old.waiters, g.waiters...)
}

// recycle keeps the map of a flushed gathering for a later one, unless p
// has one already. The postings that had seqs keep their key and their
// list's capacity, emptied; the others are dropped. So a value that every
// gathering holds (a service, a status, a host) costs no allocation once
// both maps that gatherings alternate between hold it (a flush runs while
// the next gathering fills the other map), unless its list outgrows its
// earlier length. The spare map retains about one gathering's seqs.
func (p *pendingPostings) recycle(seqs map[string]*[]uint64) {
	for k, list := range seqs {
		if len(*list) == 0 {
			delete(seqs, k)
		} else {
			*list = (*list)[:0]
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.spare == nil && len(seqs) > 0 {
		p.spare = seqs
	}
}

// Flush writes the posting lists of every write so far and then runs their
// durable callbacks. Nothing is lost when it fails: a later Flush writes
// them.
func (s *Store) Flush(ctx context.Context) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	g := s.postings.take()
	if err := s.writePostings(ctx, g.seqs); err != nil {
		s.postings.restore(g)
		return err
	}
	s.postings.recycle(g.seqs)
	for _, w := range g.waiters {
		w()
	}
	return nil
}

// writePostings writes fragments of every posting in key order (which
// makes a flush deterministic), each holding the seqs of one fragWindow,
// newest first.
func (s *Store) writePostings(ctx context.Context, seqs map[string]*[]uint64) error {
	keys := make([]string, 0, len(seqs))
	for k, list := range seqs {
		if len(*list) > 0 {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys)
	w := newTxnWriter(s.db)
	defer w.discard()
	var (
		val     []byte
		scratch runMerger
	)
	for _, p := range keys {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("write postings: %w", err)
		}
		list := scratch.merge(*seqs[p])
		list = slices.Compact(list)
		*seqs[p] = list // Compact zeroed the tail: a failed flush restores this
		for len(list) > 0 {
			n := 1
			for n < len(list) && n < maxFragSeqs && list[0]-list[n] <= fragWindow {
				n++
			}
			val = appendFragment(val[:0], list[:n])
			k := make([]byte, 0, len(p)+16)
			k = append(k, p...)
			k = appendU64(k, list[0])
			k = appendU64(k, fragmentID(val))
			if err := w.set(k, bytes.Clone(val), s.opts.Retention); err != nil {
				return fmt.Errorf("write postings: %w", err)
			}
			list = list[n:]
		}
	}
	if err := w.commit(); err != nil {
		return fmt.Errorf("write postings: %w", err)
	}
	return nil
}

// postingLoop writes gathered postings when a write finds postingFlushTraces
// gathered (flushNow), and once the oldest has waited postingFlushAge, so
// that writes that stop still become searchable. Writers only signal it:
// they go on preparing their next batch meanwhile.
func (s *Store) postingLoop() {
	defer s.wg.Done()
	t := time.NewTicker(postingFlushAge / 4)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.flushNow:
		case now := <-t.C:
			if !s.postings.due(now) {
				continue
			}
		}
		if err := s.Flush(context.Background()); err != nil {
			s.metrics.writeErrors.Inc()
			s.logger.Warn("write posting lists", "err", err)
		}
	}
}

// txnWriter sets keys in write transactions: when Badger says one is full,
// it commits it and starts the next.
type txnWriter struct {
	db  *badger.DB
	txn *badger.Txn
}

func newTxnWriter(db *badger.DB) *txnWriter {
	return &txnWriter{db: db, txn: db.NewTransaction(true)}
}

// set sets k to v, expiring after ttl (0: never).
func (w *txnWriter) set(k, v []byte, ttl time.Duration) error {
	e := badger.NewEntry(k, v)
	if ttl > 0 {
		e = e.WithTTL(ttl)
	}
	err := w.txn.SetEntry(e)
	if errors.Is(err, badger.ErrTxnTooBig) {
		if err := w.txn.Commit(); err != nil {
			return fmt.Errorf("commit partial batch: %w", err)
		}
		w.txn = w.db.NewTransaction(true)
		err = w.txn.SetEntry(e)
	}
	if err != nil {
		return fmt.Errorf("set key %x: %w", k[:min(len(k), 18)], err)
	}
	return nil
}

func (w *txnWriter) commit() error { return w.txn.Commit() }

func (w *txnWriter) discard() { w.txn.Discard() }

// runMerger sorts posting lists gathered from batches: each batch's seqs
// are sorted newest first (postingLists.gather), so a list is a few such
// runs one after another, which merging pairwise sorts in n·log(runs)
// comparisons instead of a sort's n·log(n). Its buffers are reused from
// list to list.
type runMerger struct {
	starts, next []int
	buf          []uint64
}

// merge sorts list, a sequence of descending runs, in place into
// descending order and returns it.
func (m *runMerger) merge(list []uint64) []uint64 {
	m.starts = append(m.starts[:0], 0)
	for i := 1; i < len(list); i++ {
		if list[i] > list[i-1] {
			m.starts = append(m.starts, i)
		}
	}
	if len(m.starts) == 1 {
		return list
	}
	m.buf = slices.Grow(m.buf[:0], len(list))[:len(list)]
	src, dst := list, m.buf
	for len(m.starts) > 1 {
		m.next = m.next[:0]
		for j := 0; j < len(m.starts); j += 2 {
			lo, mid, hi := m.starts[j], len(list), len(list)
			if j+1 < len(m.starts) {
				mid = m.starts[j+1]
			}
			if j+2 < len(m.starts) {
				hi = m.starts[j+2]
			}
			mergeDescending(dst[lo:hi], src[lo:mid], src[mid:hi])
			m.next = append(m.next, lo)
		}
		m.starts, m.next = m.next, m.starts
		src, dst = dst, src
	}
	if &src[0] != &list[0] {
		copy(list, src)
	}
	return list
}

// mergeDescending merges the descending lists a and b into dst, which has
// room for both.
func mergeDescending(dst, a, b []uint64) {
	i, j, k := 0, 0, 0
	for i < len(a) && j < len(b) {
		if a[i] >= b[j] {
			dst[k] = a[i]
			i++
		} else {
			dst[k] = b[j]
			j++
		}
		k++
	}
	k += copy(dst[k:], a[i:])
	copy(dst[k:], b[j:])
}
