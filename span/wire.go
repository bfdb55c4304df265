package span

import (
	"bytes"
	"errors"
	"fmt"

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
	mLogsData
	mResourceLogs
	mScopeLogs
	mLogRecord
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
	mLogsData: {"LogsData", []fieldSpec{
		1: msg("resource_logs", mResourceLogs),
	}},
	mResourceLogs: {"ResourceLogs", []fieldSpec{
		1: msg("resource", mResource),
		2: msg("scope_logs", mScopeLogs),
		3: str("schema_url"),
	}},
	mScopeLogs: {"ScopeLogs", []fieldSpec{
		1: msg("scope", mScope),
		2: msg("log_records", mLogRecord),
		3: str("schema_url"),
	}},
	mLogRecord: {"LogRecord", []fieldSpec{
		1:  scalar("time_unix_nano", kFixed64),
		2:  scalar("severity_number", kVarint),
		3:  str("severity_text"),
		5:  msg("body", mAnyValue),
		6:  msg("attributes", mKeyValue),
		7:  scalar("dropped_attributes_count", kVarint),
		8:  scalar("flags", kFixed32),
		9:  scalar("trace_id", kBytes),
		10: scalar("span_id", kBytes),
		11: scalar("observed_time_unix_nano", kFixed64),
		12: str("event_name"),
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

// field is the compact form of fieldSpec used on the hot path.
type field struct {
	kind fieldKind
	msg  msgType
}

// fastSchemas is schemas without the names, two bytes a field, so that the
// per-field lookup on the hot path touches little memory.
var fastSchemas = func() (out [numMsgTypes][]field) {
	for t, sc := range schemas {
		out[t] = make([]field, len(sc.fields))
		for i, f := range sc.fields {
			out[t][i] = field{f.kind, f.msg}
		}
	}
	return out
}()

var wireTypes = [...]protowire.Type{
	kVarint: protowire.VarintType, kFixed32: protowire.Fixed32Type, kFixed64: protowire.Fixed64Type,
	kBytes: protowire.BytesType, kString: protowire.BytesType, kMessage: protowire.BytesType,
}

// next is the hot-path field parser: like nextField but it reports any error
// as n < 0; fieldErr then re-parses the field to say what was wrong. One-byte
// tags and lengths, nearly all of OTLP, skip the general varint decoder.
func next(b []byte, t msgType) (num protowire.Number, f field, val []byte, n int) {
	var tag uint64
	tn := 1
	if len(b) > 0 && b[0] < 0x80 {
		tag = uint64(b[0])
	} else if tag, tn = protowire.ConsumeVarint(b); tn < 0 {
		return 0, f, nil, -1
	}
	if tag>>3 < uint64(protowire.MinValidNumber) || tag>>3 > uint64(protowire.MaxValidNumber) {
		return 0, f, nil, -1
	}
	num, typ := protowire.Number(tag>>3), protowire.Type(tag&7)
	if fs := fastSchemas[t]; int(num) < len(fs) {
		f = fs[num]
	}
	if f.kind == kUnknown {
		m := protowire.ConsumeFieldValue(num, typ, b[tn:])
		if m < 0 {
			return 0, f, nil, -1
		}
		return num, f, b[tn : tn+m], tn + m
	}
	if typ != wireTypes[f.kind] {
		return 0, f, nil, -1
	}
	rest := b[tn:]
	switch typ {
	case protowire.BytesType:
		if len(rest) > 0 && rest[0] < 0x80 {
			l := int(rest[0])
			if l+1 > len(rest) {
				return 0, f, nil, -1
			}
			return num, f, rest[1 : 1+l], tn + 1 + l
		}
		v, m := protowire.ConsumeBytes(rest)
		if m < 0 {
			return 0, f, nil, -1
		}
		return num, f, v, tn + m
	case protowire.Fixed32Type:
		if len(rest) < 4 {
			return 0, f, nil, -1
		}
		return num, f, rest[:4], tn + 4
	case protowire.Fixed64Type:
		if len(rest) < 8 {
			return 0, f, nil, -1
		}
		return num, f, rest[:8], tn + 8
	default:
		_, m := protowire.ConsumeVarint(rest)
		if m < 0 {
			return 0, f, nil, -1
		}
		return num, f, rest[:m], tn + m
	}
}

// fieldErr describes why next failed on b.
func fieldErr(b []byte, t msgType) error {
	if _, _, _, _, _, err := nextField(b, t); err != nil {
		return err
	}
	return malformed("%s: bad field", schemas[t].name)
}

func fieldName(t msgType, num protowire.Number) string { return schemas[t].fields[num].name }

// wrapPath prefixes err with the field it occurred in. Only the outer levels
// are named: wrapping at every level of a hostile, deeply nested message would
// build quadratically long error strings.
func wrapPath(err error, t msgType, num protowire.Number, depth int) error {
	if depth > 8 {
		return err
	}
	return fmt.Errorf("%s.%s: %w", schemas[t].name, fieldName(t, num), err)
}

// scan walks message b of type t, checking its structure, and reports whether
// any known string field in it (recursively) is invalid UTF-8.
func scan(b []byte, t msgType, depth int) (badUTF8 bool, err error) {
	if depth > maxDepth {
		return false, malformed("%s: nesting deeper than %d", schemas[t].name, maxDepth)
	}
	for len(b) > 0 {
		num, f, val, n := next(b, t)
		if n < 0 {
			return false, fieldErr(b, t)
		}
		b = b[n:]
		switch f.kind {
		case kString:
			if !validUTF8(val) {
				badUTF8 = true
			}
		case kMessage:
			bad, err := scanMsg(val, f.msg, depth+1)
			if err != nil {
				return false, wrapPath(err, t, num, depth)
			}
			badUTF8 = badUTF8 || bad
		}
	}
	return badUTF8, nil
}

// scanMsg is scan with a fast path for attributes.
func scanMsg(b []byte, t msgType, depth int) (badUTF8 bool, err error) {
	if t == mKeyValue {
		return scanKeyValue(b, depth)
	}
	return scan(b, t, depth)
}

// scanKeyValue is scan for the commonest message in OTLP, an attribute, in
// its commonest shape: a key and a scalar value, one-byte tags and lengths.
// Anything else goes to the general scan.
func scanKeyValue(b []byte, depth int) (badUTF8 bool, err error) {
	for p := b; len(p) > 0; {
		if len(p) < 2 || (p[0] != 0x0a && p[0] != 0x12) || p[1] >= 0x80 || int(p[1])+2 > len(p) {
			return scan(b, mKeyValue, depth)
		}
		v := p[2 : 2+int(p[1])]
		if p[0] == 0x0a { // key
			if !validUTF8(v) {
				badUTF8 = true
			}
		} else if !scalarAnyValue(v, &badUTF8) { // value
			return scan(b, mKeyValue, depth)
		}
		p = p[2+int(p[1]):]
	}
	return badUTF8, nil
}

// scalarAnyValue handles an AnyValue holding a single string (short), bool,
// int or double. It reports false when the value needs the general scan.
func scalarAnyValue(v []byte, badUTF8 *bool) bool {
	if len(v) == 0 {
		return true
	}
	switch v[0] {
	case 0x0a: // string_value
		if len(v) < 2 || v[1] >= 0x80 || int(v[1])+2 != len(v) {
			return false
		}
		if !validUTF8(v[2:]) {
			*badUTF8 = true
		}
		return true
	case 0x10, 0x18: // bool_value, int_value
		_, n := protowire.ConsumeVarint(v[1:])
		return n > 0 && n+1 == len(v)
	case 0x21: // double_value
		return len(v) == 9
	}
	return false
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
		num, f, val, n := next(b, t)
		if n < 0 {
			return dst, fixed, fieldErr(b, t)
		}
		switch {
		case f.kind == kString && !validUTF8(val):
			dst = protowire.AppendTag(dst, num, protowire.BytesType)
			dst = protowire.AppendBytes(dst, bytes.ToValidUTF8(val, []byte("\uFFFD")))
			fixed++
		case f.kind == kMessage:
			bad, err := scan(val, f.msg, depth+1)
			if err != nil {
				return dst, fixed, wrapPath(err, t, num, depth)
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
	return repairUTF8(data, mTracesData)
}

// repairUTF8 is RepairUTF8TracesData for a message of any top-level type.
func repairUTF8(data []byte, t msgType) ([]byte, int, error) {
	bad, err := scan(data, t, 0)
	if err != nil {
		return nil, 0, err
	}
	if !bad {
		return data, 0, nil
	}
	out, n, err := repair(make([]byte, 0, len(data)+64), data, t, 0)
	if err != nil {
		return nil, 0, err
	}
	return out, n, nil
}
