package index

// Key layout. Every key carries the retention TTL. Integers are big-endian so
// that byte order is numeric order (and, for timestamps, time order); strings
// are length-prefixed (uvarint length, then bytes) so that a prefix scan for
// one value never runs into a longer value sharing its bytes.
//
//	0x01 tid[16] 'a'                 -> reference to the trace's summary in a summary block, or the summary inline
//	0x02 'c' hash[8]                 -> instrumentation scope (OTLP ScopeSpans without spans)
//	0x02 'r' hash[8]                 -> resource (OTLP ResourceSpans without scope spans)
//	0x03 seq[8]                      -> tid[16]; also the trace-start index (see seq)
//	0x04 seq[8] tid[16] chunk[8]     -> span chunk of an earlier version, read only
//	0x05 id[4]                       -> chunk compression dictionary of the previous version, read only (dict.go)
//	0x06 group[8]                    -> chunk group: a batch's plain chunks, zstd-compressed together (group.go)
//	0x07 block[8]                    -> summary block: a batch's trace summaries (seq, times, root, counts,
//	                                    reasons, services, warnings, chunk places), zstd-compressed together (sumblock.go)
//	0x10 lv(service) F               -> service posting fragment
//	0x11 lv(service) lv(span name) F -> operation posting fragment (one span has both)
//	0x12 lv(span name) F             -> span-name posting fragment
//	0x13 lv(status) F                -> status posting fragment: "error", "ok", "unset"
//	0x14 lv(key) lv(value) F         -> attribute posting fragment (span or resource attribute)
//	0x15 duration[8] seq[8]          trace-duration index of earlier versions, read only
//	0x16 bucket[2] F                 -> trace-duration posting fragment (durationBucket)
//	0x20 service                     service list
//	0x21 lv(service) kind[1] name    operation list (kind is the OTLP enum value)
//	0x22 'r'|'s' key                 tag names, resource or span scope
//	0x23 lv(key) value               tag values
//	0x24 key                         high-cardinality attribute key: no 0x14 postings (cardinality.go)
//	0x7f "health"                    readiness probe scratch key
//
// where F is maxseq[8] frag[8].
//
// A write's cost in Badger is its keys (memtable inserts, WAL entries,
// compaction merges) and the bytes of the LSM that flushes and compactions
// copy and recompress, so the layout keeps both small: two keys per trace
// (a summary reference and the seq) and a few per batch, with the bulky
// values (chunk groups, summary blocks) in the value log. A write stores each
// trace's spans as one chunk (more only past maxChunkSpans or
// maxChunkBytes), identified by the FNV-64 of its sorted span IDs: a replay
// with the same grouping places the same chunk again, and one that
// regroups spans adds chunks that repeat spans, which reads merge by span
// ID: regrouping costs space, never correctness.
//
// The spans themselves, most of the bytes, live in chunk groups: a batch's
// chunks compressed together (group.go), values big enough that Badger
// keeps them in its value log, written once and never compacted. The
// trace summary, read and rewritten by every write anyway, places each
// chunk (group, offset, length). Earlier versions kept each chunk under a
// key of its own (0x04, by seq and trace ID); such traces are still read.
// The summaries of a batch go in summary blocks like the chunks in groups
// (sumblock.go); the trace's 0x01 key places its summary there. Earlier
// versions kept it inline, as AddReasons still writes it; both are read.
//
// Postings are written per flush, not per trace: a commit gathers its
// batch's postings and a flush writes those of several batches (about a
// second of writes, postings.go) as one fragment per value, which holds
// the seqs of every trace gathered that has the value (delta-encoded,
// newest first); maxseq is the largest and frag the FNV-64 of the value,
// so a flush of the same seqs rewrites the same keys. A value shared by
// the traces (a service, http.method=GET) costs one key per flush. A
// fragment spans at most fragWindow of seq, so search, walking fragments
// newest maxseq first, can seek to a time and merge overlapping fragments
// into one newest-first stream (search.go).
//
// seq is the trace's reference in every index: its start time (earliest
// span of the first write) in Unix milliseconds, shifted left 12 bits, plus
// the first of the 4096 low values that no other trace holds. It is
// assigned once, so late spans of a trace land in postings with the same
// seq, and search dedupes repeated seqs. Because seq is a start time,
// posting fragments and the 0x03 keys are time-ordered: search scans them
// in reverse (newest first) and seeks straight to a time range. Values
// longer than maxIndexedValue bytes, and keys marked high-cardinality, are
// not indexed; search checks them against the stored spans.
//
// Resources and scopes are stored once per distinct content (hash of the
// encoding), not per span or trace: a resource carries a dozen attributes
// and is shared by thousands of traces. A blob key is rewritten when the
// store has not written it for half the retention, and lives 1.5 × the
// retention, so it outlives every span that names it.
//
// Duration postings (0x16) are gathered and flushed like the others, by the
// bucket of the merged summary's duration, known only at commit: a late
// span that lengthens a trace posts it in a second bucket; search
// verifies every candidate against the summary and drops such stale
// entries.

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/bits"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/threadline/threadline/span"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	prefixTrace      byte = 0x01
	prefixBlob       byte = 0x02
	prefixSeq        byte = 0x03
	prefixChunk      byte = 0x04
	prefixDict       byte = 0x05
	prefixGroup      byte = 0x06
	prefixSumBlock   byte = 0x07
	prefixSvcPost    byte = 0x10
	prefixOpPost     byte = 0x11
	prefixNamePost   byte = 0x12
	prefixStatusPost byte = 0x13
	prefixAttrPost   byte = 0x14
	prefixDuration   byte = 0x15
	prefixDurPost    byte = 0x16
	prefixSvcList    byte = 0x20
	prefixOpList     byte = 0x21
	prefixTagName    byte = 0x22
	prefixTagValue   byte = 0x23
	prefixHighCard   byte = 0x24
	prefixHealth     byte = 0x7f

	subSummary byte = 'a'

	blobScope    byte = 'c'
	blobResource byte = 'r'

	scopeResource byte = 'r'
	scopeSpan     byte = 's'

	// maxIndexedValue bounds the values that get postings and tag-value
	// entries: longer values (SQL, URLs with query strings, stack traces)
	// are rarely searched for exactly and would bloat the index.
	maxIndexedValue = 64

	// maxChunkSpans and maxChunkBytes split a big write of one trace into
	// several chunks, keeping groups near their target size. The split
	// follows span-ID order, so the same spans always split the same way.
	maxChunkSpans = 256
	maxChunkBytes = 32 << 10

	// fragWindow is the widest seq range of one posting fragment (10 s of
	// trace starts); maxFragSeqs caps its length.
	fragWindow  = 10_000 << 12
	maxFragSeqs = 4096
)

