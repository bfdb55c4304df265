package span

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// TraceBatch is every accepted span of one trace from one export request,
// encoded as an OTLP TracesData (the Kafka record value; ID is the key).
type TraceBatch struct {
	ID    TraceID
	Spans int
	Data  []byte
}

// SplitResult is the outcome of splitting one export request by trace ID.
type SplitResult struct {
	// Batches holds one TracesData per trace ID, in order of the trace ID's
	// first appearance in the request.
	Batches []TraceBatch
	// Spans is the number of spans accepted (the sum of Batches[i].Spans).
	Spans int
	// Rejected is the number of spans dropped for an invalid trace or span ID.
	Rejected int
	// RejectReason describes the first few rejected spans, for the
	// partial-success message returned to the client; "" when none.
	RejectReason string
	// Repaired is the number of accepted spans whose own strings, or whose
	// resource's or scope's strings, had invalid UTF-8 replaced by U+FFFD.
	Repaired int

	// buf is the allocation every Batches[i].Data shares; SplitInto reuses it.
	buf []byte
}

// maxReasons bounds how many rejections RejectReason spells out, so one bad
// client cannot make the collector format thousands of messages per request.
const maxReasons = 3

// header is the part of a ResourceSpans or ScopeSpans that is copied into every
// batch: all its fields except the repeated children, as raw byte segments.
type header struct {
	segStart, segEnd int32 // range in Splitter.resSegs or scopeSegs
	size             int
	repaired         bool
	res              int32 // for scopes: the owning resource
}

type spanRec struct {
	data     []byte
	scope    int32
	next     int32 // next span of the same batch, -1 at the end
	repaired bool
}

type batchRec struct {
	id         TraceID
	head, tail int32
	spans      int
	size       int
	groupStart int32 // range in Splitter.groups
	groupEnd   int32
}

// group is a run of a batch's spans under one scope; resLen is set (>0) only on
// the first group of each resource run and holds that ResourceSpans' length.
type group struct {
	scope    int32
	first    int32 // first span of the run
	n        int32
	scopeLen int
	resLen   int // >0 only on the first group of a resource
}

// Splitter splits OTLP trace export requests by trace ID without decoding
// spans into Go structs: it walks the protobuf wire format, validates each
// span's IDs and strings, and copies spans, resources and scopes as raw bytes.
// Its scratch space is reused between calls; a Splitter is not safe for
// concurrent use (pool them, one per goroutine). The walk is shared with
// LogSplitter: a layout says which messages nest and how records are keyed.
type Splitter struct {
	byID     map[TraceID]int32
	rejected int
	batches  []batchRec
	spans    []spanRec
	// Resource and scope header segments live in separate pools because a
	// scope's header is built while its resource's header is still open.
	resSegs   [][]byte
	scopeSegs [][]byte
	resources []header
	scopes    []header
	groups    []group
	reasons   []string
}

// NewSplitter returns an empty Splitter. The zero Splitter is also ready to use.
func NewSplitter() *Splitter { return &Splitter{} }

// SplitTraces is Splitter.Split with a fresh Splitter.
func SplitTraces(req []byte) (SplitResult, error) {
	var s Splitter
	return s.Split(req)
}

// Reset drops references to the previous request while keeping capacity.
func (s *Splitter) Reset() {
	if s.byID == nil {
		s.byID = make(map[TraceID]int32)
	}
	clear(s.byID)
	s.rejected = 0
	s.batches = s.batches[:0]
	clear(s.spans) // release the previous request's bytes
	s.spans = s.spans[:0]
	clear(s.resSegs)
	s.resSegs = s.resSegs[:0]
	clear(s.scopeSegs)
	s.scopeSegs = s.scopeSegs[:0]
	s.resources = s.resources[:0]
	s.scopes = s.scopes[:0]
	s.groups = s.groups[:0]
	s.reasons = s.reasons[:0]
}

// Split splits req, an encoded ExportTraceServiceRequest (or TracesData), into
// one TracesData per trace ID. Spans with an invalid trace or span ID are
// counted in Rejected and left out; invalid UTF-8 strings are repaired.
// Structurally malformed input returns an error wrapping ErrMalformed and no
// result. The returned Data slices share one allocation and do not alias req.
func (s *Splitter) Split(req []byte) (SplitResult, error) {
	var res SplitResult
	if err := s.SplitInto(&res, req); err != nil {
		return SplitResult{}, err
	}
	return res, nil
}

// maxReusedBuf bounds the data buffer SplitInto keeps for reuse, so one huge
// request does not pin its size in a pool for good.
const maxReusedBuf = 4 << 20

