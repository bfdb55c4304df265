package index

// Key layout. Every key carries the retention TTL. Integers are big-endian so
// that byte order is numeric order (and, for timestamps, time order); strings
// are length-prefixed (uvarint length, then bytes) so that a prefix scan for
// one value never runs into a longer value sharing its bytes. Index keys
// have empty values; the key is the whole fact.
//
//	0x01 tid[16] 'a'            -> trace summary (seq, times, root, counts, reasons, services, warnings)
//	0x01 tid[16] 's' sid[8]     -> span: version, resource hash, scope hash, OTLP Span without IDs
//	0x02 'c' hash[8]            -> instrumentation scope (OTLP ScopeSpans without spans)
//	0x02 'r' hash[8]            -> resource (OTLP ResourceSpans without scope spans)
//	0x03 seq[8]                 -> tid[16]; also the trace-start index (see seq)
//	0x10 lv(service) seq[8]                 service posting
//	0x11 lv(service) lv(span name) seq[8]   operation posting (one span has both)
//	0x12 lv(span name) seq[8]               span-name posting
//	0x13 lv(status) seq[8]                  status posting: "error", "ok", "unset"
//	0x14 lv(key) lv(value) seq[8]           attribute posting (span or resource attribute)
//	0x15 duration[8] seq[8]                 trace-duration index (nanoseconds)
//	0x20 service                            service list
//	0x21 lv(service) kind[1] span name      operation list (kind is the OTLP enum value)
//	0x22 'r'|'s' key                        tag names, resource or span scope
//	0x23 lv(key) value                      tag values
//	0x7f "health"                           readiness probe scratch key
//
// seq is the trace's reference in every index: its start time (earliest
// span of the first write) in Unix milliseconds, shifted left 12 bits, plus
// the first of the 4096 low values that no other trace holds. Millisecond
// resolution (rather than nanoseconds) takes a byte of entropy out of every
// posting key. It is assigned once, so late spans
// of a trace land on the same posting keys (writes stay idempotent however
// a replay regroups spans) and a posting exists at most once per trace
// however many spans carry the value. Because seq is a start time, each
// posting list and the 0x03 keys are time-ordered: search scans them in
// reverse (newest first) and seeks straight to a time range, and
// consecutive postings differ only in their low bytes, which the block
// compressor shrinks to a few bytes per key. Values longer than
// maxIndexedValue bytes are not indexed; search checks them against the
// stored spans.
//
// Resources and scopes are stored once per distinct content (hash of the
// encoding), not per span or trace: a resource carries a dozen attributes
// and is shared by thousands of traces. A blob key is rewritten when the
// store has not written it for half the retention, and lives 1.5 × the
// retention, so it outlives every span that names it.
//
// The duration index key follows the merged summary, so a late span that
// lengthens a trace adds a second key; search verifies every candidate
// against the summary and drops such stale keys.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/threadline/threadline/span"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

const (
	prefixTrace      byte = 0x01
	prefixBlob       byte = 0x02
	prefixSeq        byte = 0x03
	prefixSvcPost    byte = 0x10
	prefixOpPost     byte = 0x11
	prefixNamePost   byte = 0x12
	prefixStatusPost byte = 0x13
	prefixAttrPost   byte = 0x14
	prefixDuration   byte = 0x15
	prefixSvcList    byte = 0x20
	prefixOpList     byte = 0x21
	prefixTagName    byte = 0x22
	prefixTagValue   byte = 0x23
	prefixHealth     byte = 0x7f

	subSummary byte = 'a'
	subSpan    byte = 's'

	blobScope    byte = 'c'
	blobResource byte = 'r'

	scopeResource byte = 'r'
	scopeSpan     byte = 's'

	// maxIndexedValue bounds the values that get postings and tag-value
	// entries: longer values (SQL, URLs with query strings, stack traces)
	// are rarely searched for exactly and would bloat the index.
	maxIndexedValue = 64

	// maxConflictRetries bounds retries when a concurrent write of the same
	// trace invalidated the summary this write read.
	maxConflictRetries = 10
)

