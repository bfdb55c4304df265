package span

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"unicode/utf8"
	"unsafe"

	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func tid(b byte) []byte { return bytes.Repeat([]byte{b}, 16) }
func sid(b byte) []byte { return bytes.Repeat([]byte{b}, 8) }

func strAttr(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func intAttr(k string, v int64) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v}}}
}

func mkSpan(trace, span []byte, name string) *tracepb.Span {
	return &tracepb.Span{
		TraceId: trace, SpanId: span, Name: name, Kind: tracepb.Span_SPAN_KIND_SERVER,
		StartTimeUnixNano: 1_700_000_000_000_000_000, EndTimeUnixNano: 1_700_000_000_100_000_000,
		Attributes: []*commonpb.KeyValue{strAttr("http.method", "GET"), intAttr("http.status_code", 200)},
	}
}

func mkResource(service string) *resourcepb.Resource {
	return &resourcepb.Resource{Attributes: []*commonpb.KeyValue{strAttr("service.name", service)}}
}

func mkScope(name string) *commonpb.InstrumentationScope {
	return &commonpb.InstrumentationScope{Name: name, Version: "1.0"}
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	require.NoError(t, err)
	return b
}

// interleaved is a request with two resources, three scopes and three traces
// whose spans are interleaved across all of them.
func interleaved() *tracepb.TracesData {
	return &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{
		{
			Resource:  mkResource("frontend"),
			SchemaUrl: "https://opentelemetry.io/schemas/1.26.0",
			ScopeSpans: []*tracepb.ScopeSpans{
				{Scope: mkScope("http"), SchemaUrl: "s1", Spans: []*tracepb.Span{
					mkSpan(tid(1), sid(1), "a1"), mkSpan(tid(2), sid(2), "b1"), mkSpan(tid(1), sid(3), "a2"),
				}},
				{Scope: mkScope("db"), Spans: []*tracepb.Span{
					mkSpan(tid(3), sid(4), "c1"), mkSpan(tid(1), sid(5), "a3"),
				}},
			},
		},
		{
			Resource: mkResource("backend"),
			ScopeSpans: []*tracepb.ScopeSpans{
				{Scope: mkScope("grpc"), Spans: []*tracepb.Span{
					mkSpan(tid(2), sid(6), "b2"), mkSpan(tid(3), sid(7), "c2"), mkSpan(tid(2), sid(8), "b3"),
				}},
			},
		},
	}}
}

// valid reports whether s passes the splitter's ID checks.
func valid(s Span) bool {
	_, err := TraceIDFromBytes(s.GetTraceId())
	if err == nil {
		_, err = SpanIDFromBytes(s.GetSpanId())
	}
	return err == nil
}

// expectedOrder is the input's valid spans grouped by trace ID in order of
// first appearance, keeping input order inside each trace.
func expectedOrder(in []Span) []Span {
	var order []TraceID
	byID := map[TraceID][]Span{}
	for _, s := range in {
		if !valid(s) {
			continue
		}
		id := TraceID(s.GetTraceId())
		if _, ok := byID[id]; !ok {
			order = append(order, id)
		}
		byID[id] = append(byID[id], s)
	}
	var out []Span
	for _, id := range order {
		out = append(out, byID[id]...)
	}
	return out
}

