package index

import (
	"cmp"
	"math"
	"slices"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/stretchr/testify/require"
	"github.com/threadline/threadline/span"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func FuzzDecodeSummary(f *testing.F) {
	full := summary{Seq: 7, MinStart: 10, MaxEnd: 20, HasRoot: true, RootStart: 10, RootEnd: 19,
		RootService: "svc", RootName: "op", SpanCount: 3, ErrorCount: 1,
		Reasons: []string{"error"}, Services: []string{"a", "b"}, Warnings: []string{"w"},
		Chunks: []chunkRef{{id: 1, group: 2, off: 3, n: 4}, {id: 5, group: 2, off: 1 << 20, n: 300}}, ChunksOnly: true}
	f.Add(full.appendTo(nil))
	f.Add((&summary{}).appendTo(nil))
	f.Add([]byte{})
	f.Add([]byte{valueVersion, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeSummary(b)
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			return
		}
		again, err := decodeSummary(s.appendTo(nil))
		require.NoError(t, err)
		require.Equal(t, s, again)
	})
}

func chunkOf(t testing.TB, kt KeptTrace) []byte {
	var entries []chunkEntry
	for i, sp := range kt.Trace.Spans {
		body, err := appendSpanBody(nil, sp.Span, &tracepb.Span{})
		require.NoError(t, err)
		entries = append(entries, chunkEntry{sid: span.SpanID(sp.SpanId), res: uint64(11 + i%2), scope: 22, body: body})
	}
	return appendChunk(nil, entries)
}

func FuzzWalkChunk(f *testing.F) {
	tr := fixture()[1].Trace
	f.Add(chunkOf(f, fixture()[1]))
	f.Add([]byte{valueVersion})
	f.Add([]byte{valueVersion, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Add([]byte("\xffgarbage"))
	f.Add(snappyChunk(chunkOf(f, fixture()[1])))
	f.Add([]byte{chunkSnappy, 0x05, 0x00})
	f.Add([]byte{chunkDictS2, 0x01, 0x05, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		err := walkChunk(b, nil, func(e chunkEntry) error {
			sp, err := decodeSpanBody(e.body, tr.ID, e.sid)
			if err == nil {
				require.Equal(t, e.sid[:], sp.SpanId)
				require.Equal(t, tr.ID[:], sp.TraceId)
			}
			return err
		})
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
		}
	})
}

func FuzzDecodeFragment(f *testing.F) {
	f.Add(appendFragment(nil, []uint64{100, 90, 90, 3}), uint64(100))
	f.Add([]byte{valueVersion}, uint64(0))
	f.Add([]byte{valueVersion, 0xff}, uint64(5))
	f.Fuzz(func(t *testing.T, b []byte, maxSeq uint64) {
		seqs, err := decodeFragment(nil, b, maxSeq)
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			return
		}
		require.True(t, slices.IsSortedFunc(seqs, func(a, b uint64) int { return cmp.Compare(b, a) }))
		if len(seqs) > 0 && seqs[0] == maxSeq {
			again, err := decodeFragment(nil, appendFragment(nil, seqs), maxSeq)
			require.NoError(t, err)
			require.Equal(t, seqs, again)
		}
	})
}

// snappyChunk is a chunk in the Snappy form of the version before groups.
func snappyChunk(plain []byte) []byte {
	return append([]byte{chunkSnappy}, s2.EncodeSnappy(nil, plain)...)
}

func TestChunkRoundTrip(t *testing.T) {
	for _, kt := range fixture() {
		plain := chunkOf(t, kt)
		packed := snappyChunk(plain)
		require.Less(t, len(packed), len(plain), "the chunk compresses")
		for _, value := range [][]byte{plain, packed} {
			requireChunkMatches(t, kt, value, nil)
		}
	}
}