func traceKey(id span.TraceID, sub byte) []byte {
	k := make([]byte, 0, 1+16+1+8)
	k = append(k, prefixTrace)
	k = append(k, id[:]...)
	return append(k, sub)
}

func blobKey(kind byte, hash uint64) []byte { return appendU64([]byte{prefixBlob, kind}, hash) }

func spanKey(id span.TraceID, sid span.SpanID) []byte {
	return append(traceKey(id, subSpan), sid[:]...)
}

func seqKey(seq uint64) []byte { return appendU64([]byte{prefixSeq}, seq) }

// Posting prefixes; the seq is appended to make the key.
func svcPosting(service string) []byte { return appendLV([]byte{prefixSvcPost}, service) }
func opPosting(service, name string) []byte {
	return appendLV(appendLV([]byte{prefixOpPost}, service), name)
}
func namePosting(name string) []byte     { return appendLV([]byte{prefixNamePost}, name) }
func statusPosting(status string) []byte { return appendLV([]byte{prefixStatusPost}, status) }
func attrPosting(key, value string) []byte {
	return appendLV(appendLV([]byte{prefixAttrPost}, key), value)
}

func svcListKey(service string) []byte { return append([]byte{prefixSvcList}, service...) }
func opListKey(service string, kind tracepb.Span_SpanKind, name string) []byte {
	k := appendLV([]byte{prefixOpList}, service)
	return append(append(k, byte(kind)), name...)
}
func tagNameKey(scope byte, key string) []byte {
	return append([]byte{prefixTagName, scope}, key...)
}
func tagValueKey(key, value string) []byte {
	return append(appendLV([]byte{prefixTagValue}, key), value...)
}

type kv struct{ k, v []byte }

// preparedTrace is everything about one KeptTrace that does not depend on
// what is already stored, built before any transaction opens.
type preparedTrace struct {
	id       span.TraceID
	delta    summary // times, root, services, reasons, warnings of these spans
	spans    []kv
	spanErr  []bool
	blobs    []kv     // resources and scopes not written lately, written before the spans that name them
	postings [][]byte // posting prefixes, deduplicated; seq appended at commit
	lists    []listEntry
}

type listEntry struct {
	group string
	key   []byte
}

// WriteTraces stores kept traces. It MAY be called again with the same or
// overlapping spans (a replay, or late spans of an already-kept trace): span
// keys are rewritten in place, and the trace summary is read, merged and
// rewritten, so counts stay exact and times, root, reasons and services
// accumulate. A batch is written in as few transactions as Badger allows;
// when it returns an error, a prefix of the batch MAY be stored, and calling
// again with the same batch MUST be safe and completes it.
func (s *Store) WriteTraces(ctx context.Context, traces []KeptTrace) error {
	start := time.Now()
	nSpans, err := s.writeTraces(ctx, traces)
	s.metrics.writeLatency.Observe(time.Since(start).Seconds())
	if err != nil {
		s.metrics.writeErrors.Inc()
		return err
	}
	s.metrics.tracesWritten.Add(float64(len(traces)))
	s.metrics.spansWritten.Add(float64(nSpans))
	return nil
}

func (s *Store) writeTraces(ctx context.Context, traces []KeptTrace) (int, error) {
	prepared := make([]preparedTrace, 0, len(traces))
	nSpans := 0
	for i := range traces {
		pt, err := s.prepare(&traces[i])
		if err != nil {
			s.lists.forget(append(prepared, pt))
			return 0, err
		}
		nSpans += len(pt.spans)
		prepared = append(prepared, pt)
	}
	// Commits are serialised: concurrent read-modify-writes of one hot
	// trace otherwise invalidate each other until retries run out, and
	// Badger applies writes one batch at a time anyway. prepare, the
	// CPU-heavy part, stays parallel. Conflict detection remains as the
	// backstop (e.g. the health probe).
	s.writeMu.Lock()
	var err error
	for attempt := 0; attempt <= maxConflictRetries; attempt++ {
		if err = s.commit(ctx, prepared); !errors.Is(err, badger.ErrConflict) {
			break
		}
	}
	s.writeMu.Unlock()
	if err != nil {
		// The list keys admitted for this batch may not be on disk; let a
		// later write admit them again.
		s.lists.forget(prepared)
		return 0, err
	}
	now := time.Now()
	for _, pt := range prepared {
		for _, b := range pt.blobs {
			s.blobs.mark(beUint64(b.k[2:]), now)
		}
	}
	return nSpans, nil
}

