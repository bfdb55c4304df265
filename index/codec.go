package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/threadline/threadline/span"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// ErrCorrupt reports a stored value that does not decode. It is returned
// wrapped with the key that held it; a corrupt value never panics.
var ErrCorrupt = errors.New("corrupt stored value")

// valueVersion is the first byte of every span and summary value, so a
// format change (or garbage) is detected instead of misparsed.
const valueVersion byte = 1

// appendLV appends a uvarint length and the bytes of s. Length-prefixing
// (rather than separators) keeps prefixes exact: the posting prefix for
// key "a" can never match entries of key "ab", whatever bytes they hold.
func appendLV(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// readLV reads what appendLV wrote and returns the rest.
func readLV(b []byte) (string, []byte, bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || uint64(len(b)-w) < n {
		return "", nil, false
	}
	return string(b[w : w+int(n)]), b[w+int(n):], true
}

// binaryAppendLV is appendLV for a byte slice.
func binaryAppendLV(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// readLVBytes is readLV without copying; the result aliases b.
func readLVBytes(b []byte) ([]byte, []byte, bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || uint64(len(b)-w) < n {
		return nil, nil, false
	}
	return b[w : w+int(n)], b[w+int(n):], true
}

func beUint64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

func appendU64(dst []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(dst, v) }

// clampU64 maps a Unix-nano timestamp or duration to an unsigned key part,
// clamping negatives (bad clocks) to 0 so byte order stays numeric order.
func clampU64(v int64) uint64 {
	if v < 0 {
		return 0
	}
	return uint64(v)
}

// blobHash names a resource or scope within a trace. 64 bits of FNV-1a make
// a collision between the handful of resources of one trace negligible.
func blobHash(b []byte) uint64 {
	h := fnv.New64a()
	_, _ = h.Write(b)
	return h.Sum64()
}

var deterministic = proto.MarshalOptions{Deterministic: true}

// encodeResource marshals a resource with its schema URL as an OTLP
// ResourceSpans without scope spans.
func encodeResource(r *span.Resource) ([]byte, error) {
	if r != nil && r.Encoded != nil {
		return appendEncoded(r.Encoded, r.SchemaURL), nil
	}
	rs := &tracepb.ResourceSpans{}
	if r != nil {
		rs.Resource, rs.SchemaUrl = r.Resource, r.SchemaURL
	}
	b, err := deterministic.Marshal(rs)
	if err != nil {
		return nil, fmt.Errorf("marshal resource: %w", err)
	}
	return b, nil
}

// appendEncoded frames a resource or scope as it was received the way
// encodeResource and encodeScope frame a decoded one: ResourceSpans and
// ScopeSpans both hold it in field 1 and the schema URL in field 3. Bytes
// from one SDK repeat exactly, so the blob hash still dedupes them.
func appendEncoded(msg []byte, schemaURL string) []byte {
	b := make([]byte, 0, len(msg)+len(schemaURL)+8)
	b = protowire.AppendBytes(protowire.AppendTag(b, 1, protowire.BytesType), msg)
	if schemaURL != "" {
		b = protowire.AppendString(protowire.AppendTag(b, 3, protowire.BytesType), schemaURL)
	}
	return b
}

func decodeResource(b []byte) (*span.Resource, error) {
	var rs tracepb.ResourceSpans
	if err := proto.Unmarshal(b, &rs); err != nil {
		return nil, fmt.Errorf("resource: %w: %w", ErrCorrupt, err)
	}
	return &span.Resource{Resource: rs.Resource, SchemaURL: rs.SchemaUrl}, nil
}

// encodeScope marshals a scope with its schema URL as an OTLP ScopeSpans
// without spans.
func encodeScope(s *span.Scope) ([]byte, error) {
	if s != nil && s.Encoded != nil {
		return appendEncoded(s.Encoded, s.SchemaURL), nil
	}
	ss := &tracepb.ScopeSpans{}
	if s != nil {
		ss.Scope, ss.SchemaUrl = s.Scope, s.SchemaURL
	}
	b, err := deterministic.Marshal(ss)
	if err != nil {
		return nil, fmt.Errorf("marshal scope: %w", err)
	}
	return b, nil
}

func decodeScope(b []byte) (*span.Scope, error) {
	var ss tracepb.ScopeSpans
	if err := proto.Unmarshal(b, &ss); err != nil {
		return nil, fmt.Errorf("scope: %w: %w", ErrCorrupt, err)
	}
	return &span.Scope{Scope: ss.Scope, SchemaURL: ss.SchemaUrl}, nil
}

// spanMarshal needs no Deterministic flag: spans hold no maps, so the
// encoding of equal spans is already byte-identical.
var spanMarshal = proto.MarshalOptions{}

// appendSpanBody appends the OTLP encoding of sp without trace_id and
// span_id (both are in the chunk key and entry), with the fast encoder
// when it can (spanenc.go), else with protobuf-go, marshalling stripped,
// scratch reused across calls.
func appendSpanBody(dst []byte, sp, stripped *tracepb.Span) ([]byte, error) {
	if out, err := fastAppendSpanBody(dst, sp); err == nil {
		return out, nil
	}
	stripped.TraceState = sp.TraceState
	stripped.ParentSpanId = sp.ParentSpanId
	stripped.Flags = sp.Flags
	stripped.Name = sp.Name
	stripped.Kind = sp.Kind
	stripped.StartTimeUnixNano = sp.StartTimeUnixNano
	stripped.EndTimeUnixNano = sp.EndTimeUnixNano
	stripped.Attributes = sp.Attributes
	stripped.DroppedAttributesCount = sp.DroppedAttributesCount
	stripped.Events = sp.Events
	stripped.DroppedEventsCount = sp.DroppedEventsCount
	stripped.Links = sp.Links
	stripped.DroppedLinksCount = sp.DroppedLinksCount
	stripped.Status = sp.Status
	stripped.ProtoReflect().SetUnknown(sp.ProtoReflect().GetUnknown())
	dst, err := spanMarshal.MarshalAppend(dst, stripped)
	if err != nil {
		return nil, fmt.Errorf("marshal span: %w", err)
	}
	return dst, nil
}

// chunkEntry is one span of a chunk: its ID, the hashes of its resource
// and scope, and its encoded body.
type chunkEntry struct {
	sid        span.SpanID
	res, scope uint64
	body       []byte
}

// appendChunk encodes a chunk value: version, the distinct blob hashes the
// spans name, then per span its ID, blob indexes and length-prefixed body.
// Naming each hash once keeps 16 bytes per span out of the value.
func appendChunk(dst []byte, entries []chunkEntry) []byte {
	// The blob hashes in first-seen order; a span's indexes are the places
	// of its hashes (a chunk names a few).
	var buf [8]uint64
	hashes := buf[:0]
	for _, e := range entries {
		if !slices.Contains(hashes, e.res) {
			hashes = append(hashes, e.res)
		}
		if !slices.Contains(hashes, e.scope) {
			hashes = append(hashes, e.scope)
		}
	}
	dst = append(dst, valueVersion)
	dst = binary.AppendUvarint(dst, uint64(len(hashes)))
	for _, h := range hashes {
		dst = appendU64(dst, h)
	}
	dst = binary.AppendUvarint(dst, uint64(len(entries)))
	for _, e := range entries {
		dst = append(dst, e.sid[:]...)
		dst = binary.AppendUvarint(dst, uint64(slices.Index(hashes, e.res)))
		dst = binary.AppendUvarint(dst, uint64(slices.Index(hashes, e.scope)))
		dst = binary.AppendUvarint(dst, uint64(len(e.body)))
		dst = append(dst, e.body...)
	}
	return dst
}

// chunkSnappy heads a chunk value of the version before groups, compressed
// alone: the byte, then the Snappy block of the plain chunk. Read only.
const chunkSnappy byte = 2

// walkChunk calls fn for every span of a chunk value an earlier version
// stored under a chunk key (0x04), in stored order; body aliases b or its
// decompressed copy. chunks resolves dictionary-compressed chunks (nil: none
// known). Callers that only need the span IDs never parse a body.
func walkChunk(b []byte, chunks *chunkReader, fn func(e chunkEntry) error) error {
	b, err := chunks.plain(b)
	if err != nil {
		return err
	}
	return walkPlainChunk(b, fn)
}

// walkPlainChunk calls fn for every span of a plain chunk.
func walkPlainChunk(b []byte, fn func(e chunkEntry) error) error {
	bad := func(what string) error { return fmt.Errorf("span chunk: %w: %s", ErrCorrupt, what) }
	if len(b) == 0 || b[0] != valueVersion {
		return bad("bad header")
	}
	b = b[1:]
	uv := func() (uint64, bool) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, false
		}
		b = b[n:]
		return v, true
	}
	nh, ok := uv()
	if !ok || nh > uint64(len(b))/8 {
		return bad("blob table")
	}
	hashes := make([]uint64, nh)
	for i := range hashes {
		hashes[i] = beUint64(b)
		b = b[8:]
	}
	ns, ok := uv()
	if !ok || ns > uint64(len(b))/9 {
		return bad("span count")
	}
	for range ns {
		if len(b) < 8 {
			return bad("truncated span")
		}
		e := chunkEntry{sid: span.SpanID(b[:8])}
		b = b[8:]
		ri, ok1 := uv()
		si, ok2 := uv()
		n, ok3 := uv()
		if !ok1 || !ok2 || !ok3 || ri >= nh || si >= nh || n > uint64(len(b)) {
			return bad("truncated span")
		}
		e.res, e.scope, e.body = hashes[ri], hashes[si], b[:n]
		b = b[n:]
		if err := fn(e); err != nil {
			return err
		}
	}
	if len(b) != 0 {
		return bad("trailing bytes")
	}
	return nil
}

