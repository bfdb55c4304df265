package index

import (
	"errors"
	"math"
	"unicode/utf8"

	"github.com/threadline/threadline/span"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
)

// A hand-written encoder for the stored span body. protobuf-go's generic
// marshal walks a span twice (sizes, then bytes) through per-field coder
// tables, which was the largest single CPU cost of a write (about 3 µs for
// a span with ten attributes). This one produces the same bytes as
// proto.Marshal (fields in number order, proto3 zero values omitted, oneof
// members always present; TestSpanBodyMatchesProto and FuzzSpanBody check
// it) and gives up, so that the caller uses protobuf-go for the span, on
// anything it does not handle the same way: unknown fields (except on
// KeyValue, see keyValueSize), nil list
// elements, invalid UTF-8 (protobuf-go's error is the one to return), and
// array, map and bytes attribute values.

// errSlowPath sends a span to protobuf-go.
var errSlowPath = errors.New("span needs the generic encoder")

// Field numbers of the OTLP messages a span body holds.
const (
	spanTraceID           = 1
	spanSpanID            = 2
	spanTraceState        = 3
	spanParentSpanID      = 4
	spanName              = 5
	spanKind              = 6
	spanStart             = 7
	spanEnd               = 8
	spanAttributes        = 9
	spanDroppedAttributes = 10
	spanEvents            = 11
	spanDroppedEvents     = 12
	spanLinks             = 13
	spanDroppedLinks      = 14
	spanStatus            = 15
	spanFlags             = 16

	eventTime              = 1
	eventName              = 2
	eventAttributes        = 3
	eventDroppedAttributes = 4

	linkTraceID           = 1
	linkSpanID            = 2
	linkTraceState        = 3
	linkAttributes        = 4
	linkDroppedAttributes = 5
	linkFlags             = 6

	statusMessage = 2
	statusCode    = 3

	kvKey   = 1
	kvValue = 2

	anyString = 1
	anyBool   = 2
	anyInt    = 3
	anyDouble = 4
)

// fastAppendSpanBody appends sp without trace_id and span_id, or returns
// errSlowPath with dst unchanged in length.
func fastAppendSpanBody(dst []byte, sp *tracepb.Span) ([]byte, error) {
	if len(sp.ProtoReflect().GetUnknown()) > 0 {
		return dst, errSlowPath
	}
	start := len(dst)
	var err error
	dst = appendStringField(dst, spanTraceState, sp.TraceState, &err)
	dst = appendBytesField(dst, spanParentSpanID, sp.ParentSpanId)
	dst = appendStringField(dst, spanName, sp.Name, &err)
	dst = appendVarintField(dst, spanKind, uint64(sp.Kind))
	dst = appendFixed64Field(dst, spanStart, sp.StartTimeUnixNano)
	dst = appendFixed64Field(dst, spanEnd, sp.EndTimeUnixNano)
	dst = appendKeyValues(dst, spanAttributes, sp.Attributes, &err)
	dst = appendVarintField(dst, spanDroppedAttributes, uint64(sp.DroppedAttributesCount))
	for _, e := range sp.Events {
		if e == nil || len(e.ProtoReflect().GetUnknown()) > 0 {
			return dst[:start], errSlowPath
		}
		n := fixed64Size(eventTime, e.TimeUnixNano) + stringSize(eventName, e.Name) +
			keyValuesSize(eventAttributes, e.Attributes) + varintSize(eventDroppedAttributes, uint64(e.DroppedAttributesCount))
		dst = protowire.AppendTag(dst, spanEvents, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(n))
		dst = appendFixed64Field(dst, eventTime, e.TimeUnixNano)
		dst = appendStringField(dst, eventName, e.Name, &err)
		dst = appendKeyValues(dst, eventAttributes, e.Attributes, &err)
		dst = appendVarintField(dst, eventDroppedAttributes, uint64(e.DroppedAttributesCount))
	}
	dst = appendVarintField(dst, spanDroppedEvents, uint64(sp.DroppedEventsCount))
	for _, l := range sp.Links {
		if l == nil || len(l.ProtoReflect().GetUnknown()) > 0 {
			return dst[:start], errSlowPath
		}
		n := bytesSize(linkTraceID, l.TraceId) + bytesSize(linkSpanID, l.SpanId) + stringSize(linkTraceState, l.TraceState) +
			keyValuesSize(linkAttributes, l.Attributes) + varintSize(linkDroppedAttributes, uint64(l.DroppedAttributesCount)) +
			fixed32Size(linkFlags, l.Flags)
		dst = protowire.AppendTag(dst, spanLinks, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(n))
		dst = appendBytesField(dst, linkTraceID, l.TraceId)
		dst = appendBytesField(dst, linkSpanID, l.SpanId)
		dst = appendStringField(dst, linkTraceState, l.TraceState, &err)
		dst = appendKeyValues(dst, linkAttributes, l.Attributes, &err)
		dst = appendVarintField(dst, linkDroppedAttributes, uint64(l.DroppedAttributesCount))
		dst = appendFixed32Field(dst, linkFlags, l.Flags)
	}
	dst = appendVarintField(dst, spanDroppedLinks, uint64(sp.DroppedLinksCount))
	if st := sp.Status; st != nil {
		if len(st.ProtoReflect().GetUnknown()) > 0 {
			return dst[:start], errSlowPath
		}
		n := stringSize(statusMessage, st.Message) + varintSize(statusCode, uint64(st.Code))
		dst = protowire.AppendTag(dst, spanStatus, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(n))
		dst = appendStringField(dst, statusMessage, st.Message, &err)
		dst = appendVarintField(dst, statusCode, uint64(st.Code))
	}
	dst = appendFixed32Field(dst, spanFlags, sp.Flags)
	if err != nil {
		return dst[:start], err
	}
	return dst, nil
}