// requireSplitMatches checks that res holds exactly the valid spans of input
// (decoded from want), each once, grouped by trace, with resource and scope.
func requireSplitMatches(t testing.TB, want *tracepb.TracesData, res SplitResult) {
	t.Helper()
	exp := expectedOrder(FromTracesData(want))
	var got []Span
	seen := map[TraceID]bool{}
	for _, b := range res.Batches {
		require.False(t, seen[b.ID], "trace %s split into two batches", b.ID)
		seen[b.ID] = true
		var td tracepb.TracesData
		require.NoError(t, proto.Unmarshal(b.Data, &td), "batch %s", b.ID)
		spans := FromTracesData(&td)
		require.Len(t, spans, b.Spans)
		resources := map[*Resource]bool{}
		for _, s := range spans {
			require.Equal(t, b.ID, TraceID(s.GetTraceId()))
			resources[s.Resource] = true
		}
		// One ResourceSpans per resource, not one per span.
		require.Len(t, td.GetResourceSpans(), len(resources))
		got = append(got, spans...)
	}
	require.Equal(t, len(exp), res.Spans)
	require.Len(t, got, len(exp))
	for i := range exp {
		require.True(t, proto.Equal(exp[i].Span, got[i].Span), "span %d: got %v want %v", i, got[i].Span, exp[i].Span)
		require.True(t, proto.Equal(exp[i].Resource.Resource, got[i].Resource.Resource), "span %d resource", i)
		require.Equal(t, exp[i].Resource.SchemaURL, got[i].Resource.SchemaURL, "span %d resource schema", i)
		require.True(t, proto.Equal(exp[i].Scope.Scope, got[i].Scope.Scope), "span %d scope", i)
		require.Equal(t, exp[i].Scope.SchemaURL, got[i].Scope.SchemaURL, "span %d scope schema", i)
	}
}

func TestSplitTraces(t *testing.T) {
	withUnknown := interleaved()
	// Unknown fields at span, scope and resource level must survive the split.
	withUnknown.ResourceSpans[0].ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 99, protowire.BytesType), []byte("r")))
	withUnknown.ResourceSpans[0].ScopeSpans[1].ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 98, protowire.VarintType), 7))
	withUnknown.ResourceSpans[1].ScopeSpans[0].Spans[1].ProtoReflect().SetUnknown(protowire.AppendFixed32(protowire.AppendTag(nil, 97, protowire.Fixed32Type), 1))

	bad := &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource: mkResource("svc"),
		ScopeSpans: []*tracepb.ScopeSpans{{Scope: mkScope("s"), Spans: []*tracepb.Span{
			mkSpan(tid(1), sid(1), "ok1"),
			mkSpan(make([]byte, 16), sid(2), "zero trace"),
			mkSpan(tid(1)[:8], sid(3), "short trace"),
			mkSpan(tid(2), sid(4)[:4], "short span"),
			mkSpan(tid(2), make([]byte, 8), "zero span"),
			mkSpan(nil, nil, "no ids"),
			mkSpan(tid(2), sid(7), "ok2"),
		}}},
	}}}

	tests := []struct {
		name         string
		in           *tracepb.TracesData
		wantBatches  []TraceID
		wantRejected int
		wantReasons  []string
	}{
		{name: "empty", in: &tracepb.TracesData{}},
		{name: "resource without spans", in: &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{Resource: mkResource("x")}}}},
		{
			name: "one trace",
			in: &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{
				Resource:   mkResource("svc"),
				ScopeSpans: []*tracepb.ScopeSpans{{Scope: mkScope("s"), Spans: []*tracepb.Span{mkSpan(tid(9), sid(1), "x"), mkSpan(tid(9), sid(2), "y")}}},
			}}},
			wantBatches: []TraceID{TraceID(tid(9))},
		},
		{name: "interleaved", in: interleaved(), wantBatches: []TraceID{TraceID(tid(1)), TraceID(tid(2)), TraceID(tid(3))}},
		{name: "unknown fields kept", in: withUnknown, wantBatches: []TraceID{TraceID(tid(1)), TraceID(tid(2)), TraceID(tid(3))}},
		{
			name:         "invalid IDs rejected",
			in:           bad,
			wantBatches:  []TraceID{TraceID(tid(1)), TraceID(tid(2))},
			wantRejected: 5,
			wantReasons: []string{
				"span 1 of resource 0: trace ID: all-zero ID",
				"span 2 of resource 0: trace ID of 8 bytes, want 16: wrong ID length",
				"span 3 of resource 0: span ID of 4 bytes, want 8: wrong ID length",
				"and 2 more",
			},
		},
	}
	var s Splitter // reused across cases on purpose
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := marshal(t, tc.in)
			res, err := s.Split(req)
			require.NoError(t, err)
			ids := []TraceID{}
			for _, b := range res.Batches {
				ids = append(ids, b.ID)
			}
			require.Equal(t, append([]TraceID{}, tc.wantBatches...), ids)
			require.Equal(t, tc.wantRejected, res.Rejected)
			for _, r := range tc.wantReasons {
				require.Contains(t, res.RejectReason, r)
			}
			if tc.wantRejected == 0 {
				require.Empty(t, res.RejectReason)
			}
			require.Zero(t, res.Repaired)
			requireSplitMatches(t, tc.in, res)

			// SplitTraces gives the same bytes.
			res2, err := SplitTraces(req)
			require.NoError(t, err)
			require.Equal(t, res, res2)
		})
	}
}

