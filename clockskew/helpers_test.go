package clockskew

import (
	"hash/fnv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"

	"github.com/threadline/threadline/span"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// base is the trace's wall-clock origin; rows give times relative to it.
var base = time.Date(2026, 8, 1, 12, 0, 0, 0, time.UTC)

const (
	srv   = tracepb.Span_SPAN_KIND_SERVER
	cli   = tracepb.Span_SPAN_KIND_CLIENT
	inr   = tracepb.Span_SPAN_KIND_INTERNAL
	prod  = tracepb.Span_SPAN_KIND_PRODUCER
	cons  = tracepb.Span_SPAN_KIND_CONSUMER
	unset = tracepb.Span_SPAN_KIND_UNSPECIFIED
)

const ms = time.Millisecond

// row is one span of a test trace. inst is "service@host". links name spans
// this span links to; a name prefixed "ff:" is a FOLLOWS_FROM reference as
// the Jaeger translator writes it.
type row struct {
	name, parent string
	inst         string
	kind         tracepb.Span_SpanKind
	start, end   time.Duration // as received
	want         time.Duration // expected start after Adjust
	err          bool
	links        []string
}

var testTraceID = span.TraceID{0xaa, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}

func idOf(name string) []byte {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum(nil)
}

func at(d time.Duration) uint64 { return uint64(base.Add(d).UnixNano()) }

func rel(ns uint64) time.Duration { return time.Duration(int64(ns) - base.UnixNano()) }

func resourceFor(inst string) *span.Resource {
	svc, host, _ := strings.Cut(inst, "@")
	attrs := []*commonpb.KeyValue{strAttr("service.name", svc)}
	if host != "" {
		attrs = append(attrs, strAttr("host.name", host))
	}
	return &span.Resource{Resource: &resourcepb.Resource{Attributes: attrs}}
}

func strAttr(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

// build turns rows into a trace; spans of one inst share one *span.Resource.
func build(rows []row) *span.Trace {
	res := map[string]*span.Resource{}
	scope := &span.Scope{}
	t := &span.Trace{ID: testTraceID}
	for _, r := range rows {
		if res[r.inst] == nil {
			res[r.inst] = resourceFor(r.inst)
		}
		s := &tracepb.Span{
			TraceId:           testTraceID[:],
			SpanId:            idOf(r.name),
			Name:              r.name,
			Kind:              r.kind,
			StartTimeUnixNano: at(r.start),
			EndTimeUnixNano:   at(r.end),
			Attributes:        []*commonpb.KeyValue{strAttr("row", r.name)},
			Events:            []*tracepb.Span_Event{{Name: "mid", TimeUnixNano: at(r.start + (r.end-r.start)/2)}},
		}
		if r.parent != "" {
			s.ParentSpanId = idOf(r.parent)
		}
		if r.err {
			s.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR}
		}
		for _, l := range r.links {
			link := &tracepb.Span_Link{TraceId: testTraceID[:]}
			if name, ok := strings.CutPrefix(l, "ff:"); ok {
				link.SpanId = idOf(name)
				link.Attributes = []*commonpb.KeyValue{strAttr("opentracing.ref_type", "follows_from")}
			} else {
				link.SpanId = idOf(l)
			}
			s.Links = append(s.Links, link)
		}
		t.Spans = append(t.Spans, span.Span{Span: s, Resource: res[r.inst], Scope: scope})
	}
	return t
}

func intAttr(s *tracepb.Span, key string) (int64, bool) {
	for _, kv := range s.GetAttributes() {
		if kv.GetKey() == key {
			return kv.GetValue().GetIntValue(), true
		}
	}
	return 0, false
}

// requireCausal asserts the invariants skew repair exists for: no child on
// another instance starts before its parent, and no server span (of a
// two-sided RPC pair, so not one whose client failed) ends after its client.
func requireCausal(t *testing.T, tr *span.Trace) {
	t.Helper()
	byID := map[string]span.Span{}
	for _, s := range tr.Spans {
		byID[string(s.GetSpanId())] = s
	}
	for _, c := range tr.Spans {
		p, ok := byID[string(c.GetParentSpanId())]
		if !ok || InstanceOf(p.Resource) == InstanceOf(c.Resource) {
			continue
		}
		// Plain comparisons first: require's reflection per span is what
		// made this check slow on 100k-span traces under -race.
		if c.GetStartTimeUnixNano() < p.GetStartTimeUnixNano() {
			require.FailNow(t, "child before parent", "span %s starts before its parent %s", c.GetName(), p.GetName())
		}
		if p.GetKind() == cli && c.GetKind() == srv && p.GetStatus().GetCode() != tracepb.Status_STATUS_CODE_ERROR &&
			c.GetEndTimeUnixNano()-c.GetStartTimeUnixNano() <= p.GetEndTimeUnixNano()-p.GetStartTimeUnixNano() &&
			c.GetEndTimeUnixNano() > p.GetEndTimeUnixNano() {
			require.FailNow(t, "server outside client", "server %s ends after its client %s", c.GetName(), p.GetName())
		}
	}
}
