package span

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// requireSameAsProto checks the fast path against proto.Unmarshal: when it
// takes an input, its spans must equal proto's, resource, scope and schema
// URLs included. It returns whether the fast path took the input.
func requireSameAsProto(t *testing.T, data []byte) bool {
	t.Helper()
	fast, ok := decodeTracesFast(nil, data, nil, false, false, nil)
	lazy, lazyOK := decodeTracesFast(nil, data, nil, false, true, nil)
	require.Equal(t, ok, lazyOK, "the lazy fast path must accept exactly what the full one does")
	var td tracepb.TracesData
	err := proto.Unmarshal(data, &td)
	if !ok {
		return false
	}
	require.Len(t, lazy, len(fast))
	for i := range lazy {
		reserved := slices.ContainsFunc(fast[i].Attributes, func(kv *commonpb.KeyValue) bool {
			return strings.HasPrefix(kv.Key, ReservedAttrPrefix)
		})
		require.Equal(t, len(fast[i].Attributes) > 0 && !reserved, lazy[i].AttrsDeferred(), "span %d", i)
		if lazy[i].AttrsDeferred() {
			require.Empty(t, lazy[i].Attributes, "span %d: deferred attributes are not decoded", i)
		}
		lazy[i].DecodeAttrs()
		require.False(t, lazy[i].AttrsDeferred())
		require.True(t, proto.Equal(fast[i].Span, lazy[i].Span), "span %d after DecodeAttrs:\nwant %v\n got %v", i, fast[i].Span, lazy[i].Span)
	}
	require.NoError(t, err, "the fast path accepted what proto.Unmarshal rejects")
	want := FromTracesData(&td)
	require.Len(t, fast, len(want))
	for i := range want {
		require.True(t, proto.Equal(want[i].Span, fast[i].Span), "span %d:\nwant %v\n got %v", i, want[i].Span, fast[i].Span)
		require.True(t, proto.Equal(want[i].Resource.Resource, fast[i].Resource.Resource), "resource of span %d", i)
		require.Equal(t, want[i].Resource.Resource == nil, fast[i].Resource.Resource == nil)
		require.Equal(t, want[i].Resource.SchemaURL, fast[i].Resource.SchemaURL)
		require.True(t, proto.Equal(want[i].Scope.Scope, fast[i].Scope.Scope), "scope of span %d", i)
		require.Equal(t, want[i].Scope.Scope == nil, fast[i].Scope.Scope == nil)
		require.Equal(t, want[i].Scope.SchemaURL, fast[i].Scope.SchemaURL)
		if i > 0 {
			// Spans of one batch share one Resource, as FromTracesData's do.
			require.Equal(t, want[i].Resource == want[i-1].Resource, fast[i].Resource == fast[i-1].Resource)
			require.Equal(t, want[i].Scope == want[i-1].Scope, fast[i].Scope == fast[i-1].Scope)
		}
	}
	return true
}

// everyField sets every field the fast path decodes, with every AnyValue kind
// and nesting.
func everyField() *tracepb.TracesData {
	nested := &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: &commonpb.KeyValueList{Values: []*commonpb.KeyValue{
		{Key: "arr", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: []*commonpb.AnyValue{
			{Value: &commonpb.AnyValue_StringValue{StringValue: "x"}},
			{Value: &commonpb.AnyValue_BoolValue{BoolValue: true}},
			{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: math.Inf(-1)}},
			{},
		}}}}},
		{Key: "empty-list", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_KvlistValue{KvlistValue: &commonpb.KeyValueList{}}}},
		{Key: "no-value"},
	}}}}
	attrs := []*commonpb.KeyValue{
		strAttr("s", "héllo"), intAttr("i", -42),
		{Key: "b", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: false}}},
		{Key: "d", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: 3.25}}},
		{Key: "bytes", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BytesValue{BytesValue: []byte{0, 1, 2}}}},
		{Key: "kv", Value: nested},
	}
	return &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{
		{
			Resource:  &resourcepb.Resource{Attributes: attrs, DroppedAttributesCount: 3},
			SchemaUrl: "https://opentelemetry.io/schemas/1.26.0",
			ScopeSpans: []*tracepb.ScopeSpans{{
				Scope:     &commonpb.InstrumentationScope{Name: "lib", Version: "1.0", Attributes: attrs[:2], DroppedAttributesCount: 1},
				SchemaUrl: "scope-schema",
				Spans: []*tracepb.Span{{
					TraceId: tid(1), SpanId: sid(2), ParentSpanId: sid(1), TraceState: "a=b", Flags: 0x301,
					Name: "GET /x", Kind: tracepb.Span_SPAN_KIND_CLIENT,
					StartTimeUnixNano: 1, EndTimeUnixNano: math.MaxUint64,
					Attributes: attrs, DroppedAttributesCount: 4,
					Events:             []*tracepb.Span_Event{{TimeUnixNano: 5, Name: "exception", Attributes: attrs[:1], DroppedAttributesCount: 2}, {}},
					DroppedEventsCount: 6,
					Links:              []*tracepb.Span_Link{{TraceId: tid(3), SpanId: sid(3), TraceState: "c=d", Attributes: attrs[1:3], DroppedAttributesCount: 1, Flags: 1}},
					DroppedLinksCount:  7,
					Status:             &tracepb.Status{Message: "boom", Code: tracepb.Status_STATUS_CODE_ERROR},
				}, mkSpan(tid(1), sid(3), "second")},
			}, {}},
		},
		{}, // no resource, no scopes
		{ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{}}}}}, // all defaults
	}}
}