// TestSplitOutputIndependent checks that batches own their bytes: they do not
// alias the request or each other.
func TestSplitOutputIndependent(t *testing.T) {
	req := marshal(t, interleaved())
	res, err := SplitTraces(req)
	require.NoError(t, err)
	want := make([][]byte, len(res.Batches))
	for i, b := range res.Batches {
		want[i] = bytes.Clone(b.Data)
	}
	for i := range req {
		req[i] = 0xAA
	}
	_ = append(res.Batches[0].Data, 1, 2, 3) // must not clobber batch 1
	for i, b := range res.Batches {
		require.Equal(t, want[i], b.Data)
	}
}

func TestSplitMalformed(t *testing.T) {
	good := marshal(t, interleaved())
	tag := func(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }
	// wrap nests payload as field 1 of TracesData -> field 2 of ResourceSpans
	// -> field 2 of ScopeSpans (a span).
	wrapSpan := func(span []byte) []byte {
		ss := protowire.AppendBytes(tag(2, protowire.BytesType), span)
		rs := protowire.AppendBytes(tag(2, protowire.BytesType), ss)
		return protowire.AppendBytes(tag(1, protowire.BytesType), rs)
	}
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"truncated", good[:len(good)-3], "resource_spans"},
		{"length past end", append(tag(1, protowire.BytesType), 0x7f, 0x0a), "TracesData.resource_spans"},
		{"resource_spans as varint", protowire.AppendVarint(tag(1, protowire.VarintType), 1), "wire type 0, want 2"},
		{"trace_id as varint", wrapSpan(protowire.AppendVarint(tag(1, protowire.VarintType), 5)), "Span.trace_id: wire type"},
		{"attribute value as fixed32", wrapSpan(protowire.AppendBytes(tag(9, protowire.BytesType),
			protowire.AppendFixed32(tag(2, protowire.Fixed32Type), 1))), "KeyValue.value: wire type"},
		{"field number zero", []byte{0x02, 0x00}, "bad tag"},
		{"stray end group", tag(5, protowire.EndGroupType), "unknown field 5"},
		{"bad varint", []byte{0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, "unknown field 2"},
		{"truncated span", wrapSpan([]byte{0x0a, 0x10, 1, 2}), "span 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := SplitTraces(tc.in)
			require.ErrorIs(t, err, ErrMalformed)
			require.ErrorContains(t, err, tc.want)
			_, _, err = RepairUTF8TracesData(tc.in)
			require.ErrorIs(t, err, ErrMalformed)
		})
	}
}

// withInvalidUTF8 marshals td and then swaps every occurrence of the marker
// for invalid UTF-8 of the same length (proto.Marshal refuses to write it).
const marker = "\x01BAD\x01"

func withInvalidUTF8(t testing.TB, td *tracepb.TracesData) []byte {
	t.Helper()
	b := marshal(t, td)
	require.True(t, bytes.Contains(b, []byte(marker)))
	return bytes.ReplaceAll(b, []byte(marker), []byte("\xffBA\xc3\x28"))
}