func traceKey(id span.TraceID, sub byte) []byte {
	return appendTraceKey(make([]byte, 0, 1+16+1+8), id, sub)
}

func appendTraceKey(dst []byte, id span.TraceID, sub byte) []byte {
	return append(append(append(dst, prefixTrace), id[:]...), sub)
}

func blobKey(kind byte, hash uint64) []byte { return appendU64([]byte{prefixBlob, kind}, hash) }

// chunkPrefix is the prefix of every chunk key of one trace (written by
// earlier versions; chunks are now placed by the summary).
func chunkPrefix(seq uint64, id span.TraceID) []byte {
	k := make([]byte, 0, 1+8+16+8)
	k = appendU64(append(k, prefixChunk), seq)
	return append(k, id[:]...)
}

func seqKey(seq uint64) []byte { return appendU64([]byte{prefixSeq}, seq) }

// Posting prefixes; a fragment key appends maxseq and the fragment hash.
func svcPosting(service string) []byte { return appendLV([]byte{prefixSvcPost}, service) }
func opPosting(service, name string) []byte {
	return appendLV(appendLV([]byte{prefixOpPost}, service), name)
}
func namePosting(name string) []byte     { return appendLV([]byte{prefixNamePost}, name) }
func statusPosting(status string) []byte { return appendLV([]byte{prefixStatusPost}, status) }
func attrPosting(key, value string) []byte {
	return appendLV(appendLV([]byte{prefixAttrPost}, key), value)
}

func durPosting(bucket uint16) []byte {
	return []byte{prefixDurPost, byte(bucket >> 8), byte(bucket)}
}