func TestDecodeFastMatchesProto(t *testing.T) {
	_, bench := benchRequest(t)
	for name, data := range map[string][]byte{
		"every field":  marshal(t, everyField()),
		"interleaved":  marshal(t, interleaved()),
		"bench shape":  bench,
		"empty":        {},
		"empty batch":  {0x0a, 0x00},
		"empty fields": marshal(t, &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{Resource: &resourcepb.Resource{}, ScopeSpans: []*tracepb.ScopeSpans{{Scope: &commonpb.InstrumentationScope{}, Spans: []*tracepb.Span{{Status: &tracepb.Status{}}}}}}}}),
	} {
		t.Run(name, func(t *testing.T) {
			require.True(t, requireSameAsProto(t, data), "the fast path must take valid OTLP")
		})
	}
}

// TestDecodeFastFallsBack covers what the fast path leaves to proto.Unmarshal;
// DecodeTraces must still give proto's answer for each.
func TestDecodeFastFallsBack(t *testing.T) {
	unknown := interleaved()
	sp(unknown, 1).ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 20, protowire.VarintType), 7))
	reserved := interleaved()
	sp(reserved, 0).Status = &tracepb.Status{}
	sp(reserved, 0).Status.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 2))
	strindex := interleaved()
	sp(strindex, 0).Attributes = []*commonpb.KeyValue{{Key: "k", KeyStrindex: 4}}
	entity := interleaved()
	entity.ResourceSpans[0].Resource.EntityRefs = []*commonpb.EntityRef{{Type: "service"}}
	deep := &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "leaf"}}
	for range maxFastDepth + 2 {
		deep = &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: []*commonpb.AnyValue{deep}}}}
	}
	bad := interleaved()
	sp(bad, 1).Name = marker
	deepTD := interleaved()
	sp(deepTD, 0).Attributes = []*commonpb.KeyValue{{Key: "deep", Value: deep}}
	// Two status fields: proto merges them.
	st := protowire.AppendBytes(protowire.AppendTag(nil, 15, protowire.BytesType), marshal(t, &tracepb.Status{Code: 2}))
	twiceTD := &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{Name: "a", Status: &tracepb.Status{Message: "m"}}}}}}}}
	b := marshal(t, twiceTD)
	merged := appendNested(b, st)

	for name, data := range map[string][]byte{
		"unknown field":   marshal(t, unknown),
		"reserved field":  marshal(t, reserved),
		"key strindex":    marshal(t, strindex),
		"entity refs":     marshal(t, entity),
		"deep nesting":    marshal(t, deepTD),
		"invalid utf-8":   withInvalidUTF8(t, bad),
		"status twice":    merged,
		"truncated":       marshal(t, interleaved())[:40],
		"wrong wire type": {0x08, 0x01},
	} {
		t.Run(name, func(t *testing.T) {
			require.False(t, requireSameAsProto(t, data), "the fast path must leave this to proto.Unmarshal")
			got, err := new(Decoder).DecodeTraces(data)
			var td tracepb.TracesData
			if uerr := proto.Unmarshal(data, &td); uerr == nil {
				require.NoError(t, err)
				want := FromTracesData(&td)
				require.Len(t, got, len(want))
				for i := range want {
					require.True(t, proto.Equal(want[i].Span, got[i].Span))
				}
			}
		})
	}
}