func TestSplitRepairsUTF8(t *testing.T) {
	kv := func(k string, v *commonpb.AnyValue) *commonpb.KeyValue { return &commonpb.KeyValue{Key: k, Value: v} }
	sv := func(s string) *commonpb.AnyValue {
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: s}}
	}
	nested := kv("nested", &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: &commonpb.KeyValueList{
		Values: []*commonpb.KeyValue{kv("arr", &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{
			Values: []*commonpb.AnyValue{sv("fine"), sv(marker)},
		}}})},
	}}})
	tests := []struct {
		name string
		// mutate puts the marker somewhere in a two-span, one-trace request.
		mutate       func(td *tracepb.TracesData)
		wantRepaired int
	}{
		{"span name", func(td *tracepb.TracesData) { sp(td, 0).Name = marker }, 1},
		{"trace_state", func(td *tracepb.TracesData) { sp(td, 1).TraceState = marker }, 1},
		{"attribute key", func(td *tracepb.TracesData) { sp(td, 0).Attributes[0].Key = marker }, 1},
		{"attribute value", func(td *tracepb.TracesData) { sp(td, 0).Attributes = append(sp(td, 0).Attributes, kv("k", sv(marker))) }, 1},
		{"nested kvlist/array value", func(td *tracepb.TracesData) { sp(td, 1).Attributes = append(sp(td, 1).Attributes, nested) }, 1},
		{"event name and attribute", func(td *tracepb.TracesData) {
			sp(td, 0).Events = []*tracepb.Span_Event{{Name: marker, Attributes: []*commonpb.KeyValue{kv(marker, sv("x"))}}}
		}, 1},
		{"link trace_state and attribute", func(td *tracepb.TracesData) {
			sp(td, 0).Links = []*tracepb.Span_Link{{TraceId: tid(7), SpanId: sid(7), TraceState: marker, Attributes: []*commonpb.KeyValue{kv("k", sv(marker))}}}
		}, 1},
		{"status message", func(td *tracepb.TracesData) {
			sp(td, 1).Status = &tracepb.Status{Message: marker, Code: tracepb.Status_STATUS_CODE_ERROR}
		}, 1},
		{"resource attribute", func(td *tracepb.TracesData) {
			td.ResourceSpans[0].Resource.Attributes = append(td.ResourceSpans[0].Resource.Attributes, kv("host", sv(marker)))
		}, 2},
		{"resource entity ref", func(td *tracepb.TracesData) {
			td.ResourceSpans[0].Resource.EntityRefs = []*commonpb.EntityRef{{Type: "host", IdKeys: []string{"a", marker}}}
		}, 2},
		{"resource schema url", func(td *tracepb.TracesData) { td.ResourceSpans[0].SchemaUrl = marker }, 2},
		{"scope name and version", func(td *tracepb.TracesData) {
			td.ResourceSpans[0].ScopeSpans[0].Scope.Name = marker
			td.ResourceSpans[0].ScopeSpans[0].Scope.Version = marker
		}, 2},
		{"scope attribute", func(td *tracepb.TracesData) {
			td.ResourceSpans[0].ScopeSpans[0].Scope.Attributes = []*commonpb.KeyValue{kv(marker, sv(marker))}
		}, 2},
		{"scope schema url", func(td *tracepb.TracesData) { td.ResourceSpans[0].ScopeSpans[0].SchemaUrl = marker }, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			td := &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{
				Resource: mkResource("svc"),
				ScopeSpans: []*tracepb.ScopeSpans{{Scope: mkScope("s"), Spans: []*tracepb.Span{
					mkSpan(tid(1), sid(1), "a"), mkSpan(tid(1), sid(2), "b"),
				}}},
			}}}
			tc.mutate(td)
			req := withInvalidUTF8(t, td)
			require.Error(t, proto.Unmarshal(req, &tracepb.TracesData{}), "the input must really be invalid")

			res, err := SplitTraces(req)
			require.NoError(t, err)
			require.Equal(t, tc.wantRepaired, res.Repaired)
			require.Equal(t, 2, res.Spans)
			require.Len(t, res.Batches, 1)
			var got tracepb.TracesData
			require.NoError(t, proto.Unmarshal(res.Batches[0].Data, &got))
			require.True(t, bytes.Contains(res.Batches[0].Data, []byte("\uFFFDBA\uFFFD(")))

			// RepairUTF8TracesData on the whole request gives the same message.
			fixed, n, err := RepairUTF8TracesData(req)
			require.NoError(t, err)
			require.Positive(t, n)
			var want tracepb.TracesData
			require.NoError(t, proto.Unmarshal(fixed, &want))
			requireSplitMatches(t, &want, res)

			// And DecodeTraces reads the unrepaired bytes.
			spans, err := new(Decoder).DecodeTraces(req)
			require.NoError(t, err)
			require.Len(t, spans, 2)
		})
	}
}