// durationBucket is the duration posting of a trace lasting ns
// nanoseconds: an eighth of a power of two, so a search's duration bound
// falls inside a bucket at most 12.5% wide, whose traces search checks
// against their summaries.
func durationBucket(ns uint64) uint16 {
	l := bits.Len64(ns)
	if l < 4 {
		return uint16(ns)
	}
	return uint16(8*l) + uint16(ns>>(l-4)&7)
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
func highCardKey(key string) []byte { return append([]byte{prefixHighCard}, key...) }

type kv struct{ k, v []byte }

// chunkValue is a chunk's ID and where in the batch's groups it went; the
// group's ID is known once the batch's groups are sealed.
type chunkValue struct {
	id            uint64
	group, off, n int
}

// preparedTrace is everything about one KeptTrace that does not depend on
// what is already stored, built before any transaction opens. Its slices
// are parts of its preparer's batch-wide buffers, valid until the preparer
// is reset.
type preparedTrace struct {
	id       span.TraceID
	delta    summary // times, root, services, reasons, warnings of these spans
	chunks   []chunkValue
	spanIDs  []span.SpanID // distinct
	spanErr  []bool        // per spanIDs entry
	blobs    []kv          // resources and scopes not written lately, written before the chunks that name them
	postings []int32       // indexes into the batch's postings, distinct
	merged   summary       // the summary written, once commit merged it
}

type listEntry struct {
	group string
	key   []byte
}

// WriteTraces stores kept traces. It MAY be called again with the same or
// overlapping spans (a replay, or late spans of an already-kept trace):
// spans already stored are not counted again, and the trace summary is
// read, merged and rewritten, so counts stay exact and times, root, reasons
// and services accumulate. A batch is written in as few transactions as
// Badger allows; when it returns an error, a prefix of the batch MAY be
// stored, and calling again with the same batch MUST be safe and completes
// it. When it returns nil, the traces and their posting lists are durable.
func (s *Store) WriteTraces(ctx context.Context, traces []KeptTrace) error {
	if err := s.WriteTracesThen(ctx, traces, nil); err != nil {
		return err
	}
	return s.Flush(ctx)
}

// WriteTracesThen is WriteTraces that returns once the traces are durable
// and readable by ID, before their posting lists are: those are written
// together with the postings of later batches (postings.go), within
// postingFlushAge, and durable then runs (if not nil). Until it has, a
// crash can lose the traces' postings, so their source must be kept
// (their Kafka offsets not committed) until durable runs. Nothing of the
// traces' spans is read once it returns (what it keeps, it has copied), so
// the indexer recycles their memory then.
func (s *Store) WriteTracesThen(ctx context.Context, traces []KeptTrace, durable func()) error {
	start := time.Now()
	nSpans, err := s.writeTraces(ctx, traces, durable)
	s.metrics.writeLatency.Observe(time.Since(start).Seconds())
	if err != nil {
		s.metrics.writeErrors.Inc()
		return err
	}
	s.metrics.tracesWritten.Add(float64(len(traces)))
	s.metrics.spansWritten.Add(float64(nSpans))
	switch n := s.postings.pending(); {
	case n >= 4*postingFlushTraces:
		// The posting loop is behind (or failing): the writer waits. The
		// traces are written and durable is registered, so a failed
		// flush is retried by the loop, not by the caller.
		if err := s.Flush(ctx); err != nil {
			s.metrics.writeErrors.Inc()
			s.logger.Warn("write posting lists", "err", err)
		}
	case n >= postingFlushTraces:
		select {
		case s.flushNow <- struct{}{}:
		default: // a flush is signalled already
		}
	}
	return nil
}

// InvalidTraceError is a write refused for what one of its traces holds (a
// span ID of the wrong length or all zero, a resource that does not
// encode): nothing of the batch was written, and writing it again fails the
// same way. The batch without that trace can be written.
type InvalidTraceError struct {
	ID  span.TraceID
	Err error
}

func (e *InvalidTraceError) Error() string { return e.Err.Error() }
func (e *InvalidTraceError) Unwrap() error { return e.Err }

func (s *Store) writeTraces(ctx context.Context, traces []KeptTrace, durable func()) (int, error) {
	p := s.getPreparer()
	// After the commit has returned: the batch's values are Badger's
	// copies by then (groupCodec.recycleValues).
	defer s.putPreparer(p)
	p.prepared = slices.Grow(p.prepared, len(traces))
	nSpans := 0
	for i := range traces {
		pt, err := p.prepare(&traces[i])
		if err != nil {
			s.lists.forget(p.lists)
			return 0, &InvalidTraceError{ID: traces[i].Trace.ID, Err: err}
		}
		nSpans += len(pt.spanIDs)
		p.prepared = append(p.prepared, pt)
	}
	p.groupValues, p.groupIDs = p.groups.seal(p.groupValues, p.groupIDs)
	// Commits are serialised: concurrent read-modify-writes of one hot
	// trace would otherwise need conflict detection and retries (Badger's
	// is off, see badgerOptions), and Badger applies writes one batch at a
	// time anyway. prepare, the CPU-heavy part, stays parallel.
	s.writeMu.Lock()
	err := s.commit(ctx, p.prepared, p, durable)
	s.writeMu.Unlock()
	if err != nil {
		// The list keys admitted for this batch may not be on disk; let a
		// later write admit them again.
		s.lists.forget(p.lists)
		return 0, err
	}
	now := time.Now()
	for _, pt := range p.prepared {
		for _, b := range pt.blobs {
			s.blobs.mark(beUint64(b.k[2:]), now)
		}
	}
	return nSpans, nil
}

// preparer prepares the traces of one batch, and holds what its commit
// builds. It interns what the batch's spans repeat (attribute values,
// services, operations), so a repeated value costs one map lookup per
// occurrence, and its posting key and list admissions are built once per
// batch rather than once per span or trace. The store pools preparers:
// reset empties one for the next batch, keeping the capacity of its maps
// and buffers, so a batch like the previous ones allocates little of this.
type preparer struct {
	s   *Store
	now time.Time

	intern   map[string]int32 // tagged key (see prepare) -> posting index, or -1
	wire     map[string]int32 // lv(key) AnyValue encoding -> posting index (see wireAttr)
	postings [][]byte         // the batch's distinct posting prefixes
	postLast []int32          // per posting: the last trace (number) that holds it
	lists    []listEntry      // list keys admitted for the batch
	// intrinsics are the postings of a (kind, service, name, status), which
	// intern maps to an index here.
	intrinsics [][4]int32
	trace      int32           // number of the trace being prepared, from 1
	high       map[string]bool // high-cardinality keys when the batch started
	// spanKeys remembers per span-attribute key what wireAttr asks before
	// it looks at a value: keyHigh, and keyNamed once its tag name is
	// listed. lastKeys are the previous span's keys in their order, and
	// attrPos the place of the current span's next key: the spans of one
	// instrumentation repeat their keys in the same order, and comparing a
	// key with the one at its place costs less than a map lookup.
	spanKeys map[string]*spanKey
	lastKeys []*spanKey
	attrPos  int

	buf, val, bodies, wbuf []byte // scratch
	stripped               tracepb.Span
	groups                 groupBuilder
	groupValues            []kv     // sealed groups, written before every trace
	groupIDs               []uint64 // per group
	resHash                map[*span.Resource]uint64
	resPostings            map[*span.Resource][]int32
	scHash                 map[*span.Scope]uint64

	// The batch's prepared traces, and the buffers their slices are parts
	// of: each trace's postings, span IDs and error flags, chunks, and
	// reasons, warnings and services, back to back.
	prepared   []preparedTrace
	tracePosts []int32
	spanIDs    []span.SpanID
	spanErr    []bool
	chunks     []chunkValue
	strs       []string
	// Scratch of prepare, for one trace at a time.
	refs    []spanRef
	entries []chunkEntry

	// Scratch of commit (under writeMu). kv holds the keys and small
	// values commit hands to Badger, back to back (appendKV).
	kv          []byte
	seqs        []uint64
	durs        []int
	durPostings map[uint16]int
	latest      map[span.TraceID]int
	sums        sumBlocks
	postLists   postingLists
}

// getPreparer returns an empty preparer for a batch.
func (s *Store) getPreparer() *preparer {
	p, ok := s.preparers.Get().(*preparer)
	if !ok {
		p = &preparer{
			s:           s,
			intern:      make(map[string]int32, 256),
			wire:        make(map[string]int32, 256),
			resHash:     map[*span.Resource]uint64{},
			resPostings: map[*span.Resource][]int32{},
			scHash:      map[*span.Scope]uint64{},
			spanKeys:    map[string]*spanKey{},
			groups:      groupBuilder{codec: s.groups},
			durPostings: map[uint16]int{},
			latest:      map[span.TraceID]int{},
			sums:        sumBlocks{codec: s.groups},
		}
	}
	p.now = time.Now()
	p.high = s.card.snapshot()
	return p
}

// putPreparer resets p and pools it. The batch's commit MUST have returned
// (or never run): its group and summary-block values go back to the
// codec's pool.
func (s *Store) putPreparer(p *preparer) {
	p.reset()
	s.preparers.Put(p)
}

// reset empties p for another batch. It drops every reference to the
// batch's spans (resources, strings aliasing their bytes) so that a pooled
// preparer holds no memory of the batch but its own buffers.
func (p *preparer) reset() {
	clear(p.intern)
	clear(p.wire)
	clear(p.resHash)
	clear(p.resPostings)
	clear(p.scHash)
	clear(p.spanKeys)
	clear(p.durPostings)
	clear(p.latest)
	p.high = nil
	p.trace, p.attrPos = 0, 0
	p.postings = emptied(p.postings)
	p.postLast = emptied(p.postLast)
	p.lists = emptied(p.lists)
	p.intrinsics = emptied(p.intrinsics)
	p.lastKeys = emptied(p.lastKeys)
	p.prepared = emptied(p.prepared)
	p.tracePosts = emptied(p.tracePosts)
	p.spanIDs = emptied(p.spanIDs)
	p.spanErr = emptied(p.spanErr)
	p.chunks = emptied(p.chunks)
	p.strs = emptied(p.strs)
	p.refs = emptied(p.refs)
	p.entries = emptied(p.entries)
	p.kv = p.kv[:0]
	p.stripped.Reset()
	p.groups.reset()
	p.groupValues = p.s.groups.recycleValues(p.groupValues)
	p.groupIDs = p.groupIDs[:0]
	p.sums.reset()
}

// emptied clears s and returns it with length 0 and its capacity.
func emptied[S ~[]E, E any](s S) S {
	clear(s)
	return s[:0]
}

func (p *preparer) addList(group string, key []byte, limit int) {
	if p.s.lists.admit(group, key, limit, p.now) {
		p.lists = append(p.lists, listEntry{group: group, key: key})
	}
}

// posting interns a posting prefix and returns its index.
func (p *preparer) posting(prefix []byte) int32 {
	p.buf = append(append(p.buf[:0], 'p'), prefix...)
	if i, ok := p.intern[string(p.buf)]; ok {
		return i
	}
	i := int32(len(p.postings))
	p.intern[string(p.buf)] = i
	p.postings = append(p.postings, prefix)
	p.postLast = append(p.postLast, 0)
	return i
}

// use adds posting i to the trace being prepared unless the trace has it.
func (p *preparer) use(i int32) {
	if i >= 0 && p.postLast[i] != p.trace {
		p.postLast[i] = p.trace
		p.tracePosts = append(p.tracePosts, i)
	}
}

// appendKV appends a key or value to p.kv with add and returns what it
// appended. Later appends never write it again (they go past it, or to a
// new array), and reset comes after the commit has returned, when Badger
// holds no reference to it (see groupCodec.recycleValues; a key is copied
// too, by Txn.modify for its map and by Txn.commitAndSend, which adds the
// version).
func (p *preparer) appendKV(add func([]byte) []byte) []byte {
	n := len(p.kv)
	p.kv = add(p.kv)
	return p.kv[n:len(p.kv):len(p.kv)]
}

// union appends to p.strs the values of add that p.strs[start:] does not
// hold, keeping first-seen order (unionStrings).
func (p *preparer) union(start int, add ...string) {
	for _, a := range add {
		if !slices.Contains(p.strs[start:], a) {
			p.strs = append(p.strs, a)
		}
	}
}

// strsFrom returns p.strs[start:] (nil when empty), with no room to append
// into the strings of the next trace.
func (p *preparer) strsFrom(start int) []string {
	if start == len(p.strs) {
		return nil
	}
	return p.strs[start:len(p.strs):len(p.strs)]
}

// tagName admits an attribute key to the tag-name list the first time the
// batch sees it.
func (p *preparer) tagName(scope byte, key string) {
	p.buf = append(append(p.buf[:0], 'n', scope), key...)
	if _, ok := p.intern[string(p.buf)]; !ok {
		p.intern[string(p.buf)] = -1
		p.addList("n", tagNameKey(scope, key), p.s.opts.MaxTagKeys)
	}
}

// attr returns the posting of one attribute (-1 for a value too long to
// index), handling its tag name and value lists the first time the batch
// sees it.
func (p *preparer) attr(scope byte, key string, value []byte) int32 {
	if len(value) > maxIndexedValue {
		p.tagName(scope, key)
		return -1
	}
	p.buf = binaryAppendLV(appendLV(append(p.buf[:0], 'a', scope), key), value)
	if i, ok := p.intern[string(p.buf)]; ok {
		return i
	}
	if p.high[key] {
		// Not indexed, so not interned either: a high-cardinality key has
		// a new value in nearly every trace. Its tag-value list stops
		// growing once it is marked.
		p.tagName(scope, key)
		return -1
	}
	tagged := string(p.buf)
	p.tagName(scope, key)
	i := p.posting(binaryAppendLV(appendLV([]byte{prefixAttrPost}, key), value))
	if p.s.lists.known(tagNameKey(scopeSpan, key)) || p.s.lists.known(tagNameKey(scopeResource, key)) {
		p.addList("v"+key, tagValueKey(key, string(value)), p.s.opts.MaxTagValuesPerKey)
	}
	p.intern[tagged] = i
	return i
}

// wireAttr is attr for a span attribute still in its wire form (an
// AnyValue's encoding), interned by those bytes: most attributes repeat
// within a batch, and a repeat then costs one map lookup, with no
// conversion of the value to its string form. Results that are not
// postings (values too long to index, high-cardinality keys) are not kept:
// such values rarely repeat.
func (p *preparer) wireAttr(key string, value []byte) int32 {
	// Values that get no posting whatever they hold are answered first:
	// the interning below would hash them and miss, for nothing. Such are
	// the values of high-cardinality keys (IDs, addresses) and strings too
	// long to index (queries, user agents): six of the ten attributes of
	// the load generator's spans.
	k := p.spanKey(key)
	if k.state&keyHigh != 0 || longWireString(value) {
		if k.state&keyNamed == 0 {
			p.tagName(scopeSpan, k.name)
			k.state |= keyNamed
		}
		return -1
	}
	p.wbuf = append(appendLV(p.wbuf[:0], key), value...)
	if i, ok := p.wire[string(p.wbuf)]; ok {
		return i
	}
	var ok bool
	if p.val, ok = appendWireAttrString(p.val[:0], value); !ok {
		return -1
	}
	i := p.attr(scopeSpan, k.name, p.val)
	if i >= 0 {
		p.wire[string(p.wbuf)] = i
	}
	return i
}

// spanKey is what wireAttr remembers of a span-attribute key.
type spanKey struct {
	name  string // a copy: the key wireAttr gets aliases a span's wire bytes
	state uint8  // keyHigh, keyNamed
}

// maxLastKeys bounds the keys remembered in order (preparer.lastKeys).
const maxLastKeys = 64

// spanKey returns the state of the current span's next attribute key.
func (p *preparer) spanKey(key string) *spanKey {
	pos := p.attrPos
	p.attrPos++
	if pos < len(p.lastKeys) && p.lastKeys[pos].name == key {
		return p.lastKeys[pos]
	}
	k, ok := p.spanKeys[key]
	if !ok {
		k = &spanKey{name: strings.Clone(key)}
		if p.high[key] {
			k.state = keyHigh
		}
		p.spanKeys[k.name] = k
	}
	switch {
	case pos < len(p.lastKeys):
		p.lastKeys[pos] = k
	case pos < maxLastKeys:
		p.lastKeys = append(p.lastKeys, k)
	}
	return k
}

// spanKey states.
const (
	keyHigh  uint8 = 1 << iota // high-cardinality when the batch started
	keyNamed                   // the batch listed its tag name
)

// longWireString reports whether v, an AnyValue's encoding, is a string
// value longer than maxIndexedValue bytes.
func longWireString(v []byte) bool {
	if len(v) <= maxIndexedValue+1 || v[0] != 0x0a { // field 1 (string_value), length-delimited
		return false
	}
	s, n := protowire.ConsumeBytes(v[1:])
	return n >= 0 && len(s) > maxIndexedValue
}

// intrinsic returns the postings of a span's service, operation, name and
// status, handling the service and operation lists the first time the
// batch sees them.
func (p *preparer) intrinsic(svc string, kind tracepb.Span_SpanKind, name, status string) [4]int32 {
	p.buf = appendLV(appendLV(append(p.buf[:0], 'o', byte(kind)), svc), name)
	p.buf = append(p.buf, status...)
	if i, ok := p.intern[string(p.buf)]; ok {
		return p.intrinsics[i]
	}
	key := string(p.buf)
	if p.addList("s", svcListKey(svc), p.s.opts.MaxServices); p.s.lists.known(svcListKey(svc)) {
		p.addList("o"+svc, opListKey(svc, kind, name), p.s.opts.MaxTagValuesPerKey)
	}
	out := [4]int32{
		p.posting(svcPosting(svc)),
		p.posting(opPosting(svc, name)),
		p.posting(namePosting(name)),
		p.posting(statusPosting(status)),
	}
	p.intern[key] = int32(len(p.intrinsics))
	p.intrinsics = append(p.intrinsics, out)
	return out
}

// prepare encodes one trace's chunks, resources, scopes and postings.
// Spans repeated within the trace are written once.
func (p *preparer) prepare(kt *KeptTrace) (preparedTrace, error) {
	s := p.s
	p.trace++
	pt := preparedTrace{id: kt.Trace.ID}
	if kt.Trace.ID.IsZero() {
		return pt, fmt.Errorf("write trace: %w", span.ErrZeroID)
	}
	from := len(p.strs)
	p.union(from, kt.Reasons...)
	pt.delta.Reasons = p.strsFrom(from)
	from = len(p.strs)
	p.union(from, kt.Warnings...)
	pt.delta.Warnings = p.strsFrom(from)
	svcStart, postStart := len(p.strs), len(p.tracePosts)

	refs := p.refs[:0]
	p.bodies = p.bodies[:0]
	var resBuf, scopeBuf [4]uint64
	doneRes, doneScope := resBuf[:0], scopeBuf[:0]
	for _, sp := range kt.Trace.Spans {
		if sp.Span == nil {
			continue
		}
		sid, err := span.SpanIDFromBytes(sp.GetSpanId())
		if err != nil {
			return pt, fmt.Errorf("write trace %s: %w", kt.Trace.ID, err)
		}
		if slices.ContainsFunc(refs, func(r spanRef) bool { return r.e.sid == sid }) {
			continue
		}
		resHash, ok := p.resHash[sp.Resource]
		if !ok {
			b, err := encodeResource(sp.Resource)
			if err != nil {
				return pt, fmt.Errorf("write trace %s: %w", kt.Trace.ID, err)
			}
			resHash = blobHash(b)
			p.resHash[sp.Resource] = resHash
			var posts []int32
			if sp.Resource != nil {
				for _, a := range sp.Resource.Resource.GetAttributes() {
					var ok bool
					if p.val, ok = appendAttrString(p.val[:0], a.GetValue()); !ok {
						continue
					}
					if a.GetKey() == "service.name" {
						// The service posting and list answer this key.
						p.tagName(scopeResource, a.GetKey())
						continue
					}
					posts = append(posts, p.attr(scopeResource, a.GetKey(), p.val))
				}
			}
			p.resPostings[sp.Resource] = posts
		}
		if !slices.Contains(doneRes, resHash) {
			doneRes = append(doneRes, resHash)
			if !s.blobs.fresh(resHash, p.now) {
				b, err := encodeResource(sp.Resource)
				if err != nil {
					return pt, fmt.Errorf("write trace %s: %w", kt.Trace.ID, err)
				}
				pt.blobs = append(pt.blobs, kv{blobKey(blobResource, resHash), b})
			}
		}
		for _, i := range p.resPostings[sp.Resource] {
			p.use(i)
		}
		scopeHash, ok := p.scHash[sp.Scope]
		if !ok {
			b, err := encodeScope(sp.Scope)
			if err != nil {
				return pt, fmt.Errorf("write trace %s: %w", kt.Trace.ID, err)
			}
			scopeHash = blobHash(b)
			p.scHash[sp.Scope] = scopeHash
		}
		if !slices.Contains(doneScope, scopeHash) {
			doneScope = append(doneScope, scopeHash)
			if !s.blobs.fresh(scopeHash, p.now) {
				b, err := encodeScope(sp.Scope)
				if err != nil {
					return pt, fmt.Errorf("write trace %s: %w", kt.Trace.ID, err)
				}
				pt.blobs = append(pt.blobs, kv{blobKey(blobScope, scopeHash), b})
			}
		}

		start := len(p.bodies)
		var copied bool
		if sp.Wire != nil {
			p.bodies, copied = appendWireBody(p.bodies, sp)
		}
		if !copied {
			if p.bodies, err = appendSpanBody(p.bodies, sp.Span, &p.stripped); err != nil {
				return pt, fmt.Errorf("write trace %s: %w", kt.Trace.ID, err)
			}
		}
		refs = append(refs, spanRef{
			e:     chunkEntry{sid: sid, res: resHash, scope: scopeHash},
			start: start,
			isErr: sp.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR,
		})
		pt.delta.addSpan(sp)
		if svc := sp.ServiceName(); svc != "" {
			p.union(svcStart, svc)
		}

		for _, i := range p.intrinsic(sp.ServiceName(), sp.GetKind(), sp.GetName(), statusString(sp.Span)) {
			p.use(i)
		}
		p.attrPos = 0
		sp.RangeDeferredAttrs(func(key string, value []byte) { p.use(p.wireAttr(key, value)) })
		for _, a := range sp.GetAttributes() {
			var ok bool
			if p.val, ok = appendAttrString(p.val[:0], a.GetValue()); ok {
				p.use(p.attr(scopeSpan, a.GetKey(), p.val))
			}
		}
	}
	p.refs = refs
	pt.delta.Services = p.strsFrom(svcStart)
	pt.postings = p.tracePosts[postStart:len(p.tracePosts):len(p.tracePosts)]

	// Bodies were appended to one buffer; slice them now that it no longer
	// moves.
	for i := range refs {
		end := len(p.bodies)
		if i+1 < len(refs) {
			end = refs[i+1].start
		}
		refs[i].e.body = p.bodies[refs[i].start:end]
	}
	slices.SortFunc(refs, func(a, b spanRef) int { return bytes.Compare(a.e.sid[:], b.e.sid[:]) })
	idStart := len(p.spanIDs)
	entries := p.entries[:0]
	for _, r := range refs {
		p.spanIDs = append(p.spanIDs, r.e.sid)
		p.spanErr = append(p.spanErr, r.isErr)
		entries = append(entries, r.e)
	}
	p.entries = entries
	pt.spanIDs = p.spanIDs[idStart:len(p.spanIDs):len(p.spanIDs)]
	pt.spanErr = p.spanErr[idStart:len(p.spanErr):len(p.spanErr)]
	chunkStart := len(p.chunks)
	for len(entries) > 0 {
		n, size := 0, 0
		for n < len(entries) && n < maxChunkSpans && (n == 0 || size+len(entries[n].body) <= maxChunkBytes) {
			size += len(entries[n].body)
			n++
		}
		id := chunkID(entries[:n])
		g, off, size := p.groups.add(func(dst []byte) []byte { return appendChunk(dst, entries[:n]) })
		p.chunks = append(p.chunks, chunkValue{id: id, group: g, off: off, n: size})
		entries = entries[n:]
	}
	pt.chunks = p.chunks[chunkStart:len(p.chunks):len(p.chunks)]
	return pt, nil
}

// spanRef is a span of the trace being prepared: its chunk entry, whose
// body starts at start in the preparer's bodies, and whether it failed.
type spanRef struct {
	e     chunkEntry
	start int
	isErr bool
}

// commit writes prepared traces, reading and merging each summary in the
// same transaction that writes it. A transaction that grows too big is
// committed and a new one continues with the entry that did not fit.
//
// The summary references come last, after the chunk groups, seq keys and
// summary blocks, so a summary on disk never counts a span that is not: a
// retry after a partial commit finds the chunks it wrote (and counts their
// spans once) or, if the reference did not make it, starts the trace afresh
// (an orphaned seq key points at a summary with another seq and search
// ignores it). The batch's postings are gathered once the commit is done
// and written by a later flush (postings.go), so a partial commit leaves
// traces that are not yet searchable, never postings of traces not yet
// stored; durable runs once they are written.
func (s *Store) commit(ctx context.Context, prepared []preparedTrace, batch *preparer, durable func()) (err error) {
	w := newTxnWriter(s.db)
	defer w.discard()
	set := func(k, v []byte) error { return w.set(k, v, s.opts.Retention) }

	// Groups first: a chunk reference on disk always finds its group.
	for _, g := range batch.groupValues {
		if err := w.set(g.k, g.v, s.groupTTL()); err != nil {
			return fmt.Errorf("write chunk groups: %w", err)
		}
	}
	chunks := s.chunkReader(w.txn)
	// Per batch posting: the seqs of the traces holding it, gathered once
	// every trace has its seq (below). The duration postings, known only
	// once summaries are merged, follow the prepared ones in
	// batch.postings.
	durPostings := batch.durPostings
	seqs := slices.Grow(batch.seqs[:0], len(prepared))[:len(prepared)]
	durs := slices.Grow(batch.durs[:0], len(prepared))[:len(prepared)]
	batch.seqs, batch.durs = seqs, durs
	// The merged summaries go into summary blocks, written once every
	// trace is merged; a trace the batch holds twice merges its second
	// part into the first's summary, which is not on disk yet.
	sums := &batch.sums
	latest := batch.latest
	for i := range prepared {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("write traces: %w", err)
		}
		pt := &prepared[i]
		var (
			merged summary
			found  bool
			err    error
		)
		chunks.txn = w.txn // the writer may have started a new transaction
		summaryKey := batch.appendKV(func(b []byte) []byte { return appendTraceKey(b, pt.id, subSummary) })
		if j, ok := latest[pt.id]; ok {
			merged, found = prepared[j].merged.clone(), true
		} else if merged, found, err = chunks.summary(summaryKey); err != nil {
			return fmt.Errorf("write trace %s: %w", pt.id, err)
		}
		var stored map[span.SpanID]bool
		if found {
			// Only a trace written before can already hold the spans.
			if stored, err = storedSpanIDs(ctx, chunks, pt.id, &merged); err != nil {
				return fmt.Errorf("write trace %s: %w", pt.id, err)
			}
			merged.merge(&pt.delta)
		} else {
			seq, err := s.allocSeq(w.txn, seqForTime(pt.delta.MinStart))
			if err != nil {
				return fmt.Errorf("write trace %s: %w", pt.id, err)
			}
			// The write's summary merged into an empty one: its counts
			// and chunks are still empty, and its lists are distinct
			// already (prepare), so merging would only copy them. merged
			// shares them; they have no room to append into.
			merged = pt.delta
			merged.Seq, merged.ChunksOnly = seq, true
		}
		for j, sid := range pt.spanIDs {
			if !stored[sid] {
				merged.SpanCount++
				if pt.spanErr[j] {
					merged.ErrorCount++
				}
			}
		}

		for _, b := range pt.blobs {
			if err := w.set(b.k, b.v, s.blobTTL()); err != nil {
				return fmt.Errorf("write trace %s: %w", pt.id, err)
			}
		}
		for _, c := range pt.chunks {
			merged.setChunk(chunkRef{id: c.id, group: batch.groupIDs[c.group], off: uint64(c.off), n: uint64(c.n)})
		}
		seq := merged.Seq
		k := batch.appendKV(func(b []byte) []byte { return appendU64(append(b, prefixSeq), seq) })
		v := batch.appendKV(func(b []byte) []byte { return append(b, pt.id[:]...) })
		if err := set(k, v); err != nil {
			return fmt.Errorf("write trace %s: %w", pt.id, err)
		}
		b := durationBucket(merged.Duration())
		d, ok := durPostings[b]
		if !ok {
			d = len(batch.postings)
			durPostings[b] = d
			batch.postings = append(batch.postings, durPosting(b))
		}
		seqs[i], durs[i] = merged.Seq, d
		pt.merged = merged
		latest[pt.id] = i
		sums.add(&pt.merged)
	}
	// Blocks before the references: a reference on disk always finds its
	// block.
	sums.seal()
	for _, b := range sums.values {
		if err := w.set(b.k, b.v, s.groupTTL()); err != nil {
			return fmt.Errorf("write summary blocks: %w", err)
		}
	}
	for i := range prepared {
		k := batch.appendKV(func(b []byte) []byte { return appendTraceKey(b, prepared[i].id, subSummary) })
		v := batch.appendKV(func(b []byte) []byte { return sums.appendRef(b, i) })
		if err := set(k, v); err != nil {
			return fmt.Errorf("write trace %s: %w", prepared[i].id, err)
		}
	}
	frags := batch.postLists.gather(prepared, seqs, durs, len(batch.postings))
	for _, l := range batch.lists {
		if err := set(l.key, nil); err != nil {
			return fmt.Errorf("write lists: %w", err)
		}
	}

	// Attribute postings of high-cardinality keys are dropped here, under
	// writeMu, so the counting needs no lock of its own per posting.
	// (Duration postings are not attribute postings.)
	index, done := s.card.indexer()
	for i, p := range batch.postings {
		if p[0] != prefixAttrPost || len(frags[i]) == 0 {
			continue
		}
		key, rest, ok1 := readLVBytes(p[1:])
		value, _, ok2 := readLVBytes(rest)
		if ok1 && ok2 && !index(key, value) {
			frags[i] = nil
		}
	}
	done()
	now := time.Now()
	marks := s.card.due(now)
	for _, k := range marks {
		if err := w.set(highCardKey(k), nil, s.blobTTL()); err != nil {
			return fmt.Errorf("mark high-cardinality key %q: %w", k, err)
		}
	}
	if err := w.commit(); err != nil {
		return fmt.Errorf("commit batch: %w", err)
	}
	s.card.written(marks, now)
	// The posting fragments are written with those of later batches
	// (postings.go).
	s.postings.add(batch.postings, frags, len(prepared), durable)
	return nil
}

