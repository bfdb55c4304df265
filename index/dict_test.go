package index

import (
	"context"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"github.com/klauspost/compress/s2"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

// chunkKinds counts the stored chunk values by their first byte.
func chunkKinds(t *testing.T, st *Store) map[byte]int {
	t.Helper()
	kinds := map[byte]int{}
	require.NoError(t, st.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixChunk}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			require.NoError(t, it.Item().Value(func(v []byte) error {
				kinds[v[0]]++
				return nil
			}))
		}
		return nil
	}))
	return kinds
}

// TestChunkDictionary: the store trains a dictionary from its first chunks,
// compresses later chunks against it, keeps it across a reopen, and every
// trace, written before or after, reads back as written.
func TestChunkDictionary(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := openStore(t, dir)
	w := newWorkload(3)
	var written []KeptTrace
	for len(written) < 400 {
		batch := w.kept(20)
		require.NoError(t, st.WriteTraces(ctx, batch))
		written = append(written, batch...)
	}
	kinds := chunkKinds(t, st)
	require.Positive(t, kinds[chunkSnappy], "chunks before the dictionary are Snappy chunks")
	require.Positive(t, kinds[chunkDictS2], "chunks after it use the dictionary")
	require.Equal(t, 1, countKeys(t, st, []byte{prefixDict}), "one dictionary per store")

	requireStored := func(st *Store) {
		t.Helper()
		for _, kt := range written {
			got, found, err := st.Trace(ctx, kt.Trace.ID)
			require.NoError(t, err)
			require.True(t, found)
			require.Len(t, got.Spans, len(kt.Trace.Spans))
			want := map[span.SpanID]*span.Span{}
			for i := range kt.Trace.Spans {
				want[span.SpanID(kt.Trace.Spans[i].SpanId)] = &kt.Trace.Spans[i]
			}
			for _, s := range got.Spans {
				w := want[span.SpanID(s.SpanId)]
				require.NotNil(t, w)
				require.True(t, proto.Equal(w.Span, s.Span))
			}
		}
	}
	requireStored(st)

	// Reopened, the store reads both kinds and keeps its one dictionary.
	require.NoError(t, st.Close())
	st = openStore(t, dir)
	requireStored(st)
	more := w.kept(20)
	require.NoError(t, st.WriteTraces(ctx, more))
	written = append(written, more...)
	requireStored(st)
	require.Equal(t, 1, countKeys(t, st, []byte{prefixDict}))
	require.Greater(t, chunkKinds(t, st)[chunkDictS2], kinds[chunkDictS2])
}

// TestChunkDictionaryCodec: a dictionary chunk round-trips, compresses
// better than Snappy alone, and one naming an unknown dictionary is
// corrupt, not a panic.
func TestChunkDictionaryCodec(t *testing.T) {
	w := newWorkload(5)
	dicts := &chunkDicts{byID: map[uint32]*s2.Dict{}}
	for train := false; !train; {
		_, train = dicts.compress(chunkOf(t, w.kept(1)[0]))
	}
	var stored []byte
	require.NoError(t, dicts.trainAndStore(func(id uint32, dict []byte) error {
		require.Equal(t, uint32(1), id)
		stored = dict
		return nil
	}))
	require.NotEmpty(t, stored)
	_, train := dicts.compress(chunkOf(t, w.kept(1)[0]))
	require.False(t, train, "no more samples once trained")

	var plainB, snappyB, dictB int
	for _, kt := range w.kept(50) {
		plain := chunkOf(t, kt)
		packed, _ := dicts.compress(plain)
		require.Equal(t, chunkDictS2, packed[0])
		plainB, snappyB, dictB = plainB+len(plain), snappyB+len(compressChunk(plain)), dictB+len(packed)
		requireChunkMatches(t, kt, packed, dicts)
		// A dictionary loaded from its stored bytes decodes it too.
		reloaded := &chunkDicts{byID: map[uint32]*s2.Dict{1: s2.NewDict(stored)}}
		requireChunkMatches(t, kt, packed, reloaded)
		// Without the dictionary the chunk is corrupt, and says so.
		err := walkChunk(packed, nil, func(chunkEntry) error { return nil })
		require.ErrorIs(t, err, ErrCorrupt)
	}
	require.Less(t, dictB, snappyB, "the dictionary beats Snappy alone")
	t.Logf("plain %d B, snappy %d B, dictionary %d B", plainB, snappyB, dictB)
}
