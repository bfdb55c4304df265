package red

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/threadline/threadline/span"
)

// MaxSteps caps the points of one query, as Prometheus caps range queries.
const MaxSteps = 11000

// ErrBadQuery reports query parameters the store cannot answer.
var ErrBadQuery = errors.New("bad RED query")

// Result is a RED query's answer: one point per step from Start, including
// steps without spans.
type Result struct {
	// Start is the requested start aligned down to the bucket width.
	Start time.Time
	// Step is the requested step rounded up to a whole number of buckets.
	Step   time.Duration
	Points []Point
}

// Point sums the buckets of one step.
type Point struct {
	Start  time.Time
	Count  uint64
	Errors uint64
	Sum    time.Duration
	// Hist holds non-cumulative counts per latency bucket (see Bounds).
	Hist [NumBuckets]uint64
	// Traces are the kept traces linked to the step's buckets: errors first,
	// then slowest, at most MaxTraceIDsPerSeries.
	Traces []TraceRef
}

// TraceRef is a kept trace linked to a step.
type TraceRef struct {
	ID    span.TraceID
	Error bool
	// Duration is the trace's slowest span in the matching series and step.
	Duration time.Duration
}

// Rate is spans per second over step.
func (p Point) Rate(step time.Duration) float64 {
	if step <= 0 {
		return 0
	}
	return float64(p.Count) / step.Seconds()
}

// ErrorRate is the fraction of spans with status ERROR (0 without spans).
func (p Point) ErrorRate() float64 {
	if p.Count == 0 {
		return 0
	}
	return float64(p.Errors) / float64(p.Count)
}

// Quantile estimates a latency quantile; see the package Quantile.
func (p Point) Quantile(q float64) time.Duration { return Quantile(p.Hist[:], q) }

// Query sums the series of service and operation (empty: any) per step over
// [start, end). A zero step means one bucket. Counts are those flushed (they
// lag Observe by at most FlushInterval).
func (s *Store) Query(ctx context.Context, service, operation string, start, end time.Time, step time.Duration) (Result, error) {
	if step < 0 {
		return Result{}, fmt.Errorf("step %s is negative: %w", step, ErrBadQuery)
	}
	if step == 0 {
		step = time.Duration(s.width)
	}
	// Whole buckets per step, and steps aligned on bucket bounds, so every
	// bucket falls in exactly one step.
	step = (step + time.Duration(s.width) - 1) / time.Duration(s.width) * time.Duration(s.width)
	from, to := max(start.UnixNano(), 0), end.UnixNano()
	from -= from % s.width
	if to <= from {
		return Result{}, fmt.Errorf("end %s is not after start %s: %w", end.UTC().Format(time.RFC3339), start.UTC().Format(time.RFC3339), ErrBadQuery)
	}
	steps := (to - from + int64(step) - 1) / int64(step)
	if steps > MaxSteps {
		return Result{}, fmt.Errorf("%d steps exceed the maximum of %d; use a larger step: %w", steps, MaxSteps, ErrBadQuery)
	}
	res := Result{Start: time.Unix(0, from), Step: step, Points: make([]Point, steps)}
	for i := range res.Points {
		res.Points[i].Start = time.Unix(0, from+int64(i)*int64(step))
	}
	match := func(sr Series) bool {
		return (service == "" || sr.Service == service) && (operation == "" || sr.Operation == operation)
	}
	err := s.db.View(func(txn *badger.Txn) error {
		err := scan(ctx, txn, prefixRow, from, to, func(bucket int64, sr Series, _ []byte, v []byte) error {
			if !match(sr) {
				return nil
			}
			var a agg
			if err := decodeAgg(v, &a); err != nil {
				s.m.corruptValues.Inc()
				return nil
			}
			p := &res.Points[(bucket-from)/int64(step)]
			p.Count += a.count
			p.Errors += a.errors
			p.Sum += time.Duration(a.sum)
			for i, c := range a.hist {
				p.Hist[i] += c
			}
			return nil
		})
		if err != nil {
			return err
		}
		return scan(ctx, txn, prefixLink, from, to, func(bucket int64, sr Series, rest []byte, v []byte) error {
			if !match(sr) {
				return nil
			}
			l, err := decodeLink(rest, v)
			if err != nil {
				s.m.corruptValues.Inc()
				return nil
			}
			p := &res.Points[(bucket-from)/int64(step)]
			p.Traces = append(p.Traces, TraceRef{ID: l.id, Error: l.err, Duration: time.Duration(l.dur)})
			return nil
		})
	})
	if err != nil {
		return Result{}, fmt.Errorf("query RED: %w", err)
	}
	for i := range res.Points {
		res.Points[i].Traces = RankTraces(res.Points[i].Traces, s.opts.MaxTraceIDsPerSeries)
	}
	return res, nil
}

