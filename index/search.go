package index

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
)

// ErrBadQuery reports a SearchRequest that contradicts itself; the read API
// maps it to InvalidArgument.
var ErrBadQuery = errors.New("invalid search request")

const (
	// DefaultSearchLimit is the limit when the request leaves it 0.
	DefaultSearchLimit = 20
	// searchMaxCandidates bounds the traces one search examines, so a
	// query that matches almost nothing cannot walk the whole store.
	searchMaxCandidates = 20000
	// durationScanCap is how many duration-index entries a duration-only
	// search collects before it falls back to scanning by start time.
	durationScanCap = 2000
	// maxTraceSpan widens time-bounded scans downwards: index order is
	// start order, so a trace that started before the range can only be
	// found if it started at most this long before. Longer traces can be
	// missed by time-bounded searches.
	maxTraceSpan = uint64(time.Hour)
	// lateStartSlack widens time-bounded scans upwards: seq is the start of
	// a trace's first write, and a root arriving later can start earlier.
	lateStartSlack = uint64(5 * time.Minute)
)

type tagFilter struct {
	key, value string
}

type compiledQuery struct {
	req      *readerpb.SearchRequest
	tags     []tagFilter
	postings [][]byte // necessary conditions, driver first
	reasons  map[string]bool
	limit    int
	needSpan bool // some condition can only be checked on stored spans
}

// compileQuery turns a request into postings and checks. isHigh reports
// attribute keys that are not indexed (high-cardinality).
func compileQuery(q *readerpb.SearchRequest, isHigh func(string) bool) (*compiledQuery, error) {
	if q == nil {
		q = &readerpb.SearchRequest{}
	}
	var errs []error
	for _, d := range []struct {
		name     string
		min, max int64
	}{
		{"duration", q.MinDurationNanos, q.MaxDurationNanos},
		{"span duration", q.SpanMinDurationNanos, q.SpanMaxDurationNanos},
		{"time range", q.StartUnixNano, q.EndUnixNano},
	} {
		if d.min < 0 || d.max < 0 {
			errs = append(errs, fmt.Errorf("%s bounds must not be negative", d.name))
		} else if d.max > 0 && d.min > d.max {
			errs = append(errs, fmt.Errorf("%s lower bound %d is above its upper bound %d", d.name, d.min, d.max))
		}
	}
	cq := &compiledQuery{req: q, limit: int(q.Limit)}
	if cq.limit == 0 {
		cq.limit = DefaultSearchLimit
	}
	if len(q.KeptReasons) > 0 {
		cq.reasons = map[string]bool{}
		for _, r := range q.KeptReasons {
			cq.reasons[r] = true
		}
	}
	// Candidates come from the first posting, so order them from the most
	// to the least selective kind: one operation, an attribute value, a
	// span name, a service, a status.
	type ranked struct {
		rank int
		key  []byte
	}
	var ps []ranked
	for _, k := range slices.Sorted(maps.Keys(q.Tags)) {
		v := q.Tags[k]
		switch k {
		case "service.name":
			ps = append(ps, ranked{3, svcPosting(v)})
		case "name":
			ps = append(ps, ranked{2, namePosting(v)})
		case "status":
			v = strings.ToLower(v)
			if v != statusError && v != statusOK && v != statusUnset {
				errs = append(errs, fmt.Errorf("status %q is not one of error, ok, unset", q.Tags[k]))
			}
			ps = append(ps, ranked{4, statusPosting(v)})
		default:
			if len(v) <= maxIndexedValue && !isHigh(k) {
				ps = append(ps, ranked{1, attrPosting(k, v)})
			} else {
				cq.needSpan = true
			}
		}
		cq.tags = append(cq.tags, tagFilter{key: k, value: v})
	}
	if q.SameSpan {
		svc, okSvc := q.Tags["service.name"]
		name, okName := q.Tags["name"]
		if okSvc && okName {
			ps = append(ps, ranked{0, opPosting(svc, name)})
		}
		// One span must satisfy everything together; postings only say
		// that each condition holds on some span.
		cq.needSpan = cq.needSpan || len(cq.tags) > 1 || q.SpanMinDurationNanos > 0 || q.SpanMaxDurationNanos > 0
	}
	if q.SpanMinDurationNanos > 0 || q.SpanMaxDurationNanos > 0 {
		cq.needSpan = true
	}
	slices.SortStableFunc(ps, func(a, b ranked) int { return cmp.Compare(a.rank, b.rank) })
	for _, p := range ps {
		cq.postings = append(cq.postings, p.key)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadQuery, err)
	}
	return cq, nil
}