func sp(td *tracepb.TracesData, i int) *tracepb.Span {
	return td.ResourceSpans[0].ScopeSpans[0].Spans[i]
}

func TestRepairUTF8NoChange(t *testing.T) {
	req := marshal(t, interleaved())
	out, n, err := RepairUTF8TracesData(req)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Equal(t, req, out)
}

func TestDecodeTraces(t *testing.T) {
	spans, err := new(Decoder).DecodeTraces(marshal(t, interleaved()))
	require.NoError(t, err)
	require.Len(t, spans, 8)
	require.Equal(t, "frontend", spans[0].ServiceName())
	require.Equal(t, "backend", spans[7].ServiceName())

	_, err = new(Decoder).DecodeTraces([]byte{0x0a, 0x05, 0x01})
	require.ErrorContains(t, err, "decode traces")
}

// misplacedKnownField reports whether proto.Unmarshal kept a known field as
// unknown anywhere in m, which it does when the field had the wrong wire type;
// the splitter rejects those as malformed instead.
func misplacedKnownField(m protoreflect.Message) bool {
	for b := m.GetUnknown(); len(b) > 0; {
		num, _, n := protowire.ConsumeField(b)
		if n < 0 {
			return false
		}
		if m.Descriptor().Fields().ByNumber(num) != nil {
			return true
		}
		b = b[n:]
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil {
			return true
		}
		if fd.IsList() {
			for i := 0; i < v.List().Len() && !found; i++ {
				found = misplacedKnownField(v.List().Get(i).Message())
			}
		} else {
			found = misplacedKnownField(v.Message())
		}
		return !found
	})
	return found
}

func FuzzSplitTraces(f *testing.F) {
	f.Add(marshal(f, interleaved()))
	f.Add(marshal(f, &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{ScopeSpans: []*tracepb.ScopeSpans{{
		Spans: []*tracepb.Span{mkSpan(tid(1)[:8], sid(1), "short"), mkSpan(tid(1), sid(1), "ok")},
	}}}}}))
	td := interleaved()
	sp(td, 0).Name = marker
	sp(td, 1).Attributes[0].Value = &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{
		Values: []*commonpb.AnyValue{{Value: &commonpb.AnyValue_StringValue{StringValue: marker}}},
	}}}
	td.ResourceSpans[1].Resource.Attributes[0].Key = marker
	f.Add(withInvalidUTF8(f, td))
	u := interleaved()
	u.ResourceSpans[0].ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 99, protowire.BytesType), []byte("r")))
	sp(u, 2).ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 20, protowire.VarintType), 7))
	sp(u, 1).Events = []*tracepb.Span_Event{{Name: "e", Attributes: []*commonpb.KeyValue{intAttr("n", 1)}}}
	sp(u, 1).Links = []*tracepb.Span_Link{{TraceId: tid(5), SpanId: sid(5), TraceState: "a=b"}}
	sp(u, 1).Status = &tracepb.Status{Message: "m", Code: 2}
	f.Add(marshal(f, u))
	f.Add([]byte{0x0a, 0x02, 0x12, 0x00})
	f.Add([]byte{0x0b, 0x0c})

	f.Fuzz(func(t *testing.T, req []byte) {
		res, err := SplitTraces(req)
		_, _, rerr := RepairUTF8TracesData(req)
		require.Equal(t, err != nil, rerr != nil, "split error %v, repair error %v", err, rerr)

		var in tracepb.TracesData
		uerr := proto.Unmarshal(req, &in)
		if err != nil {
			require.ErrorIs(t, err, ErrMalformed)
			if uerr == nil {
				require.True(t, misplacedKnownField(in.ProtoReflect()), "split rejected what proto accepts: %v", err)
			}
			return
		}
		for _, b := range res.Batches {
			require.NoError(t, proto.Unmarshal(b.Data, &tracepb.TracesData{}), "every batch decodes")
		}
		if uerr != nil {
			// Only invalid UTF-8 may make proto fail where the split succeeds.
			fixed, n, err := RepairUTF8TracesData(req)
			require.NoError(t, err)
			require.Positive(t, n, "proto failed (%v) but nothing to repair", uerr)
			require.NoError(t, proto.Unmarshal(fixed, &in))
		} else {
			require.Zero(t, res.Repaired)
		}
		all := FromTracesData(&in)
		require.Equal(t, len(all), res.Spans+res.Rejected)
		requireSplitMatches(t, &in, res)
	})
}