// RankTraces orders refs errors first, then slowest, keeps each trace once
// (its best entry) and at most limit of them.
func RankTraces(refs []TraceRef, limit int) []TraceRef {
	slices.SortFunc(refs, func(a, b TraceRef) int {
		la := linkRef{id: a.ID, err: a.Error, dur: int64(a.Duration)}
		lb := linkRef{id: b.ID, err: b.Error, dur: int64(b.Duration)}
		switch {
		case la.better(lb):
			return -1
		case lb.better(la):
			return 1
		}
		return 0
	})
	out := refs[:0]
	seen := map[span.TraceID]bool{}
	for _, r := range refs {
		if seen[r.ID] || len(out) >= limit {
			continue
		}
		seen[r.ID] = true
		out = append(out, r)
	}
	return out
}

// scan calls fn for every key of prefix with a bucket time in [from, to).
func scan(ctx context.Context, txn *badger.Txn, prefix byte, from, to int64, fn func(bucket int64, sr Series, rest, v []byte) error) error {
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 64, Prefix: []byte{prefix}})
	defer it.Close()
	stop := appendTime([]byte{prefix}, to)
	n := 0
	for it.Seek(appendTime([]byte{prefix}, from)); it.Valid(); it.Next() {
		if n++; n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		item := it.Item()
		k := item.Key()
		if string(k) >= string(stop) {
			return nil
		}
		bucket, sr, rest, err := decodeRowKey(k)
		if err != nil {
			continue
		}
		if err := item.Value(func(v []byte) error { return fn(bucket, sr, rest, v) }); err != nil {
			return err
		}
	}
	return nil
}

// SeriesTotals is one series' counts since the process started, for the
// Prometheus exposition.
type SeriesTotals struct {
	Series
	Count  uint64
	Errors uint64
	Sum    time.Duration
	Hist   [NumBuckets]uint64
	// Exemplars holds, per latency bucket, the latest kept trace that fell
	// into it (nil when none).
	Exemplars [NumBuckets]*Exemplar
}

// Exemplar is a kept trace's span standing for a latency bucket.
type Exemplar struct {
	TraceID  span.TraceID
	Duration time.Duration
	// Time is the span's end.
	Time time.Time
}

// Totals returns every series' counts since the process started (Since),
// sorted by series. The counts are those flushed; spans a replay found
// already counted are not counted again, so a restart resets the counters.
func (s *Store) Totals() (since time.Time, series []SeriesTotals) {
	s.cumMu.Lock()
	out := make([]SeriesTotals, 0, len(s.cum))
	for _, t := range s.cum {
		c := *t
		for i, e := range c.Exemplars {
			if e != nil {
				ex := *e
				c.Exemplars[i] = &ex
			}
		}
		out = append(out, c)
	}
	s.cumMu.Unlock()
	slices.SortFunc(out, func(a, b SeriesTotals) int { return CompareSeries(a.Series, b.Series) })
	return s.started, out
}

// CompareSeries orders series by service, operation, kind and status.
func CompareSeries(a, b Series) int {
	if c := strings.Compare(a.Service, b.Service); c != 0 {
		return c
	}
	if c := strings.Compare(a.Operation, b.Operation); c != 0 {
		return c
	}
	if a.Kind != b.Kind {
		return int(a.Kind) - int(b.Kind)
	}
	return int(a.Status) - int(b.Status)
}