// requireChunkMatches walks a chunk value, plain or compressed, and checks
// it holds kt's spans.
func requireChunkMatches(t *testing.T, kt KeptTrace, value []byte, chunks *chunkReader) {
	t.Helper()
	{
		var got []*tracepb.Span
		var hashes []uint64
		require.NoError(t, walkChunk(value, chunks, func(e chunkEntry) error {
			sp, err := decodeSpanBody(e.body, kt.Trace.ID, e.sid)
			got = append(got, sp)
			hashes = append(hashes, e.res, e.scope)
			return err
		}))
		require.Len(t, got, len(kt.Trace.Spans))
		for i, sp := range kt.Trace.Spans {
			require.True(t, proto.Equal(sp.Span, got[i]))
			require.Equal(t, []uint64{uint64(11 + i%2), 22}, hashes[2*i:2*i+2])
		}
	}
}

// slowSpanBody is the reference encoding: protobuf-go.
func slowSpanBody(t testing.TB, sp *tracepb.Span) []byte {
	c := proto.Clone(sp).(*tracepb.Span)
	c.TraceId, c.SpanId = nil, nil
	b, err := proto.Marshal(c)
	require.NoError(t, err)
	return b
}

func TestSpanBodyMatchesProto(t *testing.T) {
	w := newWorkload(1)
	var spans []*tracepb.Span
	for _, kt := range append(fixture(), w.kept(5)...) {
		for _, sp := range kt.Trace.Spans {
			spans = append(spans, sp.Span)
		}
	}
	spans = append(spans,
		&tracepb.Span{},
		&tracepb.Span{
			TraceState: "k=v", ParentSpanId: []byte{1, 2}, Flags: 0x301, Name: "n", Kind: tracepb.Span_SPAN_KIND_PRODUCER,
			StartTimeUnixNano: 1, EndTimeUnixNano: math.MaxUint64, DroppedAttributesCount: 3, DroppedEventsCount: 4, DroppedLinksCount: 5,
			Attributes: []*commonpb.KeyValue{
				{Key: "empty"}, {Key: "", Value: &commonpb.AnyValue{}},
				{Key: "s", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{}}},
				{Key: "b", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{}}},
				{Key: "t", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: true}}},
				{Key: "i", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: -5}}},
				{Key: "d", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: -0.5}}},
				{Key: "z", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{}}},
			},
			Events: []*tracepb.Span_Event{{}, {TimeUnixNano: 9, Name: "e", Attributes: []*commonpb.KeyValue{strAttr("a", "b")}, DroppedAttributesCount: 1}},
			Links:  []*tracepb.Span_Link{{}, {TraceId: make([]byte, 16), SpanId: []byte{1}, TraceState: "x", Attributes: []*commonpb.KeyValue{intAttr("n", 1)}, DroppedAttributesCount: 2, Flags: 1}},
			Status: &tracepb.Status{Message: "m", Code: tracepb.Status_STATUS_CODE_ERROR},
		},
		&tracepb.Span{Status: &tracepb.Status{}, Kind: tracepb.Span_SpanKind(-1)},
	)
	for i, sp := range spans {
		got, err := fastAppendSpanBody([]byte{0xaa}, sp)
		require.NoError(t, err, "span %d", i)
		require.Equal(t, slowSpanBody(t, sp), got[1:], "span %d", i)
	}

	// Values the fast path leaves to protobuf-go.
	arr := &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: []*commonpb.AnyValue{{}}}}}
	unknown := &tracepb.Span{Name: "u"}
	unknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	for i, sp := range []*tracepb.Span{
		{Attributes: []*commonpb.KeyValue{{Key: "a", Value: arr}}},
		{Attributes: []*commonpb.KeyValue{nil}},
		{Name: "bad \xff utf-8"},
		{Events: []*tracepb.Span_Event{nil}},
		unknown,
	} {
		got, err := fastAppendSpanBody([]byte{0xaa}, sp)
		require.ErrorIs(t, err, errSlowPath, "span %d", i)
		require.Equal(t, []byte{0xaa}, got)
		if i < 2 || i == 4 {
			body, err := appendSpanBody(nil, sp, &tracepb.Span{})
			require.NoError(t, err)
			require.Equal(t, slowSpanBody(t, sp), body, "span %d", i)
		}
	}
}