// SplitInto is Split writing its result into res, reusing the capacity of
// res.Batches and of the buffer behind their Data left by an earlier
// SplitInto into the same res, so a caller that recycles results (a
// sync.Pool of them) splits without allocating. The caller must no longer
// reference any Data of the earlier result. On error res holds no batches.
func (s *Splitter) SplitInto(res *SplitResult, req []byte) error {
	s.Reset()
	defer s.Reset() // drop references to req, whatever the outcome
	batches, buf := res.Batches[:0], res.buf
	clear(batches[:cap(batches)]) // no stale Data from the earlier result
	if cap(buf) > maxReusedBuf {
		buf = nil
	}
	*res = SplitResult{Batches: batches, buf: buf}
	if err := s.walk(req, &traceLayout); err != nil {
		return err
	}
	if cap(res.Batches) < len(s.batches) {
		res.Batches = make([]TraceBatch, 0, len(s.batches))
	}
	res.buf = s.buildInto(res.buf[:0], true, func(id TraceID, n int, data []byte) {
		res.Batches = append(res.Batches, TraceBatch{ID: id, Spans: n, Data: data})
		res.Spans += n
	})
	res.Rejected, res.RejectReason, res.Repaired = s.rejected, s.rejectReason(), s.repaired()
	return nil
}

// layout is what the splitter needs to know about one signal's OTLP nesting
// (Data → Resource* → Scope* → records, the repeated children being field 1,
// then 2, then 2 for every signal) and how a record is keyed.
type layout struct {
	data, resource, scope, record msgType
	// traceField and spanField are the record's trace_id and span_id.
	traceField, spanField protowire.Number
	// noun names a record in reject reasons and errors ("span").
	noun string
	// key validates a record's raw IDs and returns its batch key. An error
	// rejects the record; the zero TraceID is a valid key only for signals
	// whose records may lack a trace (logs).
	key func(traceID, spanID []byte) (TraceID, error)
}

var traceLayout = layout{
	data: mTracesData, resource: mResourceSpans, scope: mScopeSpans, record: mSpan,
	traceField: 1, spanField: 2,
	noun: "span",
	key:  spanKey,
}

// spanKey accepts a span only with a valid trace and span ID.
func spanKey(traceID, spanID []byte) (TraceID, error) {
	tid, err := TraceIDFromBytes(traceID)
	if err == nil {
		_, err = SpanIDFromBytes(spanID)
	}
	return tid, err
}

// walk files every record of req under its batch.
func (s *Splitter) walk(req []byte, lay *layout) error {
	ri := 0
	for b := req; len(b) > 0; {
		_, f, val, n := next(b, lay.data)
		if n < 0 {
			return fieldErr(b, lay.data)
		}
		b = b[n:]
		if f.kind != kMessage { // unknown top-level field: nothing to route it by
			continue
		}
		if err := s.resourceRecords(val, ri, lay); err != nil {
			return fmt.Errorf("resource %d: %w", ri, err)
		}
		ri++
	}
	return nil
}

// rejectReason spells out the first rejections and counts the rest.
func (s *Splitter) rejectReason() string {
	if s.rejected > len(s.reasons) {
		s.reasons = append(s.reasons, fmt.Sprintf("and %d more", s.rejected-len(s.reasons)))
	}
	return strings.Join(s.reasons, "; ")
}

// repaired counts accepted records whose own strings, or whose resource's or
// scope's strings, were repaired.
func (s *Splitter) repaired() int {
	n := 0
	for i := range s.spans {
		sp := &s.spans[i]
		sc := &s.scopes[sp.scope]
		if sp.repaired || sc.repaired || s.resources[sc.res].repaired {
			n++
		}
	}
	return n
}

// addSeg records raw as the next segment of the header being built, merging it
// into the previous segment when the two are adjacent in memory.
func addSeg(pool *[][]byte, h *header, raw []byte, adjacent bool) {
	h.size += len(raw)
	if adjacent && h.segEnd > h.segStart {
		last := &(*pool)[h.segEnd-1]
		*last = (*last)[:len(*last)+len(raw)]
		return
	}
	*pool = append(*pool, raw)
	h.segEnd = int32(len(*pool))
}