// appendNested appends extra bytes inside the innermost span of a
// TracesData holding one resource, scope and span, fixing the lengths.
func appendNested(td, extra []byte) []byte {
	_, _, n := protowire.ConsumeTag(td)
	rs, _ := protowire.ConsumeBytes(td[n:])
	_, _, n = protowire.ConsumeTag(rs)
	ss, _ := protowire.ConsumeBytes(rs[n:])
	_, _, n = protowire.ConsumeTag(ss)
	s, _ := protowire.ConsumeBytes(ss[n:])
	s = append(append([]byte(nil), s...), extra...)
	ss = protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), s)
	rs = protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), ss)
	return protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), rs)
}

// TestDecodeFastOwnsItsBytes: the decoded spans must not change when the
// caller reuses the record's buffer.
func TestDecodeFastOwnsItsBytes(t *testing.T) {
	data := marshal(t, everyField())
	spans, err := new(Decoder).DecodeTraces(data)
	require.NoError(t, err)
	want := proto.Clone(spans[0].Span)
	for i := range data {
		data[i] = 0xff
	}
	require.True(t, proto.Equal(want, spans[0].Span))
}

func FuzzDecodeTraces(f *testing.F) {
	f.Add(marshal(f, everyField()))
	f.Add(marshal(f, interleaved()))
	bad := interleaved()
	sp(bad, 0).Attributes[0].Key = marker
	f.Add(withInvalidUTF8(f, bad))
	f.Add([]byte{0x0a, 0x02, 0x12, 0x00})
	f.Add([]byte{0x0a, 0x04, 0x12, 0x02, 0x12, 0x00})
	var dec Decoder // shared across inputs, as the indexer shares one
	f.Fuzz(func(t *testing.T, data []byte) {
		requireSameAsProto(t, data)
		got, err := dec.DecodeTraces(data) // must not panic, whatever the input
		var td tracepb.TracesData
		if proto.Unmarshal(data, &td) == nil {
			require.NoError(t, err)
			want := FromTracesData(&td)
			require.Len(t, got, len(want))
			for i := range want {
				require.True(t, proto.Equal(want[i].Span, got[i].Span))
				require.True(t, proto.Equal(want[i].Resource.Resource, got[i].Resource.Resource))
				require.True(t, proto.Equal(want[i].Scope.Scope, got[i].Scope.Scope))
				require.Equal(t, want[i].Resource.SchemaURL, got[i].Resource.SchemaURL)
				require.Equal(t, want[i].Scope.SchemaURL, got[i].Scope.SchemaURL)
			}
		}
	})
}

func BenchmarkDecodeTraces(b *testing.B) {
	for _, bc := range []struct {
		name   string
		decode func([]byte) ([]Span, error)
	}{
		{"fast", new(Decoder).DecodeTraces},
		{"proto.Unmarshal", func(data []byte) ([]Span, error) {
			var td tracepb.TracesData
			err := proto.Unmarshal(data, &td)
			return FromTracesData(&td), err
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			_, req := benchRequest(b)
			b.SetBytes(int64(len(req)))
			b.ReportAllocs()
			spans := 0
			cpu0, _ := processCPU()
			for b.Loop() {
				out, err := bc.decode(req)
				if err != nil || len(out) != 512 {
					b.Fatalf("decode: %v, %d spans", err, len(out))
				}
				spans += len(out)
			}
			reportSpans(b, spans, cpu0)
		})
	}
}