// decodeSpanBody reverses appendSpanBody, restoring the IDs.
func decodeSpanBody(b []byte, tid span.TraceID, sid span.SpanID) (*tracepb.Span, error) {
	sp := &tracepb.Span{}
	if err := proto.Unmarshal(b, sp); err != nil {
		return nil, fmt.Errorf("span %s: %w: %w", sid, ErrCorrupt, err)
	}
	sp.TraceId = slices.Clone(tid[:])
	sp.SpanId = slices.Clone(sid[:])
	return sp, nil
}

// chunkID names a chunk by the sorted IDs of its spans, so writing the same
// spans again (a replay with the same grouping) rewrites the same key.
func chunkID(sorted []chunkEntry) uint64 {
	h := fnv.New64a()
	for _, e := range sorted {
		_, _ = h.Write(e.sid[:])
	}
	return h.Sum64()
}

// appendFragment encodes a posting fragment value: version, then the seqs
// in descending order as uvarint distances from the previous one, starting
// at the fragment's maximum (which is in the key, so the first distance is
// 0). seqs must be sorted descending.
func appendFragment(dst []byte, seqs []uint64) []byte {
	dst = append(dst, valueVersion)
	prev := seqs[0]
	for _, s := range seqs {
		dst = binary.AppendUvarint(dst, prev-s)
		prev = s
	}
	return dst
}

