package index

import (
	"context"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"github.com/stretchr/testify/require"
)

// summaryValues returns the 0x01 values of the store by trace key.
func summaryValues(t *testing.T, st *Store) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	require.NoError(t, st.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixTrace}, PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			out[string(it.Item().KeyCopy(nil))] = v
		}
		return nil
	}))
	return out
}

// TestSummaryBlocks: a batch's summaries go into blocks of about
// sumBlockTarget plain bytes and every trace key holds a reference; every
// trace and its counts read back, also after a reopen; a replay of the batch
// rewrites the same blocks and references.
func TestSummaryBlocks(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := openStore(t, dir)
	batch := newWorkload(21).kept(400)
	require.NoError(t, st.WriteTraces(ctx, batch))

	refs := summaryValues(t, st)
	require.Len(t, refs, len(batch))
	for k, v := range refs {
		require.Equal(t, summaryRef, v[0], "summary of %x is not a reference", k)
		require.Less(t, len(v), 16, "a reference is a block ID and an entry")
	}
	blocks := countKeys(t, st, []byte{prefixSumBlock})
	require.GreaterOrEqual(t, blocks, 2, "400 summaries of about 170 bytes fill more than one block")
	requireTraces(t, st, batch)
	sums := searchAll(t, st)
	require.NotEmpty(t, sums)
	for _, s := range sums {
		require.EqualValues(t, 5, s.SpanCount)
	}

	require.NoError(t, st.Close())
	st = openStore(t, dir)
	requireTraces(t, st, batch)

	require.NoError(t, st.WriteTraces(ctx, batch))
	require.Equal(t, blocks, countKeys(t, st, []byte{prefixSumBlock}), "a replay rewrites the same blocks")
	require.Equal(t, refs, summaryValues(t, st), "and the same references")
	for _, s := range searchAll(t, st) {
		require.EqualValues(t, 5, s.SpanCount, "a replay counts no span twice")
	}
}

// TestSummaryBlockSameTraceTwice: a batch holding two parts of one trace
// (overlapping by a span) merges the second into the first's summary, which
// is not on disk yet: the trace reads back whole, every span counted once.
func TestSummaryBlockSameTraceTwice(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	w := newWorkload(22)
	kt := w.kept(1)[0]
	first, second := kt, kt
	first.Trace.Spans, second.Trace.Spans = kt.Trace.Spans[:3], kt.Trace.Spans[2:]
	second.Reasons = []string{"error"}
	other := w.kept(1)[0]
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{first, other, second}))
	requireTraces(t, st, []KeptTrace{kt, other})
	got, found, err := st.Trace(ctx, kt.Trace.ID)
	require.NoError(t, err)
	require.True(t, found)
	require.ElementsMatch(t, []string{"latency_topn", "error"}, got.Reasons, "both parts' reasons")
	for _, s := range searchAll(t, st) {
		require.EqualValues(t, 5, s.SpanCount)
	}
}

// TestInlineSummary: a summary stored inline (as earlier versions and
// AddReasons write it) reads back, and a later write of the trace merges
// it and places the merged summary in a block.
func TestInlineSummary(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	kt := newWorkload(23).kept(1)[0]
	first, late := kt, kt
	first.Trace.Spans, late.Trace.Spans = kt.Trace.Spans[:3], kt.Trace.Spans[3:]
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{first}))
	key := traceKey(kt.Trace.ID, subSummary)
	require.NoError(t, st.db.Update(func(txn *badger.Txn) error {
		sum, found, err := st.chunkReader(txn).summary(key)
		require.NoError(t, err)
		require.True(t, found)
		return txn.Set(key, sum.appendTo(nil))
	}))
	require.Equal(t, valueVersion, summaryValues(t, st)[string(key)][0])
	requireTraces(t, st, []KeptTrace{first})

	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{late}))
	require.Equal(t, summaryRef, summaryValues(t, st)[string(key)][0])
	requireTraces(t, st, []KeptTrace{kt})
	sums := searchAll(t, st)
	require.Len(t, sums, 1)
	require.EqualValues(t, 5, sums[0].SpanCount)
}

// TestSummaryReferenceDamage: a reference that does not parse, or names an
// entry its block does not have, is ErrCorrupt; other traces still read.
func TestSummaryReferenceDamage(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		ref  func(valid []byte) []byte
	}{
		{"short", func(v []byte) []byte { return v[:5] }},
		{"trailing bytes", func(v []byte) []byte { return append(v, 0) }},
		{"entry past the block", func(v []byte) []byte { return appendSummaryRef(nil, beUint64(v[1:]), 9999) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openStore(t, t.TempDir())
			batch := newWorkload(24).kept(3)
			require.NoError(t, st.WriteTraces(ctx, batch))
			key := traceKey(batch[0].Trace.ID, subSummary)
			require.NoError(t, st.db.Update(func(txn *badger.Txn) error {
				return txn.Set(key, tc.ref(summaryValues(t, st)[string(key)]))
			}))
			_, _, err := st.Trace(ctx, batch[0].Trace.ID)
			require.ErrorIs(t, err, ErrCorrupt)
			requireTraces(t, st, batch[1:])
		})
	}
}
