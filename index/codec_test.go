package index

import (
	"cmp"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/threadline/threadline/span"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
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
	f.Fuzz(func(t *testing.T, b []byte) {
		err := walkChunk(b, func(e chunkEntry) error {
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

func TestChunkRoundTrip(t *testing.T) {
	for _, kt := range fixture() {
		var got []*tracepb.Span
		var hashes []uint64
		require.NoError(t, walkChunk(chunkOf(t, kt), func(e chunkEntry) error {
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
