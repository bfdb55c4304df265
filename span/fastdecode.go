package span

import (
	"encoding/binary"
	"math"
	"slices"
	"sync"
	"unsafe"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
)

// The indexer decodes every span it receives, and with the generic
// proto.Unmarshal that was a fifth of its CPU: one allocation per message,
// per oneof wrapper and per string, each through reflection. fastDecoder
// decodes the OTLP trace schema by hand into the same tracepb structs,
// taking messages from slabs (a few allocations per record rather than ~60
// per span) and strings and bytes from one private copy of the record.
//
// It handles exactly the messages it knows completely. Anything else — an
// unknown or reserved field, a field with an unexpected wire type, a
// singular message or oneof sent twice (which proto merges), invalid UTF-8,
// deep nesting, malformed bytes — makes it give up, and DecodeTraces falls
// back to proto.Unmarshal, so results always equal proto.Unmarshal's (a fuzz
// test compares the two).

// maxFastDepth bounds AnyValue nesting on the fast path; deeper values take
// the proto.Unmarshal path.
const maxFastDepth = 32

// slab hands out values of T from chunks that grow with use.
type slab[T any] struct {
	free []T
	next int // size of the next chunk
}

func (s *slab[T]) one() *T {
	if len(s.free) == 0 {
		s.grow(1)
	}
	p := &s.free[0]
	s.free = s.free[1:]
	return p
}

// many returns n values; the caller may not append beyond them (it may
// reslice to none and append up to n).
func (s *slab[T]) many(n int) []T {
	if n == 0 {
		return nil
	}
	if len(s.free) < n {
		s.grow(n)
	}
	out := s.free[:n:n]
	s.free = s.free[n:]
	return out
}

// expect sets the first chunk to about n values (the slab still grows
// past it), so a record is decoded in one allocation per slab rather
// than four or five doubling ones.
func (s *slab[T]) expect(n int) {
	s.next = n
	if n > 0 {
		s.free = make([]T, n)
	}
}

// spanSlot holds what every span of a record gets: the span, its status
// (OTLP SDKs send one with nearly every span) and its deferred-attributes
// flag. Taking all three from one slab sized by an exact count of the
// record's spans costs one allocation per record instead of three
// estimated ones, and nothing is reserved for spans that are not there.
// The slot's parts live as long as any of them, as a slab chunk does.
type spanSlot struct {
	span     tracepb.Span
	status   tracepb.Status
	deferred deferredAttrs
}

// presize sizes the slabs, and the output after dst, for a record of n
// bytes holding spans spans. The span count is exact (CountSpans), and
// the slots of a leased record are the lease's; attributes are estimated
// from what typical spans spend per value: an attribute takes 30–60 bytes
// on the wire (and a record's resource attributes are often shared, not
// decoded). An estimate too low costs one more chunk; too high, memory
// the spans keep.
func (d *fastDecoder) presize(dst []Span, n, spans int) {
	if d.lease != nil {
		d.slots.free, d.slots.next = d.lease.takeSlots(spans), spans
	} else {
		d.slots.expect(spans)
	}
	d.out = slices.Grow(dst, spans)
	if d.lazy {
		return // span attributes stay on the wire
	}
	attrs := n / 48
	d.kvs.expect(attrs)
	d.kvPtrs.expect(attrs)
	d.anys.expect(attrs)
	d.strVals.expect(attrs)
}

func (s *slab[T]) grow(n int) {
	s.next = min(max(s.next*2, 8), 512)
	s.free = make([]T, max(s.next, n))
}

type fastDecoder struct {
	buf []byte // the decoder's copy of the record: strings and bytes point into it

	slots    slab[spanSlot]
	events   slab[tracepb.Span_Event]
	evPtrs   slab[*tracepb.Span_Event]
	links    slab[tracepb.Span_Link]
	linkPtrs slab[*tracepb.Span_Link]
	kvs      slab[commonpb.KeyValue]
	kvPtrs   slab[*commonpb.KeyValue]
	anys     slab[commonpb.AnyValue]
	anyPtrs  slab[*commonpb.AnyValue]
	strVals  slab[commonpb.AnyValue_StringValue]
	intVals  slab[commonpb.AnyValue_IntValue]
	dblVals  slab[commonpb.AnyValue_DoubleValue]
	boolVals slab[commonpb.AnyValue_BoolValue]
	out      []Span
	cache    *Decoder // nil: no sharing between records
	lease    *Lease   // the lease buf is the buffer of, if any
	// lazy leaves span attributes in the span's Wire, checked but not
	// decoded (see Span.AttrsDeferred).
	lazy bool
}