// Search returns summaries of matching traces, newest first. Candidates come
// from the most selective posting list (newest first-write first), else the
// duration index, else the start-time index; each is checked against the
// other postings with point lookups, then against its summary, and — only
// when a condition needs it (same_span, span duration bounds, unindexed long
// values) — against its stored spans. It stops after limit matches or
// searchMaxCandidates candidates.
func (s *Store) Search(ctx context.Context, q *readerpb.SearchRequest) ([]*readerpb.TraceSummary, error) {
	cq, err := compileQuery(q, s.card.isHigh)
	if err != nil {
		return nil, err
	}
	var out []*readerpb.TraceSummary
	err = s.db.View(func(txn *badger.Txn) error {
		srch := &searcher{ctx: ctx, txn: txn, chunks: s.chunkReader(txn), q: cq, seen: map[uint64]bool{}}
		defer srch.close()
		err := srch.run()
		out = srch.out
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("search traces: %w", err)
	}
	slices.SortFunc(out, func(a, b *readerpb.TraceSummary) int {
		return cmp.Or(cmp.Compare(b.StartUnixNano, a.StartUnixNano), bytes.Compare(a.TraceId, b.TraceId))
	})
	return out[:min(len(out), cq.limit)], nil
}

type searcher struct {
	ctx      context.Context
	txn      *badger.Txn
	chunks   *chunkReader
	q        *compiledQuery
	seen     map[uint64]bool
	others   []*postingStream // the postings after the driver, advanced in step with it
	examined int
	out      []*readerpb.TraceSummary
}

var errSearchDone = errors.New("search done")

func (s *searcher) run() error {
	var err error
	switch {
	case len(s.q.postings) > 0:
		err = s.scanPosting(s.q.postings[0])
	case s.q.req.MinDurationNanos > 0:
		var seqs []uint64
		if seqs, err = s.durationCandidates(); err == nil && seqs != nil {
			// Newest first, like every other scan: stop at the limit.
			for _, seq := range seqs {
				if err = s.visit(seq); err != nil {
					break
				}
			}
		} else if err == nil {
			err = s.scanStart()
		}
	default:
		err = s.scanStart()
	}
	if errors.Is(err, errSearchDone) {
		return nil
	}
	return err
}

// seqBounds is the seq (start time) range a time-bounded search scans.
func (s *searcher) seqBounds() (lo, hi uint64) {
	lo, hi = 0, math.MaxUint64
	if st := clampU64(s.q.req.StartUnixNano); st > maxTraceSpan {
		lo = seqForTime(st - maxTraceSpan)
	}
	if end := clampU64(s.q.req.EndUnixNano); end > 0 && end < math.MaxUint64-lateStartSlack {
		hi = seqForTime(end+lateStartSlack) | 0xfff
	}
	return lo, hi
}

func (s *searcher) close() {
	for _, o := range s.others {
		o.close()
	}
}

// scanPosting walks one posting list newest first; the other postings are
// checked by advancing their streams to each candidate (a merge join: the
// candidates come newest first).
func (s *searcher) scanPosting(prefix []byte) error {
	lo, hi := s.seqBounds()
	for _, p := range s.q.postings[1:] {
		s.others = append(s.others, newPostingStream(s.txn, p, hi))
	}
	ps := newPostingStream(s.txn, prefix, hi)
	defer ps.close()
	for {
		seq, ok, err := ps.next()
		if err != nil || !ok || seq < lo {
			return err
		}
		if seq > hi {
			continue
		}
		if err := s.visit(seq); err != nil {
			return err
		}
	}
}

// scanStart walks every trace by start time (the 0x03 keys), newest first.
func (s *searcher) scanStart() error {
	lo, hi := s.seqBounds()
	prefix := []byte{prefixSeq}
	it := s.txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: prefix})
	defer it.Close()
	for it.Seek(append(appendU64(prefix, hi), 0xff)); it.Valid(); it.Next() {
		rest := it.Item().Key()[1:]
		if len(rest) != 8 {
			continue
		}
		seq := beUint64(rest)
		if seq < lo {
			return nil
		}
		if err := s.visit(seq); err != nil {
			return err
		}
	}
	return nil
}

// postingStream reads one posting list (its fragments, see writer.go) as
// a stream of seqs, newest first. Fragments are visited in descending
// maxseq order; as one may overlap the next (a batch of late traces), seqs
// wait in buf until no fragment not yet read can hold a larger one.
// Repeated seqs (replays) may come out more than once.
type postingStream struct {
	it     *badger.Iterator
	prefix []byte
	buf    []uint64 // read, not yet passed; ascending, so the next is last
	err    error
}

func newPostingStream(txn *badger.Txn, prefix []byte, hi uint64) *postingStream {
	p := &postingStream{
		it:     txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: prefix}),
		prefix: prefix,
	}
	p.seek(hi)
	return p
}

