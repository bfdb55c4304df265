package span

import (
	"unsafe"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Resource is an OTLP resource with its schema URL. Spans reported together share
// one *Resource, so grouping by pointer rebuilds the original batches.
type Resource struct {
	Resource  *resourcepb.Resource
	SchemaURL string
	// Encoded is the Resource message as received, when it was decoded
	// from the wire, so a store can keep it without encoding it again.
	// Code that changes Resource must set Encoded to nil.
	Encoded []byte
}

// Scope is an OTLP instrumentation scope with its schema URL, shared like Resource.
type Scope struct {
	Scope     *commonpb.InstrumentationScope
	SchemaURL string
	// Encoded is the InstrumentationScope message as received; see
	// Resource.Encoded.
	Encoded []byte
}

// Span is one OTLP span with the resource and scope it was reported under.
type Span struct {
	*tracepb.Span
	Resource *Resource
	Scope    *Scope
	// Wire is the span's encoding as received (the Decoder sets it), or
	// nil. It lets the store copy the span instead of re-encoding it.
	// Code that changes the span in any way other than appending
	// attributes MUST call ForgetWire; appended attributes are encoded
	// after it.
	Wire []byte
	// deferred, when set and not done, means the received attributes are
	// only in Wire (DecodeTracesLazy); none of their keys starts with
	// ReservedAttrPrefix. It is a pointer so that copies of the Span agree
	// once any of them decodes the attributes into the shared
	// *tracepb.Span.
	deferred *deferredAttrs
}

type deferredAttrs struct {
	done bool
	// bodyAt is 1 + where Wire's fields after the span's IDs begin, when
	// the IDs lead the encoding and occur nowhere else; 0 when they don't.
	bodyAt int32
}

// ReservedAttrPrefix begins the keys of the attributes Threadline writes on
// spans (the skew stage's stamps). DecodeTracesLazy never defers a span
// that arrives with one — one sent again after an earlier pass, say — so
// code looking for them finds them in Span.Attributes.
const ReservedAttrPrefix = "threadline."

// AttrsDeferred reports whether the attributes the span was received with
// are still only in Wire: Span.Attributes then holds just the attributes
// appended since, and DecodeAttrs adds the received ones ahead of them.
func (s Span) AttrsDeferred() bool {
	return s.deferred != nil && !s.deferred.done
}

// DecodeAttrs decodes the attributes left in Wire, if any, into
// Span.Attributes, ahead of the ones appended since.
func (s Span) DecodeAttrs() {
	if !s.AttrsDeferred() {
		return
	}
	s.deferred.done = true
	var received []*commonpb.KeyValue
	d := &fastDecoder{}
	ok := walkFields(s.Wire, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) bool {
		if num != 9 || typ != protowire.BytesType {
			return true
		}
		kv := d.kvs.one()
		received = append(received, kv)
		return d.keyValue(kv, bs, 0)
	})
	if !ok {
		// Unreachable: the lazy decode checked these bytes with the rules
		// keyValue decodes by. proto.Unmarshal still gives the attributes.
		var full tracepb.Span
		_ = proto.Unmarshal(s.Wire, &full)
		received = full.Attributes
	}
	s.Attributes = append(received, s.Attributes...)
}

// WireBody returns the span's received encoding without its trace_id and
// span_id fields, and true, while its received attributes are deferred and
// those fields led the encoding, as OTLP encoders write them; false
// otherwise. Only attributes appended since (Span.Attributes) are not in it.
// The span store keeps a span's IDs in its keys and copies the rest of the
// encoding whole, with no pass over its fields.
func (s Span) WireBody() ([]byte, bool) {
	if !s.AttrsDeferred() || s.deferred.bodyAt <= 0 || int(s.deferred.bodyAt)-1 > len(s.Wire) {
		return nil, false
	}
	return s.Wire[s.deferred.bodyAt-1:], true
}