// Sizes of whole fields (tag included); zero values of proto3 scalars are
// not encoded. Enums and int32 counts are varints of their uint64 value
// (negative enums sign-extend, as protobuf-go does).
func varintSize(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func fixed64Size(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + 8
}

func fixed32Size(num protowire.Number, v uint32) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + 4
}

func bytesSize(num protowire.Number, b []byte) int {
	if len(b) == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(b))
}

func stringSize(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

func appendVarintField(dst []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return dst
	}
	return protowire.AppendVarint(protowire.AppendTag(dst, num, protowire.VarintType), v)
}

func appendFixed64Field(dst []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return dst
	}
	return protowire.AppendFixed64(protowire.AppendTag(dst, num, protowire.Fixed64Type), v)
}

func appendFixed32Field(dst []byte, num protowire.Number, v uint32) []byte {
	if v == 0 {
		return dst
	}
	return protowire.AppendFixed32(protowire.AppendTag(dst, num, protowire.Fixed32Type), v)
}

func appendBytesField(dst []byte, num protowire.Number, b []byte) []byte {
	if len(b) == 0 {
		return dst
	}
	return protowire.AppendBytes(protowire.AppendTag(dst, num, protowire.BytesType), b)
}

// appendStringField appends a non-empty string, setting *err to
// errSlowPath for invalid UTF-8.
func appendStringField(dst []byte, num protowire.Number, s string, err *error) []byte {
	if s == "" {
		return dst
	}
	if !utf8.ValidString(s) {
		*err = errSlowPath
	}
	return protowire.AppendString(protowire.AppendTag(dst, num, protowire.BytesType), s)
}

// anyValueSize is the size of an AnyValue message body, or -1 when the
// value is one the fast path leaves to protobuf-go.
func anyValueSize(v *commonpb.AnyValue) int {
	switch x := v.Value.(type) {
	case nil:
		// A oneof member newer than our OTLP version arrives as an unknown
		// field of an AnyValue without a value.
		if len(v.ProtoReflect().GetUnknown()) > 0 {
			return -1
		}
		return 0
	case *commonpb.AnyValue_StringValue:
		return protowire.SizeTag(anyString) + protowire.SizeBytes(len(x.StringValue))
	case *commonpb.AnyValue_BoolValue:
		return protowire.SizeTag(anyBool) + 1
	case *commonpb.AnyValue_IntValue:
		return protowire.SizeTag(anyInt) + protowire.SizeVarint(uint64(x.IntValue))
	case *commonpb.AnyValue_DoubleValue:
		return protowire.SizeTag(anyDouble) + 8
	}
	return -1
}