func (p *postingStream) close() { p.it.Close() }

// seek positions at the first fragment that can hold a seq ≤ hi.
func (p *postingStream) seek(hi uint64) {
	bound := uint64(math.MaxUint64)
	if hi < bound-fragWindow {
		bound = hi + fragWindow
	}
	k := appendU64(slices.Clip(p.prefix), bound)
	p.it.Seek(append(k, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff))
}

// peek returns the maxseq of the next fragment not yet read.
func (p *postingStream) peek() (uint64, bool) {
	for ; p.it.Valid(); p.it.Next() {
		if rest := p.it.Item().Key()[len(p.prefix):]; len(rest) == 16 {
			return beUint64(rest), true
		}
	}
	return 0, false
}

// load reads the next fragment into buf.
func (p *postingStream) load(maxSeq uint64) error {
	n := len(p.buf)
	err := p.it.Item().Value(func(v []byte) error {
		var err error
		p.buf, err = decodeFragment(p.buf, v, maxSeq)
		return err
	})
	p.it.Next()
	if err != nil {
		return fmt.Errorf("posting %x: %w", p.prefix, err)
	}
	if n > 0 {
		slices.Sort(p.buf)
	} else {
		slices.Reverse(p.buf) // a fragment is stored descending
	}
	return nil
}

// next returns the largest seq not yet returned.
func (p *postingStream) next() (uint64, bool, error) {
	for {
		m, more := p.peek()
		if more && (len(p.buf) == 0 || p.buf[len(p.buf)-1] < m) {
			if err := p.load(m); err != nil {
				return 0, false, err
			}
			continue
		}
		if len(p.buf) == 0 {
			return 0, false, nil
		}
		top := p.buf[len(p.buf)-1]
		for len(p.buf) > 0 && p.buf[len(p.buf)-1] == top {
			p.buf = p.buf[:len(p.buf)-1]
		}
		return top, true, nil
	}
}

// contains reports whether the list holds seq. Successive calls must ask
// for descending seqs: everything above seq is dropped.
func (p *postingStream) contains(seq uint64) (bool, error) {
	drop := func() {
		for len(p.buf) > 0 && p.buf[len(p.buf)-1] > seq {
			p.buf = p.buf[:len(p.buf)-1]
		}
	}
	drop()
	for {
		m, more := p.peek()
		if !more || m < seq {
			break
		}
		if seq < math.MaxUint64-fragWindow && m > seq+fragWindow {
			// Skip fragments that end before seq could start.
			p.seek(seq)
			continue
		}
		if err := p.load(m); err != nil {
			return false, err
		}
		drop()
	}
	return len(p.buf) > 0 && p.buf[len(p.buf)-1] == seq, nil
}

// durationCandidates collects the traces whose duration is within the
// bounds, as far as the duration postings tell (a bucket holds durations
// up to 12.5% apart; visit checks the summary), or returns nil when there are
// more than durationScanCap.
func (s *searcher) durationCandidates() ([]uint64, error) {
	minDur, maxDur := uint64(s.q.req.MinDurationNanos), uint64(math.MaxUint64)
	if s.q.req.MaxDurationNanos > 0 {
		maxDur = uint64(s.q.req.MaxDurationNanos)
	}
	seqs := []uint64{}
	full := func() bool { return len(seqs) >= durationScanCap }
	// The duration postings: fragments in bucket order.
	it := s.txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixDurPost}})
	last := durPosting(durationBucket(maxDur))
	for it.Seek(durPosting(durationBucket(minDur))); it.Valid() && !full(); it.Next() {
		k := it.Item().Key()
		if len(k) != len(last)+16 {
			continue
		}
		if bytes.Compare(k[:len(last)], last) > 0 {
			break
		}
		err := it.Item().Value(func(v []byte) error {
			var err error
			seqs, err = decodeFragment(seqs, v, beUint64(k[len(last):]))
			return err
		})
		if err != nil {
			it.Close()
			return nil, err
		}
	}
	it.Close()
	// Traces written by earlier versions: one duration key each.
	it = s.txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixDuration}})
	defer it.Close()
	for it.Seek(appendU64([]byte{prefixDuration}, minDur)); it.Valid() && !full(); it.Next() {
		rest := it.Item().Key()[1:]
		if len(rest) != 16 {
			continue
		}
		if beUint64(rest) > maxDur {
			break
		}
		seqs = append(seqs, beUint64(rest[8:]))
	}
	if full() {
		return nil, s.ctx.Err()
	}
	// Newest first, so the candidate cap (if it bites) keeps the newest.
	slices.SortFunc(seqs, func(a, b uint64) int { return cmp.Compare(b, a) })
	return slices.Compact(seqs), s.ctx.Err()
}

