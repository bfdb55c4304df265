package span

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// OTLP/JSON is the proto3 JSON mapping with one exception that protojson does
// not know: trace and span IDs are hex strings, not base64. Every hex digit is
// also a base64 character, so protojson happily decodes a 32-digit hex trace
// ID as base64 into 24 bytes (16 digits into 12 bytes), and StdEncoding of
// those bytes gives the original digits back. FixJSONIDs undoes that after
// protojson.Unmarshal; the inverse trick prepares messages for
// protojson.Marshal. The mapping is exact: 32 base64 characters without
// padding carry no spare bits, so no hex string is lost or altered.

// idHexLen is the hex length of the ID fields OTLP encodes as hex in JSON, by
// proto field name; the names are the same in traces, logs and metric
// exemplars.
func idHexLen(name protoreflect.Name) int {
	switch name {
	case "trace_id":
		return 32
	case "span_id", "parent_span_id":
		return 16
	}
	return 0
}

// FixJSONIDs rewrites, in place, every bytes field named trace_id, span_id or
// parent_span_id in m (recursively) from what protojson decoded (base64 of the
// OTLP/JSON hex string) to the real ID bytes. An ID that was not exactly 32
// (trace) or 16 (span) hex digits is an error naming the JSON field; empty IDs
// stay empty. It works for any OTLP message: traces, logs, metric exemplars.
func FixJSONIDs(m proto.Message) error {
	return rewriteIDs(m.ProtoReflect(), fromJSONID)
}

func fromJSONID(fd protoreflect.FieldDescriptor, b []byte) ([]byte, error) {
	want := idHexLen(fd.Name())
	if len(b)*4 != want*3 {
		return nil, fmt.Errorf("%s: not %d hex digits", fd.JSONName(), want)
	}
	id, err := hex.DecodeString(base64.StdEncoding.EncodeToString(b))
	if err != nil {
		return nil, fmt.Errorf("%s: not %d hex digits", fd.JSONName(), want)
	}
	return id, nil
}

// toJSONID is the inverse of fromJSONID: the bytes whose base64 is the ID's hex.
func toJSONID(fd protoreflect.FieldDescriptor, b []byte) ([]byte, error) {
	if len(b)%2 != 0 {
		// 2n hex digits form whole base64 quanta only when n is even.
		return nil, fmt.Errorf("%s: ID of %d bytes cannot be written as OTLP/JSON hex", fd.JSONName(), len(b))
	}
	return base64.StdEncoding.DecodeString(hex.EncodeToString(b))
}

type idRewrite func(fd protoreflect.FieldDescriptor, b []byte) ([]byte, error)

func rewriteIDs(m protoreflect.Message, fn idRewrite) error {
	type set struct {
		fd protoreflect.FieldDescriptor
		v  []byte
	}
	var sets []set
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Kind() == protoreflect.BytesKind && fd.Cardinality() != protoreflect.Repeated && idHexLen(fd.Name()) > 0:
			var nb []byte
			if nb, err = fn(fd, v.Bytes()); err != nil {
				return false
			}
			sets = append(sets, set{fd, nb})
		case fd.Message() == nil:
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				break
			}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if err = rewriteIDs(mv.Message(), fn); err != nil {
					err = fmt.Errorf("%s[%v]: %w", fd.JSONName(), k.Interface(), err)
				}
				return err == nil
			})
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				if err = rewriteIDs(l.Get(i).Message(), fn); err != nil {
					err = fmt.Errorf("%s[%d]: %w", fd.JSONName(), i, err)
				}
			}
		default:
			if err = rewriteIDs(v.Message(), fn); err != nil {
				err = fmt.Errorf("%s: %w", fd.JSONName(), err)
			}
		}
		return err == nil
	})
	if err != nil {
		return err
	}
	for _, s := range sets {
		m.Set(s.fd, protoreflect.ValueOfBytes(s.v))
	}
	return nil
}

// TracesJSONToProto converts an OTLP/JSON ExportTraceServiceRequest (the body
// of POST /v1/traces with Content-Type application/json) to its protobuf
// encoding. Unknown fields are ignored as the OTLP spec requires; enums may be
// names or integers and 64-bit integers strings or numbers.
func TracesJSONToProto(body []byte) ([]byte, error) {
	var req coltracepb.ExportTraceServiceRequest
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("decode OTLP/JSON traces: %w", err)
	}
	if err := FixJSONIDs(&req); err != nil {
		return nil, fmt.Errorf("decode OTLP/JSON traces: %w", err)
	}
	out, err := proto.Marshal(&req)
	if err != nil {
		return nil, fmt.Errorf("encode traces: %w", err)
	}
	return out, nil
}

// TracesToJSON encodes td as OTLP/JSON: hex IDs, lowerCamelCase names,
// integer enums (as the OTLP spec asks of JSON senders). td is not modified.
// IDs of an odd byte length (invalid in OTLP) cannot be written in this
// encoding and are an error.
func TracesToJSON(td *tracepb.TracesData) ([]byte, error) {
	c := proto.Clone(td)
	if err := rewriteIDs(c.ProtoReflect(), toJSONID); err != nil {
		return nil, fmt.Errorf("encode OTLP/JSON traces: %w", err)
	}
	out, err := protojson.MarshalOptions{UseEnumNumbers: true}.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode OTLP/JSON traces: %w", err)
	}
	return out, nil
}