// decodeFragment appends the seqs of a fragment whose maximum is maxSeq.
func decodeFragment(dst []uint64, b []byte, maxSeq uint64) ([]uint64, error) {
	if len(b) < 2 || b[0] != valueVersion {
		return dst, fmt.Errorf("posting fragment: %w: bad header", ErrCorrupt)
	}
	b = b[1:]
	prev := maxSeq
	for len(b) > 0 {
		d, n := binary.Uvarint(b)
		if n <= 0 || d > prev {
			return dst, fmt.Errorf("posting fragment: %w: bad distance", ErrCorrupt)
		}
		b = b[n:]
		prev -= d
		dst = append(dst, prev)
	}
	return dst, nil
}

// summary is the per-trace record merged on every write of the trace.
type summary struct {
	Seq         uint64
	MinStart    uint64
	MaxEnd      uint64
	HasRoot     bool
	RootStart   uint64
	RootEnd     uint64
	RootService string
	RootName    string
	SpanCount   uint64
	ErrorCount  uint64
	Reasons     []string
	Services    []string
	Warnings    []string
	// Chunks are where the trace's chunks are: one reference per chunk
	// ID, into a chunk group (group.go).
	Chunks []chunkRef
	// ChunksOnly marks a trace whose chunks are all in Chunks. A trace
	// first written by an earlier version also has chunk keys (0x04).
	ChunksOnly bool
}