// visit checks one candidate trace and records it if it matches. It returns
// errSearchDone when the search has enough.
func (s *searcher) visit(seq uint64) error {
	if s.seen[seq] {
		return nil
	}
	s.seen[seq] = true
	if s.examined++; s.examined > searchMaxCandidates {
		return errSearchDone
	}
	if s.examined%256 == 0 {
		if err := s.ctx.Err(); err != nil {
			return err
		}
	}
	for _, o := range s.others {
		ok, err := o.contains(seq)
		if err != nil || !ok {
			return err
		}
	}
	item, err := s.txn.Get(seqKey(seq))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("resolve trace reference: %w", err)
	}
	var tid span.TraceID
	if err := item.Value(func(v []byte) error {
		if len(v) != len(tid) {
			return fmt.Errorf("trace reference %d: %w", seq, ErrCorrupt)
		}
		copy(tid[:], v)
		return nil
	}); err != nil {
		return err
	}
	sum, found, err := s.chunks.summary(traceKey(tid, subSummary))
	if err != nil {
		return fmt.Errorf("trace %s: %w", tid, err)
	}
	if !found || sum.Seq != seq || !s.summaryMatches(&sum) {
		return nil
	}
	if s.q.needSpan {
		spans, err := readSpans(s.ctx, s.txn, s.chunks, tid, &sum)
		if err != nil {
			return fmt.Errorf("trace %s: %w", tid, err)
		}
		if !s.spansMatch(spans) {
			return nil
		}
	}
	s.out = append(s.out, &readerpb.TraceSummary{
		TraceId:         tid[:],
		RootServiceName: sum.RootService,
		RootSpanName:    sum.RootName,
		StartUnixNano:   int64(sum.Start()),
		DurationNanos:   int64(sum.Duration()),
		SpanCount:       uint32(min(sum.SpanCount, math.MaxUint32)),
		ErrorCount:      uint32(min(sum.ErrorCount, math.MaxUint32)),
		KeptReasons:     sum.Reasons,
		Services:        sum.Services,
	})
	if len(s.out) >= s.q.limit {
		return errSearchDone
	}
	return nil
}

func (s *searcher) summaryMatches(sum *summary) bool {
	q := s.q.req
	d := sum.Duration()
	switch {
	case q.MinDurationNanos > 0 && d < uint64(q.MinDurationNanos):
		return false
	case q.MaxDurationNanos > 0 && d > uint64(q.MaxDurationNanos):
		return false
	case q.EndUnixNano > 0 && sum.MinStart > uint64(q.EndUnixNano):
		return false
	case q.StartUnixNano > 0 && max(sum.MaxEnd, sum.MinStart) < uint64(q.StartUnixNano):
		return false
	}
	if s.q.reasons != nil && !slices.ContainsFunc(sum.Reasons, func(r string) bool { return s.q.reasons[r] }) {
		return false
	}
	return true
}

func (s *searcher) spansMatch(spans []span.Span) bool {
	q := s.q.req
	durOK := func(sp span.Span) bool {
		d := subFloor(sp.GetEndTimeUnixNano(), sp.GetStartTimeUnixNano())
		return (q.SpanMinDurationNanos == 0 || d >= uint64(q.SpanMinDurationNanos)) &&
			(q.SpanMaxDurationNanos == 0 || d <= uint64(q.SpanMaxDurationNanos))
	}
	if q.SameSpan {
		return slices.ContainsFunc(spans, func(sp span.Span) bool {
			if !durOK(sp) {
				return false
			}
			for _, t := range s.q.tags {
				if !spanHasTag(sp, t) {
					return false
				}
			}
			return true
		})
	}
	for _, t := range s.q.tags {
		if !slices.ContainsFunc(spans, func(sp span.Span) bool { return spanHasTag(sp, t) }) {
			return false
		}
	}
	return slices.ContainsFunc(spans, durOK)
}

// spanHasTag applies one tag filter to one span as reader.proto defines it.
func spanHasTag(sp span.Span, t tagFilter) bool {
	switch t.key {
	case "service.name":
		return sp.ServiceName() == t.value
	case "name":
		return sp.GetName() == t.value
	case "status":
		return statusString(sp.Span) == t.value
	}
	for _, a := range sp.GetAttributes() {
		if a.GetKey() == t.key {
			if v, ok := attrString(a.GetValue()); ok && v == t.value {
				return true
			}
		}
	}
	if sp.Resource != nil {
		for _, a := range sp.Resource.Resource.GetAttributes() {
			if a.GetKey() == t.key {
				if v, ok := attrString(a.GetValue()); ok && v == t.value {
					return true
				}
			}
		}
	}
	return false
}