// TestDecoderSharesResources: records decoded by one Decoder share equal
// resources and scopes, and only equal ones; what they decode to is still
// what proto.Unmarshal gives.
func TestDecoderSharesResources(t *testing.T) {
	var dec Decoder
	rec := func(service, schema string, withResource bool) []byte {
		rs := &tracepb.ResourceSpans{SchemaUrl: schema, ScopeSpans: []*tracepb.ScopeSpans{{
			Scope: mkScope("lib"), Spans: []*tracepb.Span{mkSpan(tid(1), sid(1), "op")},
		}}}
		if withResource {
			rs.Resource = mkResource(service)
		}
		return marshal(t, &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{rs}})
	}
	decode := func(data []byte) Span {
		t.Helper()
		spans, err := dec.DecodeTraces(data)
		require.NoError(t, err)
		require.Len(t, spans, 1)
		var td tracepb.TracesData
		require.NoError(t, proto.Unmarshal(data, &td))
		want := FromTracesData(&td)[0]
		require.True(t, proto.Equal(want.Resource.Resource, spans[0].Resource.Resource))
		require.Equal(t, want.Resource.Resource == nil, spans[0].Resource.Resource == nil)
		require.Equal(t, want.Resource.SchemaURL, spans[0].Resource.SchemaURL)
		require.True(t, proto.Equal(want.Scope.Scope, spans[0].Scope.Scope))
		return spans[0]
	}
	a := decode(rec("checkout", "s1", true))
	b := decode(rec("checkout", "s1", true))
	require.Same(t, a.Resource, b.Resource, "the same resource is decoded once")
	require.Same(t, a.Scope, b.Scope)
	require.NotSame(t, a.Span, b.Span, "spans are never shared")
	require.NotSame(t, a.Resource, decode(rec("payment", "s1", true)).Resource)
	require.NotSame(t, a.Resource, decode(rec("checkout", "s2", true)).Resource)
	none := decode(rec("", "s1", false))
	require.Nil(t, none.Resource.Resource)
	empty := decode(marshal(t, &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{Resource: &resourcepb.Resource{}, SchemaUrl: "s1",
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{mkSpan(tid(1), sid(1), "op")}}}}}}))
	require.NotNil(t, empty.Resource.Resource, "an empty resource is not an absent one")
	require.NotSame(t, none.Resource, empty.Resource)
}

// TestSharedLookupAllocatesNothing: finding a resource the Decoder already
// holds builds its key in a buffer kept from the lookup before, so a
// record whose resources are all known costs no key allocation.
func TestSharedLookupAllocatesNothing(t *testing.T) {
	var s shared[Resource]
	msg := marshal(t, mkResource("checkout"))
	schema := []byte("https://opentelemetry.io/schemas/1.37.0")
	want := &Resource{}
	s.put(msg, schema, want)
	require.Same(t, want, s.get(msg, schema))
	require.Zero(t, testing.AllocsPerRun(100, func() { s.get(msg, schema) }))
}

// TestDecodeTracesOwnership: DecodeTraces copies the record, so changing
// it afterwards changes no span; DecodeTracesLazy decodes the same spans
// without the copy, aliasing the buffer it was handed.
func TestDecodeTracesOwnership(t *testing.T) {
	str := func(k, v string) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
	}
	data, err := proto.Marshal(&tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("service.name", "checkout")}},
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{
			{TraceId: make([]byte, 16), SpanId: []byte{1, 2, 3, 4, 5, 6, 7, 8}, Name: "POST /pay", Attributes: []*commonpb.KeyValue{str("http.method", "POST")}},
			{TraceId: make([]byte, 16), SpanId: []byte{2, 2, 3, 4, 5, 6, 7, 8}, Name: "SELECT", StartTimeUnixNano: 5},
		}}},
	}}})
	require.NoError(t, err)
	require.True(t, requireSameAsProto(t, data), "the fast path takes the record")
	var td tracepb.TracesData
	require.NoError(t, proto.Unmarshal(data, &td))
	want := FromTracesData(&td)

	var d Decoder
	copied, err := d.DecodeTraces(data)
	require.NoError(t, err)
	owned, err := d.DecodeTracesLazy(data)
	require.NoError(t, err)
	require.Len(t, owned, len(want))
	for i := range want {
		owned[i].DecodeAttrs()
		require.True(t, proto.Equal(want[i].Span, owned[i].Span))
	}
	clear(data)
	for i := range want {
		require.True(t, proto.Equal(want[i].Span, copied[i].Span), "span %d changed with the record", i)
		require.NotEmpty(t, owned[i].Wire)
		require.Equal(t, make([]byte, len(owned[i].Wire)), owned[i].Wire, "span %d aliases the owned buffer", i)
	}
}