// decodeTracesFast appends the spans of data to dst, or reports false when
// the fast path does not apply (see above). cache, when not nil, shares
// resources and scopes with earlier records. The spans alias a copy of
// data, or data itself when owned; lease, when not nil, is the lease data
// is the buffer of, which the span structs are taken from too.
func decodeTracesFast(dst []Span, data []byte, cache *Decoder, owned, lazy bool, lease *Lease) ([]Span, bool) {
	// A pass over the record's framing counts its spans, so the slots and
	// the output are allocated once at their final size rather than from
	// an estimate that either wastes memory or grows.
	spans, err := CountSpans(data)
	if err != nil {
		return nil, false // malformed: the decode would refuse it too
	}
	if !owned {
		data = append([]byte(nil), data...)
	}
	d := &fastDecoder{buf: data, cache: cache, lazy: lazy, lease: lease}
	d.presize(dst, len(data), spans)
	b := d.buf
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num != 1 || typ != protowire.BytesType {
			return nil, false
		}
		b = b[n:]
		v, n := protowire.ConsumeBytes(b)
		if n < 0 || !d.resourceSpans(v) {
			return nil, false
		}
		b = b[n:]
	}
	return d.out, true
}

// walkFields walks the fields of one message, calling fn with each field's
// number, wire type and value: the varint, fixed value, or bytes. fn
// returns false to give up.
func walkFields(b []byte, fn func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) bool) bool {
	for len(b) > 0 {
		if num, bs, n := shortField(b); n > 0 {
			if !fn(num, protowire.BytesType, 0, bs) {
				return false
			}
			b = b[n:]
			continue
		}
		num, typ, v, bs, n := consumeField(b)
		if n < 0 || !fn(num, typ, v, bs) {
			return false
		}
		b = b[n:]
	}
	return true
}

// consumeField parses the field at the start of b: its number, wire type
// and value (the varint, fixed value, or bytes), and its size n, which is
// negative for malformed bytes and for group wire types. One-byte tags
// (fields 1 to 15) and lengths, nearly all of OTLP, are decoded here
// rather than by protowire's varint decoder, which is not inlined: its
// calls per tag and per length were a third of the lazy decode's CPU.
func consumeField(b []byte) (num protowire.Number, typ protowire.Type, v uint64, bs []byte, n int) {
	tag, n := uint64(0), 1
	if len(b) > 0 && b[0] < 0x80 {
		tag = uint64(b[0])
	} else if tag, n = protowire.ConsumeVarint(b); n < 0 {
		return 0, 0, 0, nil, n
	}
	num, typ = protowire.DecodeTag(tag)
	if num < protowire.MinValidNumber {
		return 0, 0, 0, nil, -1 // as protowire.ConsumeTag
	}
	b = b[n:]
	var m int
	switch typ {
	case protowire.VarintType:
		v, m = protowire.ConsumeVarint(b)
	case protowire.Fixed64Type:
		v, m = protowire.ConsumeFixed64(b)
	case protowire.Fixed32Type:
		var v32 uint32
		v32, m = protowire.ConsumeFixed32(b)
		v = uint64(v32)
	case protowire.BytesType:
		if len(b) > 0 && b[0] < 0x80 && int(b[0]) < len(b) {
			bs, m = b[1:1+b[0]], 1+int(b[0])
		} else {
			bs, m = protowire.ConsumeBytes(b)
		}
	default:
		return 0, 0, 0, nil, -1
	}
	if m < 0 {
		return 0, 0, 0, nil, m
	}
	return num, typ, v, bs, n + m
}

// ConsumeField returns the number, wire type and size (tag and value) of
// the protobuf field at the start of b; n is negative for malformed bytes
// and for group wire types. It is protowire's ConsumeTag and
// ConsumeFieldValue in one call, faster for the one-byte tags and lengths
// nearly all of OTLP uses, for code that walks span encodings field by
// field.
func ConsumeField(b []byte) (num protowire.Number, typ protowire.Type, n int) {
	num, typ, _, _, n = consumeField(b)
	return num, typ, n
}