// headerField adds one non-child field of a ResourceSpans or ScopeSpans to h,
// repairing it first if it carries invalid UTF-8. rawEnd tracks where the last
// raw segment ended in b so adjacent fields share one segment.
func headerField(pool *[][]byte, h *header, b []byte, off, n int, num protowire.Number, f field, val []byte, depth int, rawEnd *int) error {
	bad := false
	switch f.kind {
	case kString:
		bad = !validUTF8(val)
	case kMessage:
		var err error
		if bad, err = scan(val, f.msg, depth); err != nil {
			return err
		}
	}
	if !bad {
		addSeg(pool, h, b[off:off+n], *rawEnd == off)
		*rawEnd = off + n
		return nil
	}
	var fixed []byte
	if f.kind == kString {
		fixed = bytes.ToValidUTF8(val, []byte("\uFFFD"))
	} else {
		var err error
		if fixed, _, err = repair(make([]byte, 0, len(val)+8), val, f.msg, depth); err != nil {
			return err
		}
	}
	seg := protowire.AppendTag(make([]byte, 0, len(fixed)+12), num, protowire.BytesType)
	seg = protowire.AppendBytes(seg, fixed)
	addSeg(pool, h, seg, false)
	h.repaired = true
	*rawEnd = -1
	return nil
}

// resourceRecords walks one ResourceSpans (ResourceLogs).
func (s *Splitter) resourceRecords(b []byte, ri int, lay *layout) error {
	h := header{segStart: int32(len(s.resSegs)), segEnd: int32(len(s.resSegs))}
	rIdx := int32(len(s.resources))
	s.resources = append(s.resources, h) // placeholder; scopes refer to its index
	spanIdx := 0
	rawEnd := -1
	for off := 0; off < len(b); {
		num, f, val, n := next(b[off:], lay.resource)
		if n < 0 {
			return fieldErr(b[off:], lay.resource)
		}
		if num == 2 && f.kind == kMessage {
			if err := s.scopeRecords(val, rIdx, ri, &spanIdx, lay); err != nil {
				return fmt.Errorf("%s: %w", fieldName(lay.resource, 2), err)
			}
		} else if err := headerField(&s.resSegs, &h, b, off, n, num, f, val, 2, &rawEnd); err != nil {
			return err
		}
		off += n
	}
	s.resources[rIdx] = h
	return nil
}

// scopeRecords walks one ScopeSpans (ScopeLogs).
func (s *Splitter) scopeRecords(b []byte, rIdx int32, ri int, spanIdx *int, lay *layout) error {
	h := header{segStart: int32(len(s.scopeSegs)), segEnd: int32(len(s.scopeSegs)), res: rIdx}
	sIdx := int32(len(s.scopes))
	s.scopes = append(s.scopes, h)
	rawEnd := -1
	for off := 0; off < len(b); {
		num, f, val, n := next(b[off:], lay.scope)
		if n < 0 {
			return fieldErr(b[off:], lay.scope)
		}
		if num == 2 && f.kind == kMessage {
			if err := s.record(val, sIdx, ri, *spanIdx, lay); err != nil {
				return fmt.Errorf("%s %d: %w", lay.noun, *spanIdx, err)
			}
			*spanIdx++
		} else if err := headerField(&s.scopeSegs, &h, b, off, n, num, f, val, 3, &rawEnd); err != nil {
			return err
		}
		off += n
	}
	s.scopes[sIdx] = h
	return nil
}

