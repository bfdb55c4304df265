package span

import (
	"testing"

	"github.com/stretchr/testify/require"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func TestCountSpans(t *testing.T) {
	td := &tracepb.TracesData{}
	want := 0
	for r := range 3 {
		rs := &tracepb.ResourceSpans{}
		for s := range r + 1 {
			ss := &tracepb.ScopeSpans{}
			for range s + 2 {
				ss.Spans = append(ss.Spans, &tracepb.Span{Name: "x", TraceId: make([]byte, 16)})
				want++
			}
			rs.ScopeSpans = append(rs.ScopeSpans, ss)
		}
		td.ResourceSpans = append(td.ResourceSpans, rs)
	}
	b, err := proto.Marshal(td)
	require.NoError(t, err)
	n, err := CountSpans(b)
	require.NoError(t, err)
	require.Equal(t, want, n)

	// An unknown group field (valid protobuf, never sent by OTLP) is
	// skipped, not refused; a long span is counted like a short one.
	group := protowire.AppendTag(nil, 99, protowire.StartGroupType)
	group = protowire.AppendVarint(protowire.AppendTag(group, 5, protowire.VarintType), 7)
	group = protowire.AppendTag(group, 99, protowire.EndGroupType)
	long, err := proto.Marshal(&tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{Name: string(make([]byte, 500))}}}}}}})
	require.NoError(t, err)
	n, err = CountSpans(append(append(group, b...), long...))
	require.NoError(t, err)
	require.Equal(t, want+1, n)

	_, err = CountSpans(b[:len(b)-3])
	require.ErrorIs(t, err, ErrMalformed)
	n, err = CountSpans(nil)
	require.NoError(t, err)
	require.Zero(t, n)
}