// shortField parses the field at the start of b when it is a bytes field
// whose tag and length take a byte each, as nearly all of OTLP's do; n is 0
// for any other field, which consumeField then parses. It is small enough
// to be inlined into the loops that run per attribute and per span field.
func shortField(b []byte) (num protowire.Number, bs []byte, n int) {
	if len(b) < 2 || b[0] < 1<<3 || b[0] >= 0x80 || b[0]&7 != byte(protowire.BytesType) || b[1] >= 0x80 || int(b[1]) > len(b)-2 {
		return 0, nil, 0
	}
	n = 2 + int(b[1])
	return protowire.Number(b[0] >> 3), b[2:n], n
}

// countFields counts the occurrences of up to three repeated fields of
// message b, so their pointer slices are allocated once at their final
// length. It reports false for malformed bytes.
func countFields(b []byte, nums ...protowire.Number) (c [3]int, ok bool) {
	for len(b) > 0 {
		num, _, _, _, n := consumeField(b)
		if n < 0 {
			return c, false // groups too, which the decode refuses anyway
		}
		b = b[n:]
		for i, want := range nums {
			if num == want {
				c[i]++
			}
		}
	}
	return c, true
}

// wireString returns b as a string sharing the decoder's buffer, or false for
// invalid UTF-8 (proto3 strings must be UTF-8).
func wireString(b []byte) (string, bool) {
	if len(b) == 0 {
		return "", true
	}
	if !validUTF8(b) {
		return "", false
	}
	return unsafe.String(&b[0], len(b)), true
}

// wireBytes returns a bytes field the way proto.Unmarshal does: never nil.
func wireBytes(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b[:len(b):len(b)]
}

// wireGroup is a ResourceSpans or ScopeSpans as found on the wire: both hold
// their resource or scope in field 1, their children in field 2 and a
// schema URL in field 3.
type wireGroup struct {
	msg    []byte // the resource or scope; nil when absent
	schema []byte
	fields []byte // the whole group, walked again for its children
}

// splitGroup checks a group's fields and finds its resource or scope and
// schema URL, which may follow the children on the wire. The children are
// not collected (a slice of them was an allocation per group): children
// walks the fields again.
func splitGroup(b []byte) (wireGroup, bool) {
	g := wireGroup{fields: b}
	ok := walkFields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) bool {
		if typ != protowire.BytesType {
			return false
		}
		switch num {
		case 1:
			if g.msg != nil {
				return false // proto merges a repeated singular message
			}
			g.msg = wireBytes(bs)
		case 2:
		case 3:
			g.schema = bs
		default:
			return false
		}
		return true
	})
	return g, ok
}

// children yields the group's children in order. splitGroup has checked
// that every field is a well-formed bytes field.
func (g wireGroup) children(yield func([]byte) bool) {
	for b := g.fields; len(b) > 0; {
		num, _, _, v, n := consumeField(b)
		if n < 0 {
			return
		}
		b = b[n:]
		if num == 2 && !yield(v) {
			return
		}
	}
}

func (d *fastDecoder) resourceSpans(b []byte) bool {
	g, ok := splitGroup(b)
	if !ok {
		return false
	}
	res, ok := decodeShared(d.cache.resources(), g, func(msg []byte, schemaURL string) (*Resource, bool) {
		r := &Resource{SchemaURL: schemaURL, Encoded: msg}
		if msg == nil {
			return r, true
		}
		r.Resource = &resourcepb.Resource{}
		return r, d.resource(r.Resource, msg)
	})
	if !ok {
		return false
	}
	for sb := range g.children {
		if !d.scopeSpans(res, sb) {
			return false
		}
	}
	return true
}

// decodeShared returns a group's resource or scope: the one an earlier
// record decoded when cache has it, else the one decode builds from the
// group's message (given its validated schema URL), which is then shared.
//
// A shared value outlives its record, whose buffer may be a lease that is
// recycled once the record's spans are done with (see Lease), so it is
// decoded from a copy of its own message and schema URL: its strings and
// Encoded never alias the record.
func decodeShared[T any](cache *shared[T], g wireGroup, decode func(msg []byte, schemaURL string) (*T, bool)) (*T, bool) {
	if v := cache.get(g.msg, g.schema); v != nil {
		return v, true
	}
	keep := cache.keeps(g.msg, g.schema)
	msg, schema := g.msg, g.schema
	if keep {
		b := make([]byte, len(msg)+len(schema))
		copy(b[copy(b, msg):], schema)
		if msg != nil { // absent stays absent
			msg = b[:len(msg):len(msg)]
		}
		schema = b[len(msg):]
	}
	schemaURL, ok := wireString(schema)
	if !ok {
		return nil, false
	}
	v, ok := decode(msg, schemaURL)
	if !ok {
		return nil, false
	}
	if keep {
		cache.put(msg, schema, v)
	}
	return v, true
}