// BenchmarkDecodeTraceRecords decodes the request split into one record
// per trace, as the indexer decodes what the collector produced: leased is
// what the indexer does (the record unpacked into a lease, decoded lazily,
// the lease released once the spans are done with), lazy is the decode
// alone, full decodes the attributes too.
func BenchmarkDecodeTraceRecords(b *testing.B) {
	_, req := benchRequest(b)
	res, err := NewSplitter().Split(req)
	require.NoError(b, err)
	for _, bc := range []struct {
		name   string
		decode func(*Decoder, []byte) (int, error)
	}{
		{"lazy", func(d *Decoder, data []byte) (int, error) {
			out, err := d.DecodeTracesLazy(data)
			return len(out), err
		}},
		{"full", func(d *Decoder, data []byte) (int, error) {
			out, err := d.DecodeTraces(data)
			return len(out), err
		}},
		{"leased", func(d *Decoder, data []byte) (int, error) {
			l := NewLease(len(data))
			copy(l.Bytes(), data)
			out, err := d.DecodeLeased(nil, &l)
			l.Release()
			return len(out), err
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var d Decoder
			b.SetBytes(int64(len(req)))
			b.ReportAllocs()
			spans := 0
			cpu0, _ := processCPU()
			for b.Loop() {
				for _, r := range res.Batches {
					n, err := bc.decode(&d, r.Data)
					if err != nil {
						b.Fatal(err)
					}
					spans += n
				}
			}
			reportSpans(b, spans, cpu0)
		})
	}
}

// TestDeferredAttrs: a lazily decoded span lists its received attributes
// from the wire, finds keys there, decodes them ahead of attributes
// appended since, and every copy of the Span sees the decode.
func TestDeferredAttrs(t *testing.T) {
	data, err := proto.Marshal(everyField())
	require.NoError(t, err)
	var d Decoder
	spans, err := d.DecodeTracesLazy(data)
	require.NoError(t, err)
	var td tracepb.TracesData
	require.NoError(t, proto.Unmarshal(data, &td))
	want := FromTracesData(&td)[0].Span

	sp := spans[0]
	require.True(t, sp.AttrsDeferred())
	require.Empty(t, sp.Attributes)
	var keys []string
	sp.RangeDeferredAttrs(func(key string, value []byte) {
		keys = append(keys, key)
		var v commonpb.AnyValue
		require.NoError(t, proto.Unmarshal(value, &v))
		require.True(t, proto.Equal(want.Attributes[len(keys)-1].GetValue(), &v), "value of %s", key)
	})
	require.Len(t, keys, len(want.Attributes))
	for i, kv := range want.Attributes {
		require.Equal(t, kv.Key, keys[i])
	}

	appended := &commonpb.KeyValue{Key: "appended"}
	sp.Attributes = append(sp.Attributes, appended)
	cp := sp
	cp.DecodeAttrs()
	require.False(t, sp.AttrsDeferred(), "copies share the decode")
	wantAttrs := append(slices.Clone(want.Attributes), appended)
	require.Len(t, sp.Attributes, len(wantAttrs))
	for i := range wantAttrs {
		require.True(t, proto.Equal(wantAttrs[i], sp.Attributes[i]), "attribute %d", i)
	}
	require.Same(t, appended, sp.Attributes[len(wantAttrs)-1])
	sp.RangeDeferredAttrs(func(string, []byte) { t.Fatal("nothing is deferred any more") })
	cp.DecodeAttrs()
	require.Len(t, sp.Attributes, len(want.Attributes)+1, "decoding twice adds nothing")

	sp.ForgetWire()
	require.Nil(t, sp.Wire)
	require.NotNil(t, spans[1].Wire)

	// A span received with a reserved attribute is decoded in full.
	td.ResourceSpans[0].ScopeSpans[0].Spans[0].Attributes = append(want.Attributes[:2:2],
		&commonpb.KeyValue{Key: ReservedAttrPrefix + "logical_time"}, want.Attributes[2])
	data, err = proto.Marshal(&td)
	require.NoError(t, err)
	spans, err = d.DecodeTracesLazy(data)
	require.NoError(t, err)
	require.False(t, spans[0].AttrsDeferred())
	require.Len(t, spans[0].Attributes, 4)
	require.True(t, proto.Equal(td.ResourceSpans[0].ScopeSpans[0].Spans[0], spans[0].Span))
	require.True(t, requireSameAsProto(t, data))
}