// record validates one encoded Span (LogRecord) and files it under its
// trace's batch.
func (s *Splitter) record(b []byte, sIdx int32, ri, spanIdx int, lay *layout) error {
	var traceID, spanID []byte
	badUTF8 := false
	tags := &oneByteTags[lay.record]
	for p := b; len(p) > 0; {
		var (
			num protowire.Number
			f   field
			val []byte
			n   = -1
		)
		// Inline fast path for the usual field: a one-byte tag of a known
		// field with its schema's wire type, a one-byte length; it decodes
		// exactly what next would. Anything else goes to next.
		if len(p) >= 2 && p[0] < 0x80 {
			if f = tags[p[0]]; f.kind != kUnknown {
				num = protowire.Number(p[0] >> 3)
				switch f.kind {
				case kBytes, kString, kMessage:
					if l := int(p[1]); l < 0x80 && l+2 <= len(p) {
						val, n = p[2:2+l], 2+l
					}
				case kVarint:
					if p[1] < 0x80 {
						val, n = p[1:2], 2
					}
				case kFixed64:
					if len(p) >= 9 {
						val, n = p[1:9], 9
					}
				case kFixed32:
					if len(p) >= 5 {
						val, n = p[1:5], 5
					}
				}
			}
		}
		if n < 0 {
			if num, f, val, n = next(p, lay.record); n < 0 {
				return fieldErr(p, lay.record)
			}
		}
		p = p[n:]
		switch f.kind {
		case kBytes:
			// A repeated singular field keeps its last value, as in proto.Unmarshal.
			switch num {
			case lay.traceField:
				traceID = val
			case lay.spanField:
				spanID = val
			}
		case kString:
			if !validUTF8(val) {
				badUTF8 = true
			}
		case kMessage:
			if f.msg == mKeyValue {
				if bad, ok := scanAttr(val); ok {
					badUTF8 = badUTF8 || bad
					continue
				}
			}
			bad, err := scanMsg(val, f.msg, 4)
			if err != nil {
				return fmt.Errorf("%s.%s: %w", schemas[lay.record].name, fieldName(lay.record, num), err)
			}
			badUTF8 = badUTF8 || bad
		}
	}
	tid, err := lay.key(traceID, spanID)
	if err != nil {
		s.rejected++
		if len(s.reasons) < maxReasons {
			s.reasons = append(s.reasons, fmt.Sprintf("%s %d of resource %d: %v", lay.noun, spanIdx, ri, err))
		}
		return nil
	}
	if badUTF8 {
		fixed, _, err := repair(make([]byte, 0, len(b)+8), b, lay.record, 3)
		if err != nil {
			return err
		}
		b = fixed
	}
	bi, ok := s.byID[tid]
	if !ok {
		bi = int32(len(s.batches))
		s.byID[tid] = bi
		s.batches = append(s.batches, batchRec{id: tid, head: -1, tail: -1})
	}
	si := int32(len(s.spans))
	s.spans = append(s.spans, spanRec{data: b, scope: sIdx, next: -1, repaired: badUTF8})
	bt := &s.batches[bi]
	if bt.tail >= 0 {
		s.spans[bt.tail].next = si
	} else {
		bt.head = si
	}
	bt.tail = si
	bt.spans++
	return nil
}

// oneByteTags maps, per message type, every one-byte tag of a known field
// written with its schema's wire type to that field (kUnknown for all other
// tag bytes), so record's fast path needs one table load per field.
var oneByteTags = func() (out [numMsgTypes][0x80]field) {
	for t := range out {
		for tag := range out[t] {
			num, typ := protowire.Number(tag>>3), protowire.Type(tag&7)
			if num < protowire.MinValidNumber || int(num) >= len(fastSchemas[t]) {
				continue
			}
			if f := fastSchemas[t][num]; f.kind != kUnknown && wireTypes[f.kind] == typ {
				out[t][tag] = f
			}
		}
	}
	return out
}()

// validUTF8 is utf8.Valid with the all-ASCII case (nearly every OTLP string)
// decided inline: the high bits of the string are OR-ed together a word at a
// time, the last word overlapping the one before so that no byte-by-byte
// tail loop is needed. A span has some twenty short strings, and the calls
// into utf8.Valid, with their tail loops, were a measurable share of the split.
func validUTF8(b []byte) bool {
	n := len(b)
	var hi uint64
	switch {
	case n >= 8:
		for i := 0; i+8 <= n; i += 8 {
			hi |= binary.LittleEndian.Uint64(b[i:])
		}
		hi |= binary.LittleEndian.Uint64(b[n-8:])
	case n >= 4:
		hi = uint64(binary.LittleEndian.Uint32(b) | binary.LittleEndian.Uint32(b[n-4:]))
	default:
		for _, c := range b {
			hi |= uint64(c)
		}
	}
	return hi&0x8080808080808080 == 0 || utf8.Valid(b)
}

// scanAttr checks an encoded KeyValue of the common shape — a key and a
// scalar AnyValue (string, bool, int, double), tags of one byte, lengths of
// one or two — and reports whether one of its strings is invalid UTF-8. It
// returns ok false for anything else, which the caller hands to the general
// scan; it never rejects input itself.
func scanAttr(b []byte) (badUTF8, ok bool) {
	for p := b; len(p) > 0; {
		tag := p[0]
		if tag != 0x0a && tag != 0x12 {
			return false, false
		}
		l, n := shortLen(p[1:])
		if n == 0 || l > len(p)-1-n {
			return false, false
		}
		v := p[1+n : 1+n+l]
		p = p[1+n+l:]
		if tag == 0x0a { // key
			badUTF8 = badUTF8 || !validUTF8(v)
			continue
		}
		if len(v) == 0 { // empty AnyValue
			continue
		}
		switch v[0] {
		case 0x0a: // string_value
			sl, sn := shortLen(v[1:])
			if sn == 0 || 1+sn+sl != len(v) {
				return false, false
			}
			badUTF8 = badUTF8 || !validUTF8(v[1+sn:])
		case 0x10, 0x18: // bool_value, int_value
			if _, m := protowire.ConsumeVarint(v[1:]); m <= 0 || m+1 != len(v) {
				return false, false
			}
		case 0x21: // double_value
			if len(v) != 9 {
				return false, false
			}
		default:
			return false, false
		}
	}
	return badUTF8, true
}