func (d *fastDecoder) resource(r *resourcepb.Resource, b []byte) bool {
	c, ok := countFields(b, 1)
	if !ok {
		return false
	}
	r.Attributes = d.kvPtrs.many(c[0])
	i := 0
	return walkFields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) bool {
		switch {
		case num == 1 && typ == protowire.BytesType:
			kv := d.kvs.one()
			r.Attributes[i] = kv
			i++
			return d.keyValue(kv, bs, 0)
		case num == 2 && typ == protowire.VarintType:
			r.DroppedAttributesCount = uint32(v)
			return true
		}
		return false // entity_refs and anything newer: the slow path
	})
}

func (d *fastDecoder) scopeSpans(res *Resource, b []byte) bool {
	g, ok := splitGroup(b)
	if !ok {
		return false
	}
	sc, ok := decodeShared(d.cache.scopes(), g, func(msg []byte, schemaURL string) (*Scope, bool) {
		sc := &Scope{SchemaURL: schemaURL, Encoded: msg}
		if msg == nil {
			return sc, true
		}
		sc.Scope = &commonpb.InstrumentationScope{}
		return sc, d.scope(sc.Scope, msg)
	})
	if !ok {
		return false
	}
	for sb := range g.children {
		slot := d.slots.one()
		deferred, body, ok := d.span(&slot.span, &slot.status, sb)
		if !ok {
			return false
		}
		out := Span{Span: &slot.span, Resource: res, Scope: sc, Wire: sb}
		if deferred {
			slot.deferred.bodyAt = int32(body + 1)
			out.deferred = &slot.deferred
		}
		d.out = append(d.out, out)
	}
	return true
}

func (d *fastDecoder) scope(s *commonpb.InstrumentationScope, b []byte) bool {
	c, ok := countFields(b, 3)
	if !ok {
		return false
	}
	s.Attributes = d.kvPtrs.many(c[0])
	i := 0
	return walkFields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) bool {
		var ok bool
		switch {
		case num == 1 && typ == protowire.BytesType:
			s.Name, ok = wireString(bs)
		case num == 2 && typ == protowire.BytesType:
			s.Version, ok = wireString(bs)
		case num == 3 && typ == protowire.BytesType:
			kv := d.kvs.one()
			s.Attributes[i] = kv
			i++
			ok = d.keyValue(kv, bs, 0)
		case num == 4 && typ == protowire.VarintType:
			s.DroppedAttributesCount, ok = uint32(v), true
		}
		return ok
	})
}

