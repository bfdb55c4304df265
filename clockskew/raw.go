package clockskew

import (
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/threadline/threadline/span"
)

// Raw undoes Adjust in place: every span carrying AttrClockSkew is shifted
// back by that offset, and AttrClockSkew and AttrLogicalTime are removed, so
// the trace reads as it was received. Adjust records only the offset because
// the original start is start − offset; nothing else needs storing.
func Raw(t *span.Trace) {
	for i := range t.Spans {
		unadjust(&t.Spans[i])
	}
}

// unadjust restores one span and strips the attributes Adjust wrote.
func unadjust(sp *span.Span) {
	s := sp.Span
	if s == nil {
		return
	}
	strip := false
	for _, kv := range s.GetAttributes() {
		// Deferred attributes need no look: none is reserved.
		strip = strip || kv.GetKey() == AttrClockSkew || kv.GetKey() == AttrLogicalTime
	}
	if !strip {
		return
	}
	sp.ForgetWire() // the list below is then whole
	attrs := s.GetAttributes()
	kept := attrs[:0]
	var o int64
	for _, kv := range attrs {
		switch kv.GetKey() {
		case AttrClockSkew:
			o = kv.GetValue().GetIntValue()
		case AttrLogicalTime:
		default:
			kept = append(kept, kv)
		}
	}
	clear(attrs[len(kept):]) // drop references for the GC
	s.Attributes = kept
	if len(kept) == 0 {
		s.Attributes = nil // as received: OTLP decodes an empty list as nil
	}
	if o != 0 {
		shift(s, -o)
	}
}

// shift moves the span's start, end and event timestamps by o nanoseconds.
// Unset (zero) event timestamps stay unset.
func shift(s *tracepb.Span, o int64) {
	s.StartTimeUnixNano = uint64(int64(s.StartTimeUnixNano) + o)
	s.EndTimeUnixNano = uint64(int64(s.EndTimeUnixNano) + o)
	for _, e := range s.GetEvents() {
		if e.GetTimeUnixNano() != 0 {
			e.TimeUnixNano = uint64(int64(e.TimeUnixNano) + o)
		}
	}
}

// intAttrs hands out int attributes carved from three slabs, so marking every
// span of a trace costs three allocations instead of three per span. The
// slabs live as long as the trace's spans, which is what they are for.
type intAttrs struct {
	kvs  []commonpb.KeyValue
	vals []commonpb.AnyValue
	ints []commonpb.AnyValue_IntValue
}

func newIntAttrs(n int) *intAttrs {
	return &intAttrs{
		kvs:  make([]commonpb.KeyValue, n),
		vals: make([]commonpb.AnyValue, n),
		ints: make([]commonpb.AnyValue_IntValue, n),
	}
}

// set sets key to v on sp, replacing an existing value (which makes
// sp.Wire stale). It must be called at most n times (the slab size).
func (a *intAttrs) set(sp *span.Span, key string, v int64) {
	s := sp.Span
	if s == nil {
		return
	}
	iv := &a.ints[0]
	iv.IntValue = v
	val := &a.vals[0]
	val.Value = iv
	a.ints, a.vals = a.ints[1:], a.vals[1:]
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			kv.Value = val
			sp.ForgetWire()
			return
		}
	}
	kv := &a.kvs[0]
	a.kvs = a.kvs[1:]
	kv.Key, kv.Value = key, val
	s.Attributes = append(s.Attributes, kv)
}