// TestDecodeFastEdgeEncodings runs short, often malformed, attribute
// encodings through requireSameAsProto: the hand-written fast paths for
// one-byte tags and lengths (shortField, checkAnyValue) must accept and
// refuse exactly what the general parse and proto.Unmarshal do, field 0,
// truncated lengths and wrong wire types included.
func TestDecodeFastEdgeEncodings(t *testing.T) {
	alphabet := []byte{0x00, 0x01, 0x02, 0x08, 0x09, 0x0a, 0x0d, 0x10, 0x12, 0x18, 0x1a, 0x21, 0x2a, 0x7f, 0x80, 0xff}
	var each func(prefix []byte, n int, fn func([]byte))
	each = func(prefix []byte, n int, fn func([]byte)) {
		fn(prefix)
		if n == 0 {
			return
		}
		for _, c := range alphabet {
			each(append(prefix[:len(prefix):len(prefix)], c), n-1, fn)
		}
	}
	record := func(kv []byte) []byte {
		sp := protowire.AppendBytes(protowire.AppendTag(nil, 9, protowire.BytesType), kv)
		ss := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), sp)
		rs := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), ss)
		return protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), rs)
	}
	key := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "k")
	each(nil, 3, func(kv []byte) { requireSameAsProto(t, record(kv)) })
	each(nil, 4, func(value []byte) {
		kv := protowire.AppendBytes(protowire.AppendTag(key, 2, protowire.BytesType), value)
		requireSameAsProto(t, record(kv))
	})
	// Values whose lengths or varints take more than a byte.
	long := strings.Repeat("x", 200)
	for _, value := range [][]byte{
		protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), long),
		protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), math.MaxUint64),
		append(protowire.AppendTag(nil, 3, protowire.VarintType), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02), // overflows
		append(protowire.AppendTag(nil, 3, protowire.VarintType), 0x80, 0x00),                                                 // not minimal, still valid
		append(protowire.AppendTag(nil, 4, protowire.Fixed64Type), 1, 2, 3, 4, 5, 6, 7),
		append(protowire.AppendTag(nil, 4, protowire.Fixed64Type), 1, 2, 3, 4, 5, 6, 7, 8, 9),
	} {
		kv := protowire.AppendBytes(protowire.AppendTag(key, 2, protowire.BytesType), value)
		requireSameAsProto(t, record(kv))
		kv = protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte(long))
		requireSameAsProto(t, record(protowire.AppendBytes(protowire.AppendTag(kv, 2, protowire.BytesType), value)))
	}
}

// TestConsumeField: ConsumeField agrees with protowire's ConsumeTag and
// ConsumeFieldValue on every field but groups, which it refuses.
func TestConsumeField(t *testing.T) {
	var cases [][]byte
	for _, f := range [][]byte{
		protowire.AppendBytes(protowire.AppendTag(nil, 9, protowire.BytesType), make([]byte, 3)),
		protowire.AppendBytes(protowire.AppendTag(nil, 9, protowire.BytesType), make([]byte, 300)),
		protowire.AppendBytes(protowire.AppendTag(nil, 200, protowire.BytesType), nil),
		protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 1<<40),
		protowire.AppendFixed64(protowire.AppendTag(nil, 7, protowire.Fixed64Type), 5),
		protowire.AppendFixed32(protowire.AppendTag(nil, 7, protowire.Fixed32Type), 5),
		protowire.AppendTag(nil, 3, protowire.StartGroupType),
		{0x00}, {0x4a}, {0x4a, 0x05, 1}, {0x4a, 0x80}, {0xff, 0xff}, {0x4a, 0x7f},
	} {
		cases = append(cases, f, f[:len(f)-1], append(f[:len(f):len(f)], 0x08, 0x01))
	}
	for _, b := range cases {
		num, typ, n := ConsumeField(b)
		wantNum, wantTyp, tn := protowire.ConsumeTag(b)
		want := tn
		if tn >= 0 {
			if vn := protowire.ConsumeFieldValue(wantNum, wantTyp, b[tn:]); vn < 0 {
				want = vn
			} else {
				want = tn + vn
			}
		}
		if wantTyp == protowire.StartGroupType && tn >= 0 {
			require.Negative(t, n, "%x: groups are refused", b)
			continue
		}
		if want < 0 {
			require.Negative(t, n, "%x", b)
			continue
		}
		require.Equal(t, want, n, "%x", b)
		require.Equal(t, wantNum, num, "%x", b)
		require.Equal(t, wantTyp, typ, "%x", b)
	}
}