// span decodes a span into sp, and its status, if it has one, into st.
// In lazy mode its attributes are checked and left in b, and deferred
// reports whether it has any.
//
// body is where the span's fields after its IDs begin, when trace_id and
// span_id are the encoding's leading fields and occur nowhere else (as OTLP
// encoders write them), and -1 otherwise (see Span.WireBody).
func (d *fastDecoder) span(sp *tracepb.Span, st *tracepb.Status, b []byte) (deferred bool, body int, ok bool) {
	if !d.lazy {
		// The repeated fields are appended to slices of their exact
		// length. Lazily, events and links (few spans have any) grow as
		// they come instead, which spares this pass over the span.
		c, ok := countFields(b, 9, 11, 13)
		if !ok {
			return false, -1, false
		}
		sp.Attributes = d.kvPtrs.many(c[0])[:0]
		sp.Events = d.evPtrs.many(c[1])[:0]
		sp.Links = d.linkPtrs.many(c[2])[:0]
	}
	hasAttrs, reserved := false, false
	// This is walkFields written out: a span has a score of fields, and
	// the callback per field showed in profiles.
	for rest := b; len(rest) > 0; {
		var (
			typ = protowire.BytesType
			v   uint64
		)
		num, bs, n := shortField(rest)
		if n == 0 {
			num, typ, v, bs, n = consumeField(rest)
			if n < 0 {
				return false, -1, false
			}
		}
		rest = rest[n:]
		if (num == 1 || num == 2) && typ == protowire.BytesType {
			if end := len(b) - len(rest); end-n == body {
				body = end // still leading
			} else {
				body = -1
			}
		}
		ok := false
		switch typ {
		case protowire.BytesType:
			switch num {
			case 1:
				sp.TraceId, ok = wireBytes(bs), true
			case 2:
				sp.SpanId, ok = wireBytes(bs), true
			case 3:
				sp.TraceState, ok = wireString(bs)
			case 4:
				sp.ParentSpanId, ok = wireBytes(bs), true
			case 5:
				sp.Name, ok = wireString(bs)
			case 9:
				hasAttrs = true
				if d.lazy {
					var r bool
					ok, r = checkKeyValue(bs, 0)
					reserved = reserved || r
				} else {
					kv := d.kvs.one()
					sp.Attributes = append(sp.Attributes, kv)
					ok = d.keyValue(kv, bs, 0)
				}
			case 11:
				ev := d.events.one()
				sp.Events = append(sp.Events, ev)
				ok = d.event(ev, bs)
			case 13:
				l := d.links.one()
				sp.Links = append(sp.Links, l)
				ok = d.link(l, bs)
			case 15:
				if sp.Status != nil {
					return false, -1, false // proto merges a repeated singular message
				}
				sp.Status = st
				ok = d.status(st, bs)
			}
		case protowire.VarintType:
			switch num {
			case 6:
				sp.Kind, ok = tracepb.Span_SpanKind(int32(v)), true
			case 10:
				sp.DroppedAttributesCount, ok = uint32(v), true
			case 12:
				sp.DroppedEventsCount, ok = uint32(v), true
			case 14:
				sp.DroppedLinksCount, ok = uint32(v), true
			}
		case protowire.Fixed64Type:
			switch num {
			case 7:
				sp.StartTimeUnixNano, ok = v, true
			case 8:
				sp.EndTimeUnixNano, ok = v, true
			}
		case protowire.Fixed32Type:
			if num == 16 {
				sp.Flags, ok = uint32(v), true
			}
		}
		if !ok {
			return false, -1, false
		}
	}
	if reserved {
		// Decoded in full after all: see ReservedAttrPrefix.
		*sp, *st = tracepb.Span{}, tracepb.Status{}
		d.lazy = false
		_, _, ok = d.span(sp, st, b)
		d.lazy = true
		return false, -1, ok
	}
	return d.lazy && hasAttrs, body, true
}

func (d *fastDecoder) event(ev *tracepb.Span_Event, b []byte) bool {
	c, ok := countFields(b, 3)
	if !ok {
		return false
	}
	ev.Attributes = d.kvPtrs.many(c[0])
	i := 0
	return walkFields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) bool {
		var ok bool
		switch {
		case num == 1 && typ == protowire.Fixed64Type:
			ev.TimeUnixNano, ok = v, true
		case num == 2 && typ == protowire.BytesType:
			ev.Name, ok = wireString(bs)
		case num == 3 && typ == protowire.BytesType:
			kv := d.kvs.one()
			ev.Attributes[i] = kv
			i++
			ok = d.keyValue(kv, bs, 0)
		case num == 4 && typ == protowire.VarintType:
			ev.DroppedAttributesCount, ok = uint32(v), true
		}
		return ok
	})
}

func (d *fastDecoder) link(l *tracepb.Span_Link, b []byte) bool {
	c, ok := countFields(b, 4)
	if !ok {
		return false
	}
	l.Attributes = d.kvPtrs.many(c[0])
	i := 0
	return walkFields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) bool {
		var ok bool
		switch {
		case num == 1 && typ == protowire.BytesType:
			l.TraceId, ok = wireBytes(bs), true
		case num == 2 && typ == protowire.BytesType:
			l.SpanId, ok = wireBytes(bs), true
		case num == 3 && typ == protowire.BytesType:
			l.TraceState, ok = wireString(bs)
		case num == 4 && typ == protowire.BytesType:
			kv := d.kvs.one()
			l.Attributes[i] = kv
			i++
			ok = d.keyValue(kv, bs, 0)
		case num == 5 && typ == protowire.VarintType:
			l.DroppedAttributesCount, ok = uint32(v), true
		case num == 6 && typ == protowire.Fixed32Type:
			l.Flags, ok = uint32(v), true
		}
		return ok
	})
}