// prepare encodes one trace's spans, resources, scopes, postings and list
// entries. Spans repeated within the batch are written once.
func (s *Store) prepare(kt *KeptTrace) (preparedTrace, error) {
	pt := preparedTrace{id: kt.Trace.ID}
	if kt.Trace.ID.IsZero() {
		return pt, fmt.Errorf("write trace: %w", span.ErrZeroID)
	}
	pt.delta.Reasons = unionStrings(nil, kt.Reasons...)
	pt.delta.Warnings = unionStrings(nil, kt.Warnings...)
	now := time.Now()
	postings := map[string]struct{}{}
	addPosting := func(p []byte) {
		if _, ok := postings[string(p)]; !ok {
			postings[string(p)] = struct{}{}
			pt.postings = append(pt.postings, p)
		}
	}
	addList := func(group string, key []byte, limit int) {
		if s.lists.admit(group, key, limit, now) {
			pt.lists = append(pt.lists, listEntry{group: group, key: key})
		}
	}
	addAttr := func(scope byte, key, value string) {
		addList("n", tagNameKey(scope, key), s.opts.MaxTagKeys)
		if len(value) > maxIndexedValue {
			return
		}
		addPosting(attrPosting(key, value))
		if s.lists.known(tagNameKey(scopeSpan, key)) || s.lists.known(tagNameKey(scopeResource, key)) {
			addList("v"+key, tagValueKey(key, value), s.opts.MaxTagValuesPerKey)
		}
	}

	type blobRef struct{ res, scope uint64 }
	resHashes := map[*span.Resource]uint64{}
	scopeHashes := map[*span.Scope]uint64{}
	seenBlob := map[blobRef]bool{}
	seenSpan := map[span.SpanID]bool{}
	for _, sp := range kt.Trace.Spans {
		if sp.Span == nil {
			continue
		}
		sid, err := span.SpanIDFromBytes(sp.GetSpanId())
		if err != nil {
			return pt, fmt.Errorf("write trace %s: %w", kt.Trace.ID, err)
		}
		if seenSpan[sid] {
			continue
		}
		seenSpan[sid] = true

		resHash, ok := resHashes[sp.Resource]
		if !ok {
			b, err := encodeResource(sp.Resource)
			if err != nil {
				return pt, fmt.Errorf("write trace %s: %w", kt.Trace.ID, err)
			}
			resHash = blobHash(b)
			resHashes[sp.Resource] = resHash
			if !seenBlob[blobRef{res: resHash}] {
				seenBlob[blobRef{res: resHash}] = true
				if !s.blobs.fresh(resHash, now) {
					pt.blobs = append(pt.blobs, kv{blobKey(blobResource, resHash), b})
				}
				if sp.Resource != nil {
					for _, a := range sp.Resource.Resource.GetAttributes() {
						v, ok := attrString(a.GetValue())
						if !ok {
							continue
						}
						if a.GetKey() == "service.name" {
							// The service posting and list answer this key.
							addList("n", tagNameKey(scopeResource, a.GetKey()), s.opts.MaxTagKeys)
							continue
						}
						addAttr(scopeResource, a.GetKey(), v)
					}
				}
			}
		}
		scopeHash, ok := scopeHashes[sp.Scope]
		if !ok {
			b, err := encodeScope(sp.Scope)
			if err != nil {
				return pt, fmt.Errorf("write trace %s: %w", kt.Trace.ID, err)
			}
			scopeHash = blobHash(b)
			scopeHashes[sp.Scope] = scopeHash
			if !seenBlob[blobRef{scope: scopeHash}] {
				seenBlob[blobRef{scope: scopeHash}] = true
				if !s.blobs.fresh(scopeHash, now) {
					pt.blobs = append(pt.blobs, kv{blobKey(blobScope, scopeHash), b})
				}
			}
		}

		val, err := appendSpanValue(nil, sp.Span, resHash, scopeHash)
		if err != nil {
			return pt, fmt.Errorf("write trace %s: %w", kt.Trace.ID, err)
		}
		pt.spans = append(pt.spans, kv{spanKey(pt.id, sid), val})
		pt.spanErr = append(pt.spanErr, sp.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR)
		pt.delta.addSpan(sp)

		svc := sp.ServiceName()
		addPosting(svcPosting(svc))
		addPosting(opPosting(svc, sp.GetName()))
		addPosting(namePosting(sp.GetName()))
		addPosting(statusPosting(statusString(sp.Span)))
		if addList("s", svcListKey(svc), s.opts.MaxServices); s.lists.known(svcListKey(svc)) {
			addList("o"+svc, opListKey(svc, sp.GetKind(), sp.GetName()), s.opts.MaxTagValuesPerKey)
		}
		for _, a := range sp.GetAttributes() {
			if v, ok := attrString(a.GetValue()); ok {
				addAttr(scopeSpan, a.GetKey(), v)
			}
		}
	}
	return pt, nil
}