// postingLists gathers a batch's posting lists (gather), in buffers reused
// from batch to batch.
type postingLists struct {
	order  []int32
	counts []int
	all    []uint64
	frags  [][]uint64
}

// gather lists, per posting, the seqs of the prepared traces that hold it
// (their own postings, and durs[i] for trace i), newest first. The traces
// are visited in descending seq order, so every list comes out sorted
// without sorting it: there are far fewer traces in a batch than entries
// in its postings. A trace in the batch twice has its seq twice, side by
// side. The lists are valid until the next gather.
func (l *postingLists) gather(prepared []preparedTrace, seqs []uint64, durs []int, npostings int) [][]uint64 {
	order := l.order[:0]
	for i := range prepared {
		order = append(order, int32(i))
	}
	slices.SortFunc(order, func(a, b int32) int { return cmp.Compare(seqs[b], seqs[a]) })
	// The lists share one array, each sized by a count first.
	counts, total := slices.Grow(l.counts[:0], npostings)[:npostings], len(prepared)
	clear(counts)
	for i := range prepared {
		counts[durs[i]]++
		for _, p := range prepared[i].postings {
			counts[p]++
		}
		total += len(prepared[i].postings)
	}
	all, off := slices.Grow(l.all[:0], total)[:total], 0
	frags := slices.Grow(l.frags[:0], npostings)[:npostings]
	for p, n := range counts {
		frags[p] = all[off : off : off+n]
		off += n
	}
	for _, i := range order {
		frags[durs[i]] = append(frags[durs[i]], seqs[i])
		for _, p := range prepared[i].postings {
			frags[p] = append(frags[p], seqs[i])
		}
	}
	l.order, l.counts, l.all, l.frags = order, counts, all, frags
	return frags
}