// clone is a copy that shares no slice with s.
func (s *summary) clone() summary {
	c := *s
	c.Reasons = slices.Clone(s.Reasons)
	c.Services = slices.Clone(s.Services)
	c.Warnings = slices.Clone(s.Warnings)
	c.Chunks = slices.Clone(s.Chunks)
	return c
}

// chunkRef places one chunk: its ID, its group, and its offset and length
// in the group's plain content.
type chunkRef struct {
	id, group uint64
	off, n    uint64
}

// setChunk records where a chunk is, replacing an older place of the same
// chunk (a replay that grouped it differently).
func (s *summary) setChunk(r chunkRef) {
	for i := range s.Chunks {
		if s.Chunks[i].id == r.id {
			s.Chunks[i] = r
			return
		}
	}
	s.Chunks = append(s.Chunks, r)
}

// Start is the trace start the API reports: the root's, else the earliest span's.
func (s *summary) Start() uint64 {
	if s.HasRoot {
		return s.RootStart
	}
	return s.MinStart
}

// Duration follows reader.proto: the root span's, else first start to last end.
func (s *summary) Duration() uint64 {
	if s.HasRoot {
		return subFloor(s.RootEnd, s.RootStart)
	}
	return subFloor(s.MaxEnd, s.MinStart)
}