// commit writes prepared traces, reading and merging each summary in the
// same transaction that writes it so Badger's conflict detection catches a
// concurrent writer of the same trace. A transaction that grows too big is
// committed and a new one continues with the entry that did not fit. Each
// trace's summary is its first entry, so a summary on disk always counts
// every span of that trace already on disk: a retry after a partial commit
// neither loses nor double-counts spans.
func (s *Store) commit(ctx context.Context, prepared []preparedTrace) (err error) {
	txn := s.db.NewTransaction(true)
	defer func() { txn.Discard() }()
	setTTL := func(k, v []byte, ttl time.Duration) error {
		e := badger.NewEntry(k, v)
		if ttl > 0 {
			e = e.WithTTL(ttl)
		}
		err := txn.SetEntry(e)
		if errors.Is(err, badger.ErrTxnTooBig) {
			if err := txn.Commit(); err != nil {
				return fmt.Errorf("commit partial batch: %w", err)
			}
			txn = s.db.NewTransaction(true)
			err = txn.SetEntry(e)
		}
		if err != nil {
			return fmt.Errorf("set key %x: %w", k[:min(len(k), 18)], err)
		}
		return nil
	}
	set := func(k, v []byte) error { return setTTL(k, v, s.opts.Retention) }

	for i := range prepared {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("write traces: %w", err)
		}
		pt := &prepared[i]
		sumKey := traceKey(pt.id, subSummary)
		merged, found, err := getSummary(txn, sumKey)
		if err != nil {
			return fmt.Errorf("write trace %s: %w", pt.id, err)
		}
		newSpans, newErrs := uint64(0), uint64(0)
		for j, sp := range pt.spans {
			isNew := true
			if found {
				// Only a trace written before can already hold the span.
				_, err := txn.Get(sp.k)
				switch {
				case err == nil:
					isNew = false
				case !errors.Is(err, badger.ErrKeyNotFound):
					return fmt.Errorf("write trace %s: check span: %w", pt.id, err)
				}
			}
			if isNew {
				newSpans++
				if pt.spanErr[j] {
					newErrs++
				}
			}
		}
		if !found {
			seq, err := s.allocSeq(txn, seqForTime(pt.delta.MinStart))
			if err != nil {
				return fmt.Errorf("write trace %s: %w", pt.id, err)
			}
			merged = summary{Seq: seq}
		}
		merged.merge(&pt.delta)
		merged.SpanCount += newSpans
		merged.ErrorCount += newErrs

		if err := set(sumKey, merged.appendTo(nil)); err != nil {
			return fmt.Errorf("write trace %s: %w", pt.id, err)
		}
		if err := set(seqKey(merged.Seq), slices.Clone(pt.id[:])); err != nil {
			return fmt.Errorf("write trace %s: %w", pt.id, err)
		}
		for _, b := range pt.blobs {
			if err := setTTL(b.k, b.v, s.blobTTL()); err != nil {
				return fmt.Errorf("write trace %s: %w", pt.id, err)
			}
		}
		for _, sp := range pt.spans {
			if err := set(sp.k, sp.v); err != nil {
				return fmt.Errorf("write trace %s: %w", pt.id, err)
			}
		}
		for _, p := range pt.postings {
			if err := set(appendU64(slices.Clip(p), merged.Seq), nil); err != nil {
				return fmt.Errorf("write trace %s: %w", pt.id, err)
			}
		}
		durKey := appendU64(appendU64([]byte{prefixDuration}, merged.Duration()), merged.Seq)
		if err := set(durKey, nil); err != nil {
			return fmt.Errorf("write trace %s: %w", pt.id, err)
		}
		for _, l := range pt.lists {
			if err := set(l.key, nil); err != nil {
				return fmt.Errorf("write trace %s: %w", pt.id, err)
			}
		}
	}
	if err := txn.Commit(); err != nil {
		return fmt.Errorf("commit batch: %w", err)
	}
	return nil
}