// fragmentID names a posting fragment by its content.
func fragmentID(val []byte) uint64 {
	h := fnv.New64a()
	_, _ = h.Write(val)
	return h.Sum64()
}

// storedSpanIDs returns the IDs of the stored spans of a trace, parsing no
// span.
func storedSpanIDs(ctx context.Context, chunks *chunkReader, id span.TraceID, sum *summary) (map[span.SpanID]bool, error) {
	out := map[span.SpanID]bool{}
	err := walkTraceChunks(ctx, chunks, id, sum, func(e chunkEntry) error {
		out[e.sid] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("check stored spans: %w", err)
	}
	return out, nil
}

// walkTraceChunks calls fn for every span of every chunk of a trace: the
// chunks its summary places, then, for a trace first written by an earlier
// version, the chunks under its chunk keys.
func walkTraceChunks(ctx context.Context, chunks *chunkReader, id span.TraceID, sum *summary, fn func(chunkEntry) error) error {
	for _, c := range sum.Chunks {
		plain, err := chunks.ref(c)
		if err != nil {
			return err
		}
		if err := walkPlainChunk(plain, fn); err != nil {
			return err
		}
	}
	if sum.ChunksOnly {
		return nil
	}
	it := chunks.txn.NewIterator(badger.IteratorOptions{Prefix: chunkPrefix(sum.Seq, id), PrefetchValues: true, PrefetchSize: 16})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := it.Item().Value(func(v []byte) error { return walkChunk(v, chunks, fn) }); err != nil {
			return err
		}
	}
	return nil
}

