package index

import (
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/threadline/threadline/span"
	"google.golang.org/protobuf/proto"
)

func FuzzDecodeSummary(f *testing.F) {
	full := summary{Seq: 7, MinStart: 10, MaxEnd: 20, HasRoot: true, RootStart: 10, RootEnd: 19,
		RootService: "svc", RootName: "op", SpanCount: 3, ErrorCount: 1,
		Reasons: []string{"error"}, Services: []string{"a", "b"}, Warnings: []string{"w"}}
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

func FuzzDecodeSpanValue(f *testing.F) {
	tr := fixture()[1].Trace
	v, err := appendSpanValue(nil, tr.Spans[1].Span, 1, 2)
	require.NoError(f, err)
	f.Add(v)
	f.Add([]byte{valueVersion})
	f.Add([]byte("\xffgarbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sid := span.SpanID{7: 1}
		sp, _, _, err := decodeSpanValue(b, tr.ID, sid)
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			return
		}
		require.Equal(t, sid[:], sp.SpanId)
		require.Equal(t, tr.ID[:], sp.TraceId)
	})
}

func TestSpanValueRoundTrip(t *testing.T) {
	for _, kt := range fixture() {
		for _, sp := range kt.Trace.Spans {
			v, err := appendSpanValue(nil, sp.Span, 11, 22)
			require.NoError(t, err)
			got, rh, sh, err := decodeSpanValue(v, kt.Trace.ID, span.SpanID(sp.SpanId))
			require.NoError(t, err)
			require.Equal(t, uint64(11), rh)
			require.Equal(t, uint64(22), sh)
			require.True(t, proto.Equal(sp.Span, got))
		}
	}
}