func (d *fastDecoder) status(s *tracepb.Status, b []byte) bool {
	return walkFields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) bool {
		var ok bool
		switch {
		case num == 2 && typ == protowire.BytesType:
			s.Message, ok = wireString(bs)
		case num == 3 && typ == protowire.VarintType:
			s.Code, ok = tracepb.Status_StatusCode(int32(v)), true
		}
		return ok // field 1 is reserved: the slow path keeps it as unknown
	})
}

func (d *fastDecoder) keyValue(kv *commonpb.KeyValue, b []byte, depth int) bool {
	return walkFields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) bool {
		if typ != protowire.BytesType {
			return false // key_strindex (3) and the like: the slow path
		}
		switch num {
		case 1:
			var ok bool
			kv.Key, ok = wireString(bs)
			return ok
		case 2:
			if kv.Value != nil {
				return false
			}
			kv.Value = d.anys.one()
			return d.anyValue(kv.Value, bs, depth)
		}
		return false
	})
}

func (d *fastDecoder) anyValue(a *commonpb.AnyValue, b []byte, depth int) bool {
	if depth > maxFastDepth {
		return false
	}
	return walkFields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) bool {
		if a.Value != nil {
			return false // a second oneof member: proto's last-wins/merge rules
		}
		switch {
		case num == 1 && typ == protowire.BytesType:
			s, ok := wireString(bs)
			w := d.strVals.one()
			w.StringValue = s
			a.Value = w
			return ok
		case num == 2 && typ == protowire.VarintType:
			w := d.boolVals.one()
			w.BoolValue = v != 0
			a.Value = w
		case num == 3 && typ == protowire.VarintType:
			w := d.intVals.one()
			w.IntValue = int64(v)
			a.Value = w
		case num == 4 && typ == protowire.Fixed64Type:
			w := d.dblVals.one()
			w.DoubleValue = math.Float64frombits(v)
			a.Value = w
		case num == 5 && typ == protowire.BytesType:
			arr := &commonpb.ArrayValue{}
			a.Value = &commonpb.AnyValue_ArrayValue{ArrayValue: arr}
			return d.arrayValue(arr, bs, depth+1)
		case num == 6 && typ == protowire.BytesType:
			list := &commonpb.KeyValueList{}
			a.Value = &commonpb.AnyValue_KvlistValue{KvlistValue: list}
			return d.kvList(list, bs, depth+1)
		case num == 7 && typ == protowire.BytesType:
			a.Value = &commonpb.AnyValue_BytesValue{BytesValue: wireBytes(bs)}
		default:
			return false
		}
		return true
	})
}

func (d *fastDecoder) arrayValue(arr *commonpb.ArrayValue, b []byte, depth int) bool {
	c, ok := countFields(b, 1)
	if !ok {
		return false
	}
	arr.Values = d.anyPtrs.many(c[0])
	i := 0
	return walkFields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) bool {
		if num != 1 || typ != protowire.BytesType {
			return false
		}
		a := d.anys.one()
		arr.Values[i] = a
		i++
		return d.anyValue(a, bs, depth)
	})
}

func (d *fastDecoder) kvList(list *commonpb.KeyValueList, b []byte, depth int) bool {
	c, ok := countFields(b, 1)
	if !ok {
		return false
	}
	list.Values = d.kvPtrs.many(c[0])
	i := 0
	return walkFields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) bool {
		if num != 1 || typ != protowire.BytesType {
			return false
		}
		kv := d.kvs.one()
		list.Values[i] = kv
		i++
		return d.keyValue(kv, bs, depth)
	})
}

// checkKeyValue accepts exactly the KeyValue encodings keyValue decodes,
// allocating nothing: lazy decoding defers the decode, not the check, so a
// record is accepted or refused whole and deferred attributes always
// decode later. It runs for every attribute of every span, so it loops
// over the fields itself instead of through walkFields' callback.
func checkKeyValue(b []byte, depth int) (ok, reserved bool) {
	hasValue := false
	for len(b) > 0 {
		num, v, n := shortField(b)
		if n == 0 {
			var typ protowire.Type
			num, typ, _, v, n = consumeField(b)
			if n < 0 || typ != protowire.BytesType {
				return false, false
			}
		}
		b = b[n:]
		switch {
		case num == 1:
			if !validUTF8(v) {
				return false, false
			}
			reserved = len(v) >= len(ReservedAttrPrefix) && string(v[:len(ReservedAttrPrefix)]) == ReservedAttrPrefix
		case num == 2 && !hasValue:
			hasValue = true
			if !checkAnyValue(v, depth) {
				return false, false
			}
		default:
			return false, false
		}
	}
	return true, reserved
}