// RangeDeferredAttrs calls fn with the key and the AnyValue encoding of
// each attribute still deferred in Wire, in order; it calls nothing when
// none are deferred. The key shares Wire's bytes. It runs for every span
// the indexer stores, so it parses the fields itself rather than through
// walkFields' callbacks; the lazy decode has checked them.
func (s Span) RangeDeferredAttrs(fn func(key string, value []byte)) {
	if !s.AttrsDeferred() {
		return
	}
	for b := s.Wire; len(b) > 0; {
		num, typ, _, kv, n := consumeField(b)
		if n < 0 {
			return
		}
		b = b[n:]
		if num != 9 || typ != protowire.BytesType {
			continue
		}
		var key, value []byte
		for len(kv) > 0 {
			num, v, m := shortField(kv)
			if m == 0 {
				// A field longer than 127 bytes.
				if num, typ, _, v, m = consumeField(kv); m < 0 || typ != protowire.BytesType {
					return
				}
			}
			kv = kv[m:]
			if num == 1 {
				key = v
			} else {
				value = v
			}
		}
		var k string
		if len(key) > 0 {
			k = unsafe.String(&key[0], len(key)) // checked as UTF-8 when decoded
		}
		fn(k, value)
	}
}

// ForgetWire prepares the span for a change Wire cannot carry: it decodes
// any deferred attributes and drops Wire, so the span is encoded from its
// fields.
func (s *Span) ForgetWire() {
	s.DecodeAttrs()
	s.Wire = nil
}

// Trace is every span held for one trace ID, in arrival order.
type Trace struct {
	ID    TraceID
	Spans []Span
}

// HasParent reports whether the span names a parent span: a parent span ID
// that is not all zeros (some SDKs send zeros for none).
func (s Span) HasParent() bool {
	for _, c := range s.GetParentSpanId() {
		if c != 0 {
			return true
		}
	}
	return false
}

// ServiceName is the span's resource attribute service.name, or "" when unset.
func (s Span) ServiceName() string {
	if s.Resource == nil || s.Resource.Resource == nil {
		return ""
	}
	for _, kv := range s.Resource.Resource.GetAttributes() {
		if kv.GetKey() == "service.name" {
			return kv.GetValue().GetStringValue()
		}
	}
	return ""
}

// FromTracesData flattens OTLP TracesData into spans that point at shared
// Resource and Scope values. It keeps the protobuf messages; nothing is copied.
func FromTracesData(td *tracepb.TracesData) []Span {
	n := 0
	for _, rs := range td.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			n += len(ss.GetSpans())
		}
	}
	out := make([]Span, 0, n)
	for _, rs := range td.GetResourceSpans() {
		res := &Resource{Resource: rs.GetResource(), SchemaURL: rs.GetSchemaUrl()}
		for _, ss := range rs.GetScopeSpans() {
			sc := &Scope{Scope: ss.GetScope(), SchemaURL: ss.GetSchemaUrl()}
			for _, sp := range ss.GetSpans() {
				out = append(out, Span{Span: sp, Resource: res, Scope: sc})
			}
		}
	}
	return out
}

// ToTracesData regroups spans into OTLP TracesData: one ResourceSpans per
// distinct *Resource and one ScopeSpans per distinct *Scope within it, in order
// of first appearance.
func ToTracesData(spans []Span) *tracepb.TracesData {
	td := &tracepb.TracesData{}
	resIdx := map[*Resource]int{}
	type scopeKey struct {
		res *Resource
		sc  *Scope
	}
	scIdx := map[scopeKey]int{}
	for _, s := range spans {
		ri, ok := resIdx[s.Resource]
		if !ok {
			ri = len(td.ResourceSpans)
			resIdx[s.Resource] = ri
			rs := &tracepb.ResourceSpans{}
			if s.Resource != nil {
				rs.Resource, rs.SchemaUrl = s.Resource.Resource, s.Resource.SchemaURL
			}
			td.ResourceSpans = append(td.ResourceSpans, rs)
		}
		rs := td.ResourceSpans[ri]
		k := scopeKey{s.Resource, s.Scope}
		si, ok := scIdx[k]
		if !ok {
			si = len(rs.ScopeSpans)
			scIdx[k] = si
			ss := &tracepb.ScopeSpans{}
			if s.Scope != nil {
				ss.Scope, ss.SchemaUrl = s.Scope.Scope, s.Scope.SchemaURL
			}
			rs.ScopeSpans = append(rs.ScopeSpans, ss)
		}
		rs.ScopeSpans[si].Spans = append(rs.ScopeSpans[si].Spans, s.Span)
	}
	return td
}