func subFloor(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

// addSpan folds one span's times and root fields into s. It is idempotent:
// adding the same span twice changes nothing (counts are kept by the caller,
// which knows whether the span is new, and so are services: prepare keeps
// them in its batch's buffer).
func (s *summary) addSpan(sp span.Span) {
	start, end := sp.GetStartTimeUnixNano(), sp.GetEndTimeUnixNano()
	if s.MinStart == 0 || start < s.MinStart {
		s.MinStart = start
	}
	if end > s.MaxEnd {
		s.MaxEnd = end
	}
	if len(sp.GetParentSpanId()) == 0 && (!s.HasRoot || start < s.RootStart) {
		s.HasRoot = true
		s.RootStart, s.RootEnd = start, end
		s.RootService, s.RootName = sp.ServiceName(), sp.GetName()
	}
}

// merge folds o (the spans of a later write) into s, keeping s.Seq.
func (s *summary) merge(o *summary) {
	if o.MinStart != 0 && (s.MinStart == 0 || o.MinStart < s.MinStart) {
		s.MinStart = o.MinStart
	}
	s.MaxEnd = max(s.MaxEnd, o.MaxEnd)
	if o.HasRoot && (!s.HasRoot || o.RootStart < s.RootStart) {
		s.HasRoot = true
		s.RootStart, s.RootEnd = o.RootStart, o.RootEnd
		s.RootService, s.RootName = o.RootService, o.RootName
	}
	s.Reasons = unionStrings(s.Reasons, o.Reasons...)
	s.Services = unionStrings(s.Services, o.Services...)
	s.Warnings = unionStrings(s.Warnings, o.Warnings...)
}

// unionStrings appends the values of add not yet in dst, keeping first-seen order.
func unionStrings(dst []string, add ...string) []string {
	for _, a := range add {
		if !slices.Contains(dst, a) {
			dst = append(dst, a)
		}
	}
	return dst
}

// Summary field numbers (protobuf wire format, hand-encoded to avoid a
// second .proto for an internal record).
const (
	sumSeq protowire.Number = iota + 1
	sumMinStart
	sumMaxEnd
	sumHasRoot
	sumRootStart
	sumRootEnd
	sumRootService
	sumRootName
	sumSpanCount
	sumErrorCount
	sumReason
	sumService
	sumWarning
	sumChunk      // bytes: chunk ID[8] group[8] uvarint offset uvarint length
	sumChunksOnly // bool
)

func (s *summary) appendTo(dst []byte) []byte {
	dst = append(dst, valueVersion)
	varint := func(n protowire.Number, v uint64) {
		if v != 0 {
			dst = protowire.AppendTag(dst, n, protowire.VarintType)
			dst = protowire.AppendVarint(dst, v)
		}
	}
	str := func(n protowire.Number, v string) {
		dst = protowire.AppendTag(dst, n, protowire.BytesType)
		dst = protowire.AppendString(dst, v)
	}
	varint(sumSeq, s.Seq)
	varint(sumMinStart, s.MinStart)
	varint(sumMaxEnd, s.MaxEnd)
	varint(sumHasRoot, protowire.EncodeBool(s.HasRoot))
	varint(sumRootStart, s.RootStart)
	varint(sumRootEnd, s.RootEnd)
	if s.RootService != "" {
		str(sumRootService, s.RootService)
	}
	if s.RootName != "" {
		str(sumRootName, s.RootName)
	}
	varint(sumSpanCount, s.SpanCount)
	varint(sumErrorCount, s.ErrorCount)
	for _, v := range s.Reasons {
		str(sumReason, v)
	}
	for _, v := range s.Services {
		str(sumService, v)
	}
	for _, v := range s.Warnings {
		str(sumWarning, v)
	}
	for _, c := range s.Chunks {
		var b [8 + 8 + 2*binary.MaxVarintLen64]byte
		r := appendU64(appendU64(b[:0], c.id), c.group)
		r = binary.AppendUvarint(binary.AppendUvarint(r, c.off), c.n)
		dst = protowire.AppendTag(dst, sumChunk, protowire.BytesType)
		dst = protowire.AppendBytes(dst, r)
	}
	varint(sumChunksOnly, protowire.EncodeBool(s.ChunksOnly))
	return dst
}

func decodeSummary(b []byte) (summary, error) {
	var s summary
	if len(b) == 0 || b[0] != valueVersion {
		return s, fmt.Errorf("trace summary: %w: bad header", ErrCorrupt)
	}
	b = b[1:]
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return s, fmt.Errorf("trace summary: %w: %w", ErrCorrupt, protowire.ParseError(n))
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return s, fmt.Errorf("trace summary: %w: %w", ErrCorrupt, protowire.ParseError(n))
			}
			b = b[n:]
			switch num {
			case sumSeq:
				s.Seq = v
			case sumMinStart:
				s.MinStart = v
			case sumMaxEnd:
				s.MaxEnd = v
			case sumHasRoot:
				s.HasRoot = protowire.DecodeBool(v)
			case sumRootStart:
				s.RootStart = v
			case sumRootEnd:
				s.RootEnd = v
			case sumSpanCount:
				s.SpanCount = v
			case sumErrorCount:
				s.ErrorCount = v
			case sumChunksOnly:
				s.ChunksOnly = protowire.DecodeBool(v)
			}
		case protowire.BytesType:
			v, n := protowire.ConsumeString(b)
			if n < 0 {
				return s, fmt.Errorf("trace summary: %w: %w", ErrCorrupt, protowire.ParseError(n))
			}
			b = b[n:]
			switch num {
			case sumRootService:
				s.RootService = v
			case sumRootName:
				s.RootName = v
			case sumReason:
				s.Reasons = append(s.Reasons, v)
			case sumService:
				s.Services = append(s.Services, v)
			case sumWarning:
				s.Warnings = append(s.Warnings, v)
			case sumChunk:
				c, ok := decodeChunkRef(v)
				if !ok {
					return s, fmt.Errorf("trace summary: %w: chunk reference", ErrCorrupt)
				}
				s.Chunks = append(s.Chunks, c)
			}
		default:
			// Unknown wire types come only from corruption: this record is
			// ours and never uses them.
			return s, fmt.Errorf("trace summary: %w: wire type %d", ErrCorrupt, typ)
		}
	}
	return s, nil
}

