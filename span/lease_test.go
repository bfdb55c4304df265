package span

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// leased copies a record into a new lease.
func leased(data []byte) Lease {
	l := NewLease(len(data))
	copy(l.Bytes(), data)
	return l
}

// requireDecodesAs checks spans decoded from data against proto.Unmarshal's,
// resources and scopes included, decoding their deferred attributes.
func requireDecodesAs(t *testing.T, data []byte, spans []Span) {
	t.Helper()
	var td tracepb.TracesData
	require.NoError(t, proto.Unmarshal(data, &td))
	want := FromTracesData(&td)
	require.Len(t, spans, len(want))
	for i := range want {
		spans[i].DecodeAttrs()
		require.True(t, proto.Equal(want[i].Span, spans[i].Span), "span %d:\nwant %v\n got %v", i, want[i].Span, spans[i].Span)
		require.True(t, proto.Equal(want[i].Resource.Resource, spans[i].Resource.Resource), "resource of span %d", i)
		require.Equal(t, want[i].Resource.SchemaURL, spans[i].Resource.SchemaURL)
		require.True(t, proto.Equal(want[i].Scope.Scope, spans[i].Scope.Scope), "scope of span %d", i)
		require.Equal(t, want[i].Scope.SchemaURL, spans[i].Scope.SchemaURL)
	}
}

// TestDecodeLeased: spans decoded from a lease are DecodeTracesLazy's,
// appended to what the caller passes; they alias the lease until it is
// released, which poisons the buffer (in tests) and zeroes the spans. The
// resources and scopes the Decoder shares with later records alias none of
// it: they outlive the lease unchanged.
func TestDecodeLeased(t *testing.T) {
	require.True(t, poisonReleased, "test binaries poison released leases")
	data := marshal(t, everyField())
	var d Decoder
	before := Span{Span: &tracepb.Span{Name: "before"}}
	l := leased(data)
	spans, err := d.DecodeLeased([]Span{before}, &l)
	require.NoError(t, err)
	require.Equal(t, before, spans[0], "appended after dst")
	first := spans[1]
	require.True(t, first.AttrsDeferred())
	requireDecodesAs(t, data, spans[1:])
	require.NotNil(t, first.Resource.Resource)
	buf := l.Bytes()

	l.Release()
	require.Equal(t, bytes.Repeat([]byte{poisonByte}, len(buf)), buf, "the released buffer is poisoned")
	require.Empty(t, first.GetName(), "the released spans are zeroed")
	require.Nil(t, first.GetSpanId())
	require.Nil(t, first.GetStatus())
	// The resources and scopes, which the Decoder shares, are decoded from
	// copies of their own: the poison reached none.
	var td tracepb.TracesData
	require.NoError(t, proto.Unmarshal(data, &td))
	require.True(t, proto.Equal(td.ResourceSpans[0].Resource, first.Resource.Resource))
	require.Equal(t, td.ResourceSpans[0].SchemaUrl, first.Resource.SchemaURL)
	require.True(t, proto.Equal(td.ResourceSpans[0].ScopeSpans[0].Scope, first.Scope.Scope))
	require.Equal(t, td.ResourceSpans[0].ScopeSpans[0].SchemaUrl, first.Scope.SchemaURL)

	// The next record with the same resources and scopes gets the shared
	// ones.
	l = leased(data)
	again, err := d.DecodeLeased(nil, &l)
	require.NoError(t, err)
	require.Same(t, first.Resource, again[0].Resource, "shared with the first record")
	require.Same(t, first.Scope, again[0].Scope)
	requireDecodesAs(t, data, again)
	l.Release()

	// A resource too big to share is decoded from the record's lease.
	huge := &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource:   mkResource(strings.Repeat("x", maxSharedSize)),
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{mkSpan(tid(1), sid(1), "op")}}},
	}}}
	var bigs []Span
	for range 2 {
		l = leased(marshal(t, huge))
		spans, err = d.DecodeLeased(nil, &l)
		require.NoError(t, err)
		bigs = append(bigs, spans[0])
		l.Release()
	}
	require.NotSame(t, bigs[0].Resource, bigs[1].Resource)

	// A record that does not take the fast path decodes all the same, and
	// aliases nothing of the lease.
	slow := append(bytes.Clone(data), 0x10, 0x01) // an unknown field
	_, fast := decodeTracesFast(nil, slow, nil, true, true, nil)
	require.False(t, fast)
	l = leased(slow)
	spans, err = d.DecodeLeased(nil, &l)
	require.NoError(t, err)
	l.Release()
	requireDecodesAs(t, data, spans)
}

// TestLeaseSizes: a lease holds exactly the bytes asked for, in a pooled
// buffer of the next size class, or unpooled past the bound; spans take
// pooled structs up to a bound too. The classes are tight: a buffer of at
// most 16 KiB wastes under 512 bytes, a larger one under half, and up to 16
// spans take no slot more than they need.
func TestLeaseSizes(t *testing.T) {
	for _, n := range []int{0, 1, 511, 512, 513, 1000, 4096, 4097, 5000, 16 << 10, 16<<10 + 1, byteSizes.Max(), byteSizes.Max() + 1} {
		l := NewLease(n)
		require.Len(t, l.Bytes(), n)
		if n > byteSizes.Max() {
			require.Nil(t, l.buf)
		} else {
			c := cap(*l.buf)
			require.GreaterOrEqual(t, c, n)
			if n <= 16<<10 {
				require.Less(t, c, max(n, 1)+512, "%d bytes", n)
			} else {
				require.Less(t, c, 2*n, "%d bytes", n)
			}
			require.Equal(t, c, byteSizes.Size(byteSizes.Of(c)), "a buffer's class is that of its capacity")
		}
		l.Release()
		require.Nil(t, l.Bytes(), "a released lease holds nothing")
	}
	require.Equal(t, 256<<10, byteSizes.Max())
	require.Equal(t, 512, slotSizes.Max())
	for _, spans := range []int{0, 1, 3, 5, 16, 17, 33, slotSizes.Max(), slotSizes.Max() + 1} {
		var l Lease
		slots := l.takeSlots(spans)
		require.Len(t, slots, spans)
		require.Equal(t, spans >= 1 && spans <= slotSizes.Max(), l.slots != nil, "%d spans", spans)
		if l.slots != nil {
			c := cap(*l.slots)
			if spans <= 16 {
				require.Equal(t, spans, c)
			} else {
				require.Less(t, c, 2*spans)
			}
			require.Equal(t, c, slotSizes.Size(slotSizes.Of(c)))
		}
		l.Release()
	}
}