// shortLen decodes a length varint of one or two bytes; n is 0 otherwise.
func shortLen(p []byte) (l, n int) {
	switch {
	case len(p) >= 1 && p[0] < 0x80:
		return int(p[0]), 1
	case len(p) >= 2 && p[1] < 0x80:
		return int(p[0]&0x7f) | int(p[1])<<7, 2
	}
	return 0, 0
}

// fieldLen is the encoded size of a length-delimited field with a one-byte tag
// (every field the splitter writes has a number below 16).
func fieldLen(n int) int { return 1 + protowire.SizeVarint(uint64(n)) + n }

// build sizes every batch, allocates one buffer for all of them and writes
// each TracesData (LogsData): per resource run one ResourceSpans, per scope
// run one ScopeSpans, headers first and then the children. It hands each
// batch to emit in order of first appearance.
func (s *Splitter) build(emit func(id TraceID, records int, data []byte)) {
	s.buildInto(nil, false, emit)
}

// buildInto is build writing into arena's spare capacity when it is large
// enough, a fresh allocation otherwise: exactly sized, or with slack when
// the buffer is kept for reuse, so that requests a little bigger than the
// last do not each reallocate. It returns the buffer written.
func (s *Splitter) buildInto(arena []byte, reuse bool, emit func(id TraceID, records int, data []byte)) []byte {
	total := 0
	for bi := range s.batches {
		bt := &s.batches[bi]
		bt.groupStart = int32(len(s.groups))
		// Spans are linked in request order and scope indexes grow with it, so
		// a change of scope index starts a new ScopeSpans run.
		curScope := int32(-1)
		for si := bt.head; si >= 0; si = s.spans[si].next {
			sp := &s.spans[si]
			if sp.scope != curScope {
				curScope = sp.scope
				s.groups = append(s.groups, group{scope: sp.scope, first: si, scopeLen: s.scopes[sp.scope].size})
			}
			g := &s.groups[len(s.groups)-1]
			g.n++
			g.scopeLen += fieldLen(len(sp.data))
		}
		bt.groupEnd = int32(len(s.groups))
		// A run of groups under one resource becomes one ResourceSpans; its
		// length is stored on the run's first group.
		for gi := bt.groupStart; gi < bt.groupEnd; {
			r := s.scopes[s.groups[gi].scope].res
			first := gi
			resLen := s.resources[r].size
			for ; gi < bt.groupEnd && s.scopes[s.groups[gi].scope].res == r; gi++ {
				resLen += fieldLen(s.groups[gi].scopeLen)
			}
			s.groups[first].resLen = resLen
			bt.size += fieldLen(resLen)
		}
		total += bt.size
	}

	if cap(arena)-len(arena) < total {
		if reuse {
			arena = make([]byte, 0, total+total/8)
		} else {
			arena = make([]byte, 0, total)
		}
	}
	for bi := range s.batches {
		bt := &s.batches[bi]
		start := len(arena)
		for gi := bt.groupStart; gi < bt.groupEnd; gi++ {
			g := &s.groups[gi]
			sc := &s.scopes[g.scope]
			if g.resLen > 0 {
				arena = protowire.AppendTag(arena, 1, protowire.BytesType)
				arena = protowire.AppendVarint(arena, uint64(g.resLen))
				arena = appendSegs(arena, s.resSegs, &s.resources[sc.res])
			}
			arena = protowire.AppendTag(arena, 2, protowire.BytesType)
			arena = protowire.AppendVarint(arena, uint64(g.scopeLen))
			arena = appendSegs(arena, s.scopeSegs, sc)
			for si, k := g.first, int32(0); k < g.n; si, k = s.spans[si].next, k+1 {
				arena = protowire.AppendTag(arena, 2, protowire.BytesType)
				arena = protowire.AppendBytes(arena, s.spans[si].data)
			}
		}
		emit(bt.id, bt.spans, arena[start:len(arena):len(arena)])
	}
	return arena
}

func appendSegs(dst []byte, pool [][]byte, h *header) []byte {
	for _, seg := range pool[h.segStart:h.segEnd] {
		dst = append(dst, seg...)
	}
	return dst
}