// keyValueSize is the size of a KeyValue message body, or -1 (see
// anyValueSize).
func keyValueSize(kv *commonpb.KeyValue) int {
	// Unknown fields of a KeyValue itself are not looked for: the check
	// costs a third of the encoding, and KeyValue has not changed since
	// OTLP 0.x. (Span, Event, Link, Status and AnyValue are checked.)
	if kv == nil {
		return -1
	}
	n := stringSize(kvKey, kv.Key)
	if kv.Value != nil {
		vn := anyValueSize(kv.Value)
		if vn < 0 {
			return -1
		}
		n += protowire.SizeTag(kvValue) + protowire.SizeBytes(vn)
	}
	return n
}

// keyValuesSize is the size of a repeated KeyValue field, negative if
// appendKeyValues will give up on the list (the output is then discarded).
func keyValuesSize(num protowire.Number, kvs []*commonpb.KeyValue) int {
	n := 0
	for _, kv := range kvs {
		s := keyValueSize(kv)
		if s < 0 {
			return math.MinInt32
		}
		n += protowire.SizeTag(num) + protowire.SizeBytes(s)
	}
	return n
}

// appendKeyValues appends a repeated KeyValue field; on a value it does not
// handle it sets *err to errSlowPath.
func appendKeyValues(dst []byte, num protowire.Number, kvs []*commonpb.KeyValue, err *error) []byte {
	for _, kv := range kvs {
		n := keyValueSize(kv)
		if n < 0 {
			*err = errSlowPath
			return dst
		}
		dst = protowire.AppendTag(dst, num, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(n))
		dst = appendStringField(dst, kvKey, kv.Key, err)
		if kv.Value == nil {
			continue
		}
		dst = protowire.AppendTag(dst, kvValue, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(anyValueSize(kv.Value)))
		switch x := kv.Value.Value.(type) {
		case *commonpb.AnyValue_StringValue:
			if !utf8.ValidString(x.StringValue) {
				*err = errSlowPath
			}
			dst = protowire.AppendString(protowire.AppendTag(dst, anyString, protowire.BytesType), x.StringValue)
		case *commonpb.AnyValue_BoolValue:
			dst = protowire.AppendVarint(protowire.AppendTag(dst, anyBool, protowire.VarintType), protowire.EncodeBool(x.BoolValue))
		case *commonpb.AnyValue_IntValue:
			dst = protowire.AppendVarint(protowire.AppendTag(dst, anyInt, protowire.VarintType), uint64(x.IntValue))
		case *commonpb.AnyValue_DoubleValue:
			dst = protowire.AppendFixed64(protowire.AppendTag(dst, anyDouble, protowire.Fixed64Type), math.Float64bits(x.DoubleValue))
		}
	}
	return dst
}

// appendWireBody appends a span's body from its received encoding (see
// span.Span.Wire): every field but trace_id and span_id copied as it is,
// then the attributes appended to the span since it was decoded. That is
// the same span appendSpanBody encodes, at the cost of a copy. It returns
// false, with dst unchanged in length, when wire does not parse or holds
// more attributes than the span.
func appendWireBody(dst []byte, sp span.Span) ([]byte, bool) {
	wire := sp.Wire
	start := len(dst)
	if body, ok := sp.WireBody(); ok {
		// The decoder found the IDs leading: the rest is copied whole.
		dst = append(dst, body...)
		var err error
		if dst = appendKeyValues(dst, spanAttributes, sp.Attributes, &err); err != nil {
			return dst[:start], false
		}
		return dst, true
	}
	nattrs := 0
	run := 0 // start of the fields not yet copied
	for i := 0; i < len(wire); {
		num, typ, n := span.ConsumeField(wire[i:])
		if n < 0 {
			return dst[:start], false
		}
		switch {
		case (num == spanTraceID || num == spanSpanID) && typ == protowire.BytesType: // in the chunk key and entry
			dst = append(dst, wire[run:i]...)
			run = i + n
		case num == spanAttributes && typ == protowire.BytesType:
			nattrs++
		}
		i += n
	}
	dst = append(dst, wire[run:]...)
	appended := sp.Attributes // the received ones are deferred, only in wire
	if !sp.AttrsDeferred() {
		if nattrs > len(sp.Attributes) {
			return dst[:start], false
		}
		appended = sp.Attributes[nattrs:]
	}
	var err error
	dst = appendKeyValues(dst, spanAttributes, appended, &err)
	if err != nil {
		return dst[:start], false
	}
	return dst, true
}
