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

// intAttrs hands out int attributes carved from one slab, so stamping every
// span of a trace costs one allocation instead of three per span, and grows
// full attribute lists from a second slab instead of one allocation each
// (spans fresh off the wire have exactly full lists, or none while their
// attributes are deferred). The slabs live as long as the trace's spans,
// which is what they are for.
type intAttrs struct {
	free  []intKeyValue
	lists []*commonpb.KeyValue
}

// intKeyValue is one attribute with its value, allocated together.
type intKeyValue struct {
	kv  commonpb.KeyValue
	val commonpb.AnyValue
	iv  commonpb.AnyValue_IntValue
}

// newIntAttrs makes room for n attributes and lists of lists elements in all
// (see set).
func newIntAttrs(n, lists int) intAttrs {
	return intAttrs{free: make([]intKeyValue, n), lists: make([]*commonpb.KeyValue, lists)}
}

// set sets key to v on sp, replacing an existing value (which makes
// sp.Wire stale). It must be called at most n times (the slab size). A list
// that must grow is grown by room (this attribute and any to be set next),
// from the lists slab while it lasts.
func (a *intAttrs) set(sp *span.Span, key string, v int64, room int) {
	s := sp.Span
	if s == nil {
		return
	}
	at := &a.free[0]
	a.free = a.free[1:]
	at.iv.IntValue = v
	at.val.Value = &at.iv
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			kv.Value = &at.val
			sp.ForgetWire()
			return
		}
	}
	at.kv.Key, at.kv.Value = key, &at.val
	if n := len(s.Attributes) + room; len(s.Attributes) == cap(s.Attributes) && n <= len(a.lists) {
		s.Attributes = append(a.lists[:0:n], s.Attributes...)
		a.lists = a.lists[n:]
	}
	s.Attributes = append(s.Attributes, &at.kv)
}