// checkAnyValue is checkKeyValue for anyValue: at most one member.
func checkAnyValue(b []byte, depth int) bool {
	if depth > maxFastDepth {
		return false
	}
	if len(b) == 0 {
		return true
	}
	// The common values, short strings and scalars, are checked here; the
	// general parse below accepts exactly the same.
	switch b[0] {
	case 0x0a: // string_value
		if _, v, n := shortField(b); n == len(b) {
			return validUTF8(v)
		}
	case 0x10, 0x18: // bool_value, int_value
		_, m := protowire.ConsumeVarint(b[1:])
		return m > 0 && 1+m == len(b)
	case 0x21: // double_value
		return len(b) == 9
	}
	num, typ, _, v, n := consumeField(b)
	if n != len(b) {
		return false // malformed, or a second member
	}
	switch typ {
	case protowire.VarintType:
		return num == 2 || num == 3
	case protowire.Fixed64Type:
		return num == 4
	case protowire.BytesType:
	default:
		return false
	}
	switch num {
	case 1:
		return validUTF8(v)
	case 5:
		return walkFields(v, func(num protowire.Number, typ protowire.Type, _ uint64, e []byte) bool {
			return num == 1 && typ == protowire.BytesType && checkAnyValue(e, depth+1)
		})
	case 6:
		return walkFields(v, func(num protowire.Number, typ protowire.Type, _ uint64, kv []byte) bool {
			ok, _ := checkKeyValue(kv, depth+1)
			return num == 1 && typ == protowire.BytesType && ok
		})
	case 7:
		return true
	}
	return false
}

// Decoder decodes trace records (DecodeTraces) and shares decoded resources
// and scopes between them. A service sends the same resource (a dozen
// attributes) and scope in every record, one record per trace, so decoding
// them once saves a sixth of the decode, and spans of different traces
// then point at one *Resource, which stores use to encode and hash it once
// per batch. Shared values must not be changed; each holds a copy of its
// own encoding, so none keeps a record's buffer alive or shares a lease
// (see Lease). A Decoder is safe for concurrent use; the zero value is
// ready.
type Decoder struct {
	resCache   shared[Resource]
	scopeCache shared[Scope]
}

const (
	// maxDecoderEntries bounds each of a Decoder's caches; a full cache
	// starts over.
	maxDecoderEntries = 1024
	// maxSharedSize bounds the resources and scopes shared: a shared value
	// keeps a copy of its encoding and schema URL, up to this many bytes.
	maxSharedSize = 16 << 10
)

func (c *Decoder) resources() *shared[Resource] {
	if c == nil {
		return nil
	}
	return &c.resCache
}

func (c *Decoder) scopes() *shared[Scope] {
	if c == nil {
		return nil
	}
	return &c.scopeCache
}

// shared maps an encoded message and its schema URL to its decoded value.
// A nil *shared finds nothing and keeps nothing.
type shared[T any] struct {
	mu  sync.Mutex
	m   map[string]*T
	key []byte // scratch, under mu
}

// keyOf builds the lookup key of a message and schema URL in s.key. A nil
// msg (absent) and an empty one (present, all defaults) differ.
func (s *shared[T]) keyOf(msg, schema []byte) []byte {
	s.key = binary.AppendUvarint(s.key[:0], uint64(len(schema)))
	s.key = append(s.key, schema...)
	if msg != nil {
		s.key = append(s.key, 1)
	}
	s.key = append(s.key, msg...) // kept: the next key reuses the buffer
	return s.key
}

func (s *shared[T]) get(msg, schema []byte) *T {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[string(s.keyOf(msg, schema))]
}

// keeps reports whether put keeps a value of msg and schema.
func (s *shared[T]) keeps(msg, schema []byte) bool {
	return s != nil && len(msg)+len(schema) <= maxSharedSize
}

// put shares v, decoded from msg and schema. v outlives the record they
// came from, so they must be a copy made for it (see decodeShared).
func (s *shared[T]) put(msg, schema []byte, v *T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil || len(s.m) >= maxDecoderEntries {
		s.m = make(map[string]*T, 64)
	}
	s.m[string(s.keyOf(msg, schema))] = v
}