func decodeChunkRef(v string) (chunkRef, bool) {
	if len(v) < 18 {
		return chunkRef{}, false
	}
	c := chunkRef{id: beUint64([]byte(v[:8])), group: beUint64([]byte(v[8:16]))}
	b := []byte(v[16:])
	var n1, n2 int
	c.off, n1 = binary.Uvarint(b)
	if n1 > 0 {
		c.n, n2 = binary.Uvarint(b[n1:])
	}
	return c, n1 > 0 && n2 > 0 && n1+n2 == len(b)
}

// attrString renders a scalar attribute value the way tag search compares
// it. Arrays, maps and bytes are not indexed.
func attrString(v *commonpb.AnyValue) (string, bool) {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue, true
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10), true
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue), true
	case *commonpb.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64), true
	}
	return "", false
}

// appendAttrString appends what attrString returns without allocating a
// string for numbers.
func appendAttrString(dst []byte, v *commonpb.AnyValue) ([]byte, bool) {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return append(dst, x.StringValue...), true
	case *commonpb.AnyValue_IntValue:
		return strconv.AppendInt(dst, x.IntValue, 10), true
	case *commonpb.AnyValue_BoolValue:
		return strconv.AppendBool(dst, x.BoolValue), true
	case *commonpb.AnyValue_DoubleValue:
		return strconv.AppendFloat(dst, x.DoubleValue, 'g', -1, 64), true
	}
	return dst, false
}

// appendWireAttrString is appendAttrString for an AnyValue's encoding, as
// span.Span.RangeDeferredAttrs gives it.
func appendWireAttrString(dst, v []byte) ([]byte, bool) {
	num, typ, n := protowire.ConsumeTag(v)
	if n < 0 || len(v) == 0 {
		return dst, false
	}
	v = v[n:]
	switch {
	case num == 1 && typ == protowire.BytesType:
		s, m := protowire.ConsumeBytes(v)
		return append(dst, s...), m >= 0
	case num == 2 && typ == protowire.VarintType:
		b, m := protowire.ConsumeVarint(v)
		return strconv.AppendBool(dst, b != 0), m >= 0
	case num == 3 && typ == protowire.VarintType:
		i, m := protowire.ConsumeVarint(v)
		return strconv.AppendInt(dst, int64(i), 10), m >= 0
	case num == 4 && typ == protowire.Fixed64Type:
		f, m := protowire.ConsumeFixed64(v)
		return strconv.AppendFloat(dst, math.Float64frombits(f), 'g', -1, 64), m >= 0
	}
	return dst, false
}

// Status values of the "status" intrinsic.
const (
	statusUnset = "unset"
	statusOK    = "ok"
	statusError = "error"
)

func statusString(sp *tracepb.Span) string {
	switch sp.GetStatus().GetCode() {
	case tracepb.Status_STATUS_CODE_ERROR:
		return statusError
	case tracepb.Status_STATUS_CODE_OK:
		return statusOK
	}
	return statusUnset
}

// kindString is the lowercase kind without prefix, as reader.proto wants.
func kindString(k tracepb.Span_SpanKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "SPAN_KIND_"))
}
