package span

import (
	"bytes"
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// ErrMalformed reports bytes that are not a structurally valid OTLP protobuf
// message: truncated input, a bad length, an invalid tag, or a known field sent
// with the wrong wire type. Callers reject the whole request (HTTP 400, gRPC
// InvalidArgument) because nothing in it can be trusted.
var ErrMalformed = errors.New("malformed OTLP protobuf")

// The wire walkers below know just enough of the OTLP schema to find every
// string (proto3 requires UTF-8 there, and Go's proto.Unmarshal rejects the
// whole message otherwise) and every nested message. Field numbers come from
// the struct tags of go.opentelemetry.io/proto/otlp v1.11.1; fields not listed
// are treated as unknown and carried through byte for byte.

type msgType uint8

const (
	mTracesData msgType = iota
	mResourceSpans
	mScopeSpans
	mSpan
	mEvent
	mLink
	mStatus
	mResource
	mEntityRef
	mScope
	mKeyValue
	mAnyValue
	mArrayValue
	mKeyValueList
	numMsgTypes
)

type fieldKind uint8

const (
	kUnknown fieldKind = iota
	kVarint
	kFixed32
	kFixed64
	kBytes
	kString
	kMessage
)

func (k fieldKind) wireType() protowire.Type {
	switch k {
	case kVarint:
		return protowire.VarintType
	case kFixed32:
		return protowire.Fixed32Type
	case kFixed64:
		return protowire.Fixed64Type
	default:
		return protowire.BytesType
	}
}

type fieldSpec struct {
	name string
	kind fieldKind
	msg  msgType // for kMessage
}

type msgSchema struct {
	name   string
	fields []fieldSpec // indexed by field number
}

func str(name string) fieldSpec            { return fieldSpec{name: name, kind: kString} }
func msg(name string, t msgType) fieldSpec { return fieldSpec{name: name, kind: kMessage, msg: t} }
func scalar(name string, k fieldKind) fieldSpec {
	return fieldSpec{name: name, kind: k}
}

// schemas is an immutable lookup table, indexed by msgType.
var schemas = [numMsgTypes]msgSchema{
	mTracesData: {"TracesData", []fieldSpec{
		1: msg("resource_spans", mResourceSpans),
	}},
	mResourceSpans: {"ResourceSpans", []fieldSpec{
		1: msg("resource", mResource),
		2: msg("scope_spans", mScopeSpans),
		3: str("schema_url"),
	}},
	mScopeSpans: {"ScopeSpans", []fieldSpec{
		1: msg("scope", mScope),
		2: msg("spans", mSpan),
		3: str("schema_url"),
	}},
	mSpan: {"Span", []fieldSpec{
		1:  scalar("trace_id", kBytes),
		2:  scalar("span_id", kBytes),
		3:  str("trace_state"),
		4:  scalar("parent_span_id", kBytes),
		5:  str("name"),
		6:  scalar("kind", kVarint),
		7:  scalar("start_time_unix_nano", kFixed64),
		8:  scalar("end_time_unix_nano", kFixed64),
		9:  msg("attributes", mKeyValue),
		10: scalar("dropped_attributes_count", kVarint),
		11: msg("events", mEvent),
		12: scalar("dropped_events_count", kVarint),
		13: msg("links", mLink),
		14: scalar("dropped_links_count", kVarint),
		15: msg("status", mStatus),
		16: scalar("flags", kFixed32),
	}},
	mEvent: {"Span.Event", []fieldSpec{
		1: scalar("time_unix_nano", kFixed64),
		2: str("name"),
		3: msg("attributes", mKeyValue),
		4: scalar("dropped_attributes_count", kVarint),
	}},
	mLink: {"Span.Link", []fieldSpec{
		1: scalar("trace_id", kBytes),
		2: scalar("span_id", kBytes),
		3: str("trace_state"),
		4: msg("attributes", mKeyValue),
		5: scalar("dropped_attributes_count", kVarint),
		6: scalar("flags", kFixed32),
	}},
	mStatus: {"Status", []fieldSpec{
		2: str("message"),
		3: scalar("code", kVarint),
	}},
	mResource: {"Resource", []fieldSpec{
		1: msg("attributes", mKeyValue),
		2: scalar("dropped_attributes_count", kVarint),
		3: msg("entity_refs", mEntityRef),
	}},
	mEntityRef: {"EntityRef", []fieldSpec{
		1: str("schema_url"),
		2: str("type"),
		3: str("id_keys"),
		4: str("description_keys"),
	}},
	mScope: {"InstrumentationScope", []fieldSpec{
		1: str("name"),
		2: str("version"),
		3: msg("attributes", mKeyValue),
		4: scalar("dropped_attributes_count", kVarint),
	}},
	mKeyValue: {"KeyValue", []fieldSpec{
		1: str("key"),
		2: msg("value", mAnyValue),
		3: scalar("key_strindex", kVarint),
	}},
	mAnyValue: {"AnyValue", []fieldSpec{
		1: str("string_value"),
		2: scalar("bool_value", kVarint),
		3: scalar("int_value", kVarint),
		4: scalar("double_value", kFixed64),
		5: msg("array_value", mArrayValue),
		6: msg("kvlist_value", mKeyValueList),
		7: scalar("bytes_value", kBytes),
		8: scalar("string_value_strindex", kVarint),
	}},
	mArrayValue: {"ArrayValue", []fieldSpec{
		1: msg("values", mAnyValue),
	}},
	mKeyValueList: {"KeyValueList", []fieldSpec{
		1: msg("values", mKeyValue),
	}},
}

func (t msgType) field(num protowire.Number) fieldSpec {
	fs := schemas[t].fields
	if int(num) < len(fs) {
		return fs[num]
	}
	return fieldSpec{}
}

// maxDepth matches proto.Unmarshal's default recursion limit so that the walk
// rejects what the indexer's decoder would reject, and cannot blow the stack.
const maxDepth = protowire.DefaultRecursionLimit

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// nextField parses one field at b: its number, wire type, the field's value
// (the payload for BytesType, the raw value otherwise) and the total length
// including the tag. Unknown fields may use any wire type, groups included;
// known fields must use the wire type their schema says.
func nextField(b []byte, t msgType) (num protowire.Number, typ protowire.Type, f fieldSpec, val []byte, n int, err error) {
	num, typ, tn := protowire.ConsumeTag(b)
	if tn < 0 {
		return 0, 0, f, nil, 0, malformed("%s: bad tag: %v", schemas[t].name, protowire.ParseError(tn))
	}
	if num > protowire.MaxValidNumber {
		return 0, 0, f, nil, 0, malformed("%s: field number %d out of range", schemas[t].name, num)
	}
	f = t.field(num)
	if f.kind == kUnknown {
		m := protowire.ConsumeFieldValue(num, typ, b[tn:])
		if m < 0 {
			return 0, 0, f, nil, 0, malformed("%s: unknown field %d: %v", schemas[t].name, num, protowire.ParseError(m))
		}
		return num, typ, f, b[tn : tn+m], tn + m, nil
	}
	if want := f.kind.wireType(); typ != want {
		return 0, 0, f, nil, 0, malformed("%s.%s: wire type %d, want %d", schemas[t].name, f.name, typ, want)
	}
	var m int
	switch typ {
	case protowire.BytesType:
		val, m = protowire.ConsumeBytes(b[tn:])
	default:
		m = protowire.ConsumeFieldValue(num, typ, b[tn:])
		if m >= 0 {
			val = b[tn : tn+m]
		}
	}
	if m < 0 {
		return 0, 0, f, nil, 0, malformed("%s.%s: %v", schemas[t].name, f.name, protowire.ParseError(m))
	}
	return num, typ, f, val, tn + m, nil
}

// scan walks message b of type t, checking its structure, and reports whether
// any known string field in it (recursively) is invalid UTF-8.
func scan(b []byte, t msgType, depth int) (badUTF8 bool, err error) {
	if depth > maxDepth {
		return false, malformed("%s: nesting deeper than %d", schemas[t].name, maxDepth)
	}
	for len(b) > 0 {
		_, _, f, val, n, err := nextField(b, t)
		if err != nil {
			return false, err
		}
		b = b[n:]
		switch f.kind {
		case kString:
			if !utf8.Valid(val) {
				badUTF8 = true
			}
		case kMessage:
			bad, err := scan(val, f.msg, depth+1)
			if err != nil {
				return false, fmt.Errorf("%s.%s: %w", schemas[t].name, f.name, err)
			}
			badUTF8 = badUTF8 || bad
		}
	}
	return badUTF8, nil
}

// repair appends message b of type t to dst with every invalid UTF-8 string
// replaced by strings.ToValidUTF8(s, "\uFFFD"). Subtrees without invalid strings
// are copied byte for byte, so unknown fields and field order survive. It
// returns the number of strings replaced.
func repair(dst, b []byte, t msgType, depth int) ([]byte, int, error) {
	if depth > maxDepth {
		return dst, 0, malformed("%s: nesting deeper than %d", schemas[t].name, maxDepth)
	}
	fixed := 0
	for len(b) > 0 {
		num, _, f, val, n, err := nextField(b, t)
		if err != nil {
			return dst, fixed, err
		}
		switch {
		case f.kind == kString && !utf8.Valid(val):
			dst = protowire.AppendTag(dst, num, protowire.BytesType)
			dst = protowire.AppendBytes(dst, bytes.ToValidUTF8(val, []byte("\uFFFD")))
			fixed++
		case f.kind == kMessage:
			bad, err := scan(val, f.msg, depth+1)
			if err != nil {
				return dst, fixed, fmt.Errorf("%s.%s: %w", schemas[t].name, f.name, err)
			}
			if !bad {
				dst = append(dst, b[:n]...)
				break
			}
			child, c, err := repair(make([]byte, 0, len(val)+8), val, f.msg, depth+1)
			if err != nil {
				return dst, fixed, err
			}
			dst = protowire.AppendTag(dst, num, protowire.BytesType)
			dst = protowire.AppendBytes(dst, child)
			fixed += c
		default:
			dst = append(dst, b[:n]...)
		}
		b = b[n:]
	}
	return dst, fixed, nil
}

// RepairUTF8TracesData returns data (an encoded TracesData or
// ExportTraceServiceRequest) with every invalid UTF-8 string field replaced by
// its strings.ToValidUTF8(s, "\uFFFD") form, and the number of strings
// replaced. When nothing needs repair it returns data itself and 0. Malformed
// input gives an error wrapping ErrMalformed.
func RepairUTF8TracesData(data []byte) ([]byte, int, error) {
	bad, err := scan(data, mTracesData, 0)
	if err != nil {
		return nil, 0, err
	}
	if !bad {
		return data, 0, nil
	}
	out, n, err := repair(make([]byte, 0, len(data)+64), data, mTracesData, 0)
	if err != nil {
		return nil, 0, err
	}
	return out, n, nil
}