// maxSeqProbes bounds the search for a free seq: 16 milliseconds' worth.
// More kept traces than that starting within a few milliseconds of each
// other (or all with no timestamps) fail the write.
const maxSeqProbes = 1 << 16

// seqForTime is the lowest seq of a start time in Unix nanoseconds.
func seqForTime(ns uint64) uint64 { return ns / uint64(time.Millisecond) << 12 }

// allocSeq returns a free seq for a trace starting at base, starting after
// the last seq this process handed out for the same millisecond. Above
// seqFloor that is free for certain and nothing is read; below, freeSeq
// probes the store. A commit that fails leaves the hint ahead of the
// store, which only skips a few free values.
func (s *Store) allocSeq(txn *badger.Txn, base uint64) (uint64, error) {
	if len(s.seqHint) > 1<<16 {
		// Forget the hints; seqs they covered are probed from now on. The
		// map keeps its room for the next ones.
		for b, h := range s.seqHint {
			s.seqFloor = max(s.seqFloor, b, h)
		}
		clear(s.seqHint)
	}
	if s.seqHint == nil {
		s.seqHint = map[uint64]uint64{}
	}
	from := base
	if h, ok := s.seqHint[base]; ok {
		from = h + 1
	}
	if base > s.seqFloor && from < base+maxSeqProbes {
		s.seqHint[base] = from
		return from, nil
	}
	seq, err := freeSeq(txn, from, base+maxSeqProbes)
	if err == nil {
		s.seqHint[base] = seq
	}
	return seq, err
}

// freeSeq returns the first seq from start on that no trace holds. Commits
// are serialised (writeMu), so no other writer can take it before this
// transaction commits.
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

// groupTTL outlives the summaries written after the group (Badger's TTL
// has whole-second resolution, and a batch's commit can take a moment):
// by 1% of the retention, at least 2 seconds.
func (s *Store) groupTTL() time.Duration {
	if s.opts.Retention == 0 {
		return 0
	}
	return s.opts.Retention + max(2*time.Second, s.opts.Retention/100)
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