func TestRejectReasonBounded(t *testing.T) {
	var spans []*tracepb.Span
	for i := range 1000 {
		spans = append(spans, mkSpan(tid(1)[:4], sid(1), fmt.Sprint(i)))
	}
	res, err := SplitTraces(marshal(t, &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{ScopeSpans: []*tracepb.ScopeSpans{{Spans: spans}}}}}))
	require.NoError(t, err)
	require.Equal(t, 1000, res.Rejected)
	require.Empty(t, res.Batches)
	require.Less(t, len(res.RejectReason), 400)
	require.Contains(t, res.RejectReason, "and 997 more")
	require.True(t, utf8.ValidString(res.RejectReason))
}

func TestErrMalformedIsDistinct(t *testing.T) {
	_, err := SplitTraces([]byte{0xff})
	require.True(t, errors.Is(err, ErrMalformed))
	require.False(t, errors.Is(err, ErrIDLength))
}

// TestSplitDeepNesting checks that nesting is bounded like proto.Unmarshal's
// recursion limit: a moderately deep attribute passes, a hostile one is
// rejected rather than exhausting the stack.
func TestSplitDeepNesting(t *testing.T) {
	nest := func(levels int) []byte {
		// AnyValue{array_value: ArrayValue{values: AnyValue{...}}}, innermost a string.
		v := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte("leaf"))
		for range levels {
			arr := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), v)
			v = protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), arr)
		}
		kv := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte("k"))
		kv = protowire.AppendBytes(protowire.AppendTag(kv, 2, protowire.BytesType), v)
		span := marshal(t, mkSpan(tid(1), sid(1), "deep"))
		span = protowire.AppendBytes(protowire.AppendTag(span, 9, protowire.BytesType), kv)
		ss := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), span)
		rs := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), ss)
		return protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), rs)
	}
	tests := []struct {
		levels int
		ok     bool
	}{{100, true}, {6000, false}}
	for _, tc := range tests {
		req := nest(tc.levels)
		res, err := SplitTraces(req)
		perr := proto.Unmarshal(req, &tracepb.TracesData{})
		if tc.ok {
			require.NoError(t, err)
			require.NoError(t, perr)
			require.Equal(t, 1, res.Spans)
			continue
		}
		require.ErrorIs(t, err, ErrMalformed)
		require.ErrorContains(t, err, "nesting deeper than")
		require.Error(t, perr, "proto.Unmarshal rejects it too")
	}
}

// TestSplitIntoReusesResult splits different requests into one recycled
// result: each outcome must equal a fresh Split's, the data buffer must be
// reused once it is big enough, and a failed split must leave no batches.
func TestSplitIntoReusesResult(t *testing.T) {
	_, big := benchRequest(t)
	small := marshal(t, &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{
			{TraceId: tid(1), SpanId: sid(1), Name: "a"},
			{TraceId: tid(2), SpanId: sid(2), Name: "b", Attributes: []*commonpb.KeyValue{strAttr("k", "v"+marker)}},
		}}},
	}}})
	small = bytes.ReplaceAll(small, []byte(marker), []byte("\xffBA\xc3\x28"))
	var (
		s   Splitter
		res SplitResult
	)
	for i, tc := range []struct {
		name    string
		req     []byte
		wantErr bool
	}{
		{"big", big, false},
		{"small into big buffer", small, false},
		{"malformed", []byte{0x0a, 0x05, 0x01}, true},
		{"big again", big, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prevBuf := res.buf
			err := s.SplitInto(&res, tc.req)
			if tc.wantErr {
				require.ErrorIs(t, err, ErrMalformed)
				require.Empty(t, res.Batches)
				require.Zero(t, res.Spans)
				return
			}
			require.NoError(t, err)
			want, err := SplitTraces(tc.req)
			require.NoError(t, err)
			require.Equal(t, want, SplitResult{Batches: res.Batches, Spans: res.Spans, Rejected: res.Rejected,
				RejectReason: res.RejectReason, Repaired: res.Repaired, buf: want.buf})
			if i > 0 && cap(prevBuf) >= len(res.buf) {
				require.Same(t, unsafe.SliceData(prevBuf), unsafe.SliceData(res.buf), "buffer reused")
			}
		})
	}
}

