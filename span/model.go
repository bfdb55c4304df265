package span

import (
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
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
	// attributes MUST set Wire to nil; appended attributes are encoded
	// after it.
	Wire []byte
}

// Trace is every span held for one trace ID, in arrival order.
type Trace struct {
	ID    TraceID
	Spans []Span
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