// maxSeqProbes bounds the search for a free seq: 16 milliseconds' worth.
// More kept traces than that starting within a few milliseconds of each
// other (or all with no timestamps) fail the write.
const maxSeqProbes = 1 << 16

// seqForTime is the lowest seq of a start time in Unix nanoseconds.
func seqForTime(ns uint64) uint64 { return ns / uint64(time.Millisecond) << 12 }

// allocSeq returns a free seq for a trace starting at base, starting the probe
// after the last seq this process handed out for the same millisecond. A
// commit that fails leaves the hint ahead of the store, which only skips a
// few free values.
func (s *Store) allocSeq(txn *badger.Txn, base uint64) (uint64, error) {
	if s.seqHint == nil || len(s.seqHint) > 1<<16 {
		s.seqHint = map[uint64]uint64{}
	}
	from := base
	if h, ok := s.seqHint[base]; ok {
		from = h + 1
	}
	seq, err := freeSeq(txn, from, base+maxSeqProbes)
	if err == nil {
		s.seqHint[base] = seq
	}
	return seq, err
}

// freeSeq returns the first seq from start on that no trace holds. The
// reads join the transaction's read set, so two writers racing for one seq
// conflict and one retries.
func freeSeq(txn *badger.Txn, start, limit uint64) (uint64, error) {
	for seq := start; seq < limit; seq++ {
		_, err := txn.Get(seqKey(seq))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return seq, nil
		}
		if err != nil {
			return 0, fmt.Errorf("allocate trace reference: %w", err)
		}
	}
	return 0, fmt.Errorf("allocate trace reference: %d traces start at %d", maxSeqProbes, start)
}

// blobTTL outlives the retention by the blob refresh interval (see the key
// layout).
func (s *Store) blobTTL() time.Duration {
	return s.opts.Retention + s.opts.Retention/2
}

// blobCache remembers when each resource and scope hash was last written.
type blobCache struct {
	refresh time.Duration // 0: never rewrite
	mu      sync.Mutex
	written map[uint64]time.Time
}

// maxBlobCache bounds blobCache; when full it starts over, which costs
// only rewrites of blobs already on disk.
const maxBlobCache = 1 << 16

func (c *blobCache) fresh(h uint64, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.written[h]
	return ok && (c.refresh == 0 || now.Sub(t) < c.refresh)
}

func (c *blobCache) mark(h uint64, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.written) >= maxBlobCache {
		clear(c.written)
	}
	c.written[h] = now
}

// getSummary reads and decodes a trace summary.
func getSummary(txn *badger.Txn, key []byte) (summary, bool, error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return summary{}, false, nil
	}
	if err != nil {
		return summary{}, false, fmt.Errorf("read summary: %w", err)
	}
	var sum summary
	err = item.Value(func(v []byte) error {
		var err error
		sum, err = decodeSummary(v)
		return err
	})
	if err != nil {
		return summary{}, false, err
	}
	return sum, true, nil
}