func TestValidUTF8(t *testing.T) {
	for _, s := range []string{
		"", "a", "abcdefg", "abcdefgh", "abcdefghijklmnopq", "héllo", "abcdefgh\xff", "\xffabcdefgh",
		"abcdefghijklmno\xc3", "abcdefghijklmno\xc3\xa9", "日本語のテキスト", "\xed\xa0\x80surrogate",
	} {
		require.Equal(t, utf8.ValidString(s), validUTF8([]byte(s)), "%q", s)
	}
	// Every length around the word boundaries, with an invalid byte and a
	// valid two-byte rune at every position: the overlapping last word must
	// not miss any byte.
	for n := 0; n <= 25; n++ {
		ascii := bytes.Repeat([]byte("a"), n)
		require.True(t, validUTF8(ascii), "len %d", n)
		for i := 0; i < n; i++ {
			b := bytes.Clone(ascii)
			b[i] = 0xff
			require.False(t, validUTF8(b), "len %d, 0xff at %d", n, i)
			if i+1 < n {
				b[i], b[i+1] = 0xc3, 0xa9
				require.True(t, validUTF8(b), "len %d, é at %d", n, i)
			}
		}
	}
}

// FuzzScanAttr checks the attribute fast path against the general scan:
// whatever scanAttr accepts, scan accepts too, with the same UTF-8 verdict.
func FuzzScanAttr(f *testing.F) {
	long := string(bytes.Repeat([]byte("x"), 300))
	for _, kv := range []*commonpb.KeyValue{
		strAttr("http.method", "GET"),
		strAttr("bad", "v"+marker),
		strAttr("bad"+marker, "v"),
		strAttr("long", long),
		strAttr("long-bad", long+marker),
		intAttr("port", 8080),
		intAttr("neg", -1),
		{Key: "b", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: true}}},
		{Key: "d", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: 1.5}}},
		{Key: "arr", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{
			Values: []*commonpb.AnyValue{{Value: &commonpb.AnyValue_StringValue{StringValue: marker}}}}}}},
		{Key: "empty"},
	} {
		b := bytes.ReplaceAll(marshal(f, kv), []byte(marker), []byte("\xffBA\xc3\x28"))
		f.Add(b)
		f.Add(b[:len(b)-1])
	}
	f.Add([]byte{0x12, 0x02, 0x0a, 0x05})
	f.Add([]byte{0x0a, 0x80, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		bad, ok := scanAttr(b)
		if !ok {
			return
		}
		wantBad, err := scanMsg(b, mKeyValue, 4)
		require.NoError(t, err)
		require.Equal(t, wantBad, bad)
	})
}

// TestScanAttrFastPath pins which attribute shapes take the fast path, so
// FuzzScanAttr's comparison is not vacuous.
func TestScanAttrFastPath(t *testing.T) {
	bad := func(b []byte) []byte { return bytes.ReplaceAll(b, []byte(marker), []byte("\xffBA\xc3\x28")) }
	long := string(bytes.Repeat([]byte("x"), 300))
	for _, tc := range []struct {
		name            string
		kv              *commonpb.KeyValue
		wantOK, wantBad bool
	}{
		{"string", strAttr("http.method", "GET"), true, false},
		{"long string", strAttr("db.query.text", long), true, false},
		{"invalid value", strAttr("k", "v"+marker), true, true},
		{"invalid key", strAttr("k"+marker, "v"), true, true},
		{"int", intAttr("port", 8080), true, false},
		{"double", &commonpb.KeyValue{Key: "d", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: 1.5}}}, true, false},
		{"array", &commonpb.KeyValue{Key: "a", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{}}}}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gotBad, ok := scanAttr(bad(marshal(t, tc.kv)))
			require.Equal(t, tc.wantOK, ok)
			require.Equal(t, tc.wantBad, gotBad)
		})
	}
}