func FuzzSpanBody(f *testing.F) {
	f.Add("name", "k", "v", int64(3), uint64(10), uint32(1), true)
	f.Add("", "", "\xff", int64(-1), uint64(0), uint32(0), false)
	f.Fuzz(func(t *testing.T, name, key, val string, n int64, ts uint64, flags uint32, root bool) {
		sp := &tracepb.Span{Name: name, StartTimeUnixNano: ts, Flags: flags, Kind: tracepb.Span_SpanKind(n % 8),
			Attributes: []*commonpb.KeyValue{strAttr(key, val), intAttr(val, n)},
			Events:     []*tracepb.Span_Event{{Name: val, TimeUnixNano: ts, Attributes: []*commonpb.KeyValue{strAttr(name, key)}}},
			Status:     &tracepb.Status{Message: key}}
		if !root {
			sp.ParentSpanId = []byte(key)
		}
		got, err := fastAppendSpanBody(nil, sp)
		if err != nil {
			require.ErrorIs(t, err, errSlowPath)
			return
		}
		require.Equal(t, slowSpanBody(t, sp), got)
	})
}

// TestWireBody: a span's body copied from its received encoding decodes
// to the span appendSpanBody encodes, also with attributes appended after
// decoding (the logical time the skew stage adds); a wire holding more
// attributes than the span is refused.
func TestWireBody(t *testing.T) {
	w := newWorkload(2)
	for _, kt := range append(fixture(), w.kept(10)...) {
		data, err := proto.Marshal(span.ToTracesData(kt.Trace.Spans))
		require.NoError(t, err)
		var dec span.Decoder
		spans, err := dec.DecodeTraces(data)
		require.NoError(t, err)
		for i, sp := range spans {
			require.NotNil(t, sp.Wire, "the decoder keeps the span's encoding")
			if i%2 == 1 {
				sp.Attributes = append(sp.Attributes, intAttr("threadline.logical_time", int64(i)))
			}
			got, ok := appendWireBody([]byte{0xaa}, sp)
			require.True(t, ok)
			require.Equal(t, byte(0xaa), got[0])
			want, err := appendSpanBody(nil, sp.Span, &tracepb.Span{})
			require.NoError(t, err)
			sid := span.SpanID(sp.SpanId)
			a, err := decodeSpanBody(got[1:], kt.Trace.ID, sid)
			require.NoError(t, err)
			b, err := decodeSpanBody(want, kt.Trace.ID, sid)
			require.NoError(t, err)
			require.True(t, proto.Equal(a, b), "span %d:\nwire %v\nwant %v", i, a, b)
			require.True(t, proto.Equal(sp.Span, a))

			sp.Attributes = nil
			if len(a.Attributes) > 0 {
				got, ok := appendWireBody([]byte{0xaa}, sp)
				require.False(t, ok)
				require.Equal(t, []byte{0xaa}, got)
			}
		}
	}
}

// TestWireBodyWhole: a lazily decoded span whose IDs lead its encoding is
// copied in one piece (span.Span.WireBody), byte for byte what the
// field-by-field copy makes of the same span; one whose span_id comes after
// other fields takes the field-by-field copy.
func TestWireBodyWhole(t *testing.T) {
	w := newWorkload(3)
	for _, kt := range append(fixture(), w.kept(10)...) {
		data, err := proto.Marshal(span.ToTracesData(kt.Trace.Spans))
		require.NoError(t, err)
		var dec span.Decoder
		lazy, err := dec.DecodeTracesLazy(slices.Clone(data))
		require.NoError(t, err)
		ref, err := dec.DecodeTracesLazy(slices.Clone(data))
		require.NoError(t, err)
		for i, sp := range lazy {
			if !sp.AttrsDeferred() {
				continue // no attributes to defer
			}
			_, whole := sp.WireBody()
			require.True(t, whole, "span %d", i)
			if i%2 == 1 {
				sp.Attributes = append(sp.Attributes, intAttr("threadline.logical_time", int64(i)))
				ref[i].DecodeAttrs()
				ref[i].Attributes = append(ref[i].Attributes, intAttr("threadline.logical_time", int64(i)))
			} else {
				ref[i].DecodeAttrs()
			}
			_, whole = ref[i].WireBody()
			require.False(t, whole, "attributes decoded")
			got, ok := appendWireBody(nil, sp)
			require.True(t, ok)
			want, ok := appendWireBody(nil, ref[i])
			require.True(t, ok)
			require.Equal(t, want, got, "span %d", i)
		}
	}

	// span_id after the name: the IDs do not lead.
	sp := fixture()[0].Trace.Spans[0].Span
	wire := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), sp.TraceId)
	wire = protowire.AppendString(protowire.AppendTag(wire, 5, protowire.BytesType), sp.Name)
	wire = protowire.AppendBytes(protowire.AppendTag(wire, 2, protowire.BytesType), sp.SpanId)
	kv, err := proto.Marshal(strAttr("k", "v"))
	require.NoError(t, err)
	wire = protowire.AppendBytes(protowire.AppendTag(wire, 9, protowire.BytesType), kv)
	td := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), wire) // ScopeSpans.spans
	td = protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), td)    // ResourceSpans.scope_spans
	td = protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), td)    // TracesData.resource_spans
	spans, err := new(span.Decoder).DecodeTracesLazy(td)
	require.NoError(t, err)
	require.Len(t, spans, 1)
	require.True(t, spans[0].AttrsDeferred())
	_, whole := spans[0].WireBody()
	require.False(t, whole)
	got, ok := appendWireBody(nil, spans[0])
	require.True(t, ok)
	want := protowire.AppendString(protowire.AppendTag(nil, 5, protowire.BytesType), sp.Name)
	want = protowire.AppendBytes(protowire.AppendTag(want, 9, protowire.BytesType), kv)
	require.Equal(t, want, got)
}

// FuzzWireBody: whatever encoding a span arrived in, the copied body
// decodes to that span.
func FuzzWireBody(f *testing.F) {
	for _, kt := range fixture() {
		for _, sp := range kt.Trace.Spans {
			b, err := proto.Marshal(sp.Span)
			require.NoError(f, err)
			f.Add(b)
		}
	}
	f.Add([]byte{0x0a, 0x01})
	f.Fuzz(func(t *testing.T, wire []byte) {
		sp := &tracepb.Span{}
		if proto.Unmarshal(wire, sp) != nil {
			return
		}
		got, ok := appendWireBody(nil, span.Span{Span: sp, Wire: wire})
		if !ok {
			// Only a top-level group (deprecated, refused by the fast
			// decoder) sends the writer to its fallback, the full encode.
			require.True(t, hasGroup(wire), "the wire copy refused a span without groups")
			var err error
			got, err = appendSpanBody(nil, sp, &tracepb.Span{})
			require.NoError(t, err)
		}
		back := &tracepb.Span{}
		require.NoError(t, proto.Unmarshal(got, back))
		sp.TraceId, sp.SpanId = nil, nil
		require.True(t, proto.Equal(sp, back), "want %v\ngot  %v", sp, back)
	})
}

// hasGroup reports whether message b has a group field at its top level.
func hasGroup(b []byte) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		if typ == protowire.StartGroupType {
			return true
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return false
		}
		b = b[n+m:]
	}
	return false
}

// TestLongWireString: the writer's shortcut for unindexed values takes
// exactly the strings longer than maxIndexedValue, and nothing it cannot
// parse.
func TestLongWireString(t *testing.T) {
	enc := func(v *commonpb.AnyValue) []byte {
		b, err := proto.Marshal(v)
		require.NoError(t, err)
		return b
	}
	str := func(n int) []byte {
		return enc(&commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: string(make([]byte, n))}})
	}
	require.False(t, longWireString(str(maxIndexedValue)))
	require.True(t, longWireString(str(maxIndexedValue+1)))
	require.True(t, longWireString(str(10_000)))
	require.False(t, longWireString(enc(&commonpb.AnyValue{Value: &commonpb.AnyValue_BytesValue{BytesValue: make([]byte, 100)}})))
	require.False(t, longWireString(str(100)[:80]), "a truncated string is not taken for long")
	require.False(t, longWireString(nil))
}
