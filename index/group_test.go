package index

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

// groupBytes sums the stored size of every chunk group.
func groupBytes(t *testing.T, st *Store) int {
	t.Helper()
	n := 0
	require.NoError(t, st.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixGroup}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n += int(it.Item().ValueSize())
		}
		return nil
	}))
	return n
}

// groupPlainSizes decompresses every chunk group and returns their plain
// sizes.
func groupPlainSizes(t *testing.T, st *Store) []int {
	t.Helper()
	var sizes []int
	require.NoError(t, st.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixGroup}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			require.Equal(t, valueVersion, v[0])
			plain, err := st.groups.dec.DecodeAll(v[1:], nil)
			if err != nil {
				return err
			}
			sizes = append(sizes, len(plain))
		}
		return nil
	}))
	return sizes
}

// requireTraces checks every trace reads back exactly as written.
func requireTraces(t *testing.T, st *Store, written []KeptTrace) {
	t.Helper()
	for _, kt := range written {
		got, found, err := st.Trace(context.Background(), kt.Trace.ID)
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

// TestChunkGroups: a batch's chunks go into groups of at most groupMax
// plain bytes, compressed together smaller than the chunks compressed one
// by one, and placed by the trace summaries; every trace reads back, also
// after a reopen; a replay of the same batch rewrites the same groups, and
// one grouped differently keeps counts exact.
func TestChunkGroups(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := openStore(t, dir)
	w := newWorkload(11)
	batch := w.kept(600)
	require.NoError(t, st.WriteTraces(ctx, batch))

	plain, alone := 0, 0
	for _, kt := range batch {
		c := chunkOf(t, kt)
		plain += len(c)
		alone += len(snappyChunk(c))
	}
	groups := countKeys(t, st, []byte{prefixGroup})
	require.GreaterOrEqual(t, groups, plain/groupMax+1)
	require.LessOrEqual(t, groups, plain/(groupMax-maxChunkBytes)+1)
	for _, n := range groupPlainSizes(t, st) {
		require.LessOrEqual(t, n, groupMax, "a group is one zstd block at most")
	}
	require.Zero(t, countKeys(t, st, []byte{prefixChunk}), "summaries place the chunks; no chunk keys")
	for _, kt := range batch[:10] {
		require.Equal(t, 1, chunkCount(t, st, kt.Trace.ID))
	}
	packed := groupBytes(t, st)
	require.Less(t, packed*10, alone*8, "groups compress at least 20%% better than chunks alone")
	t.Logf("%d traces: plain %d B, chunks alone (Snappy) %d B, %d groups %d B", len(batch), plain, alone, groups, packed)
	requireTraces(t, st, batch)

	before := searchAll(t, st)
	require.NoError(t, st.WriteTraces(ctx, batch))
	require.Equal(t, groups, countKeys(t, st, []byte{prefixGroup}), "a replay rewrites the same groups")
	// Grouped differently: every trace on its own, in reverse.
	for i := len(batch) - 1; i >= len(batch)-50; i-- {
		require.NoError(t, st.WriteTraces(ctx, batch[i:i+1]))
	}
	after := searchAll(t, st)
	require.Len(t, after, len(before))
	for i := range before {
		require.True(t, proto.Equal(before[i], after[i]), "summary changed:\nbefore %v\nafter  %v", before[i], after[i])
	}
	requireTraces(t, st, batch)

	require.NoError(t, st.Close())
	st = openStore(t, dir)
	requireTraces(t, st, batch)
}

// TestBlockDamage: a chunk group or summary block that is corrupt or
// missing makes its traces' reads fail with ErrCorrupt rather than panic or
// return wrong spans, and leaves traces in other blocks readable.
func TestBlockDamage(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		damage func(txn *badger.Txn, key []byte) error
	}{
		{"corrupt", func(txn *badger.Txn, key []byte) error { return txn.Set(key, []byte("\x01garbage")) }},
		{"bad header", func(txn *badger.Txn, key []byte) error { return txn.Set(key, []byte("\x09")) }},
		{"truncated", func(txn *badger.Txn, key []byte) error {
			item, err := txn.Get(key)
			if err != nil {
				return err
			}
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			return txn.Set(key, v[:len(v)/2])
		}},
		{"missing", func(txn *badger.Txn, key []byte) error { return txn.Delete(key) }},
	} {
		for _, prefix := range []byte{prefixGroup, prefixSumBlock} {
			t.Run(fmt.Sprintf("%s/%#x", tc.name, prefix), func(t *testing.T) {
				st := openStore(t, t.TempDir())
				w := newWorkload(12)
				first, second := w.kept(5), w.kept(5)
				require.NoError(t, st.WriteTraces(ctx, first))
				key := firstKey(t, st, []byte{prefix})
				require.NoError(t, st.WriteTraces(ctx, second))
				require.NoError(t, st.db.Update(func(txn *badger.Txn) error { return tc.damage(txn, key) }))
				_, _, err := st.Trace(ctx, first[0].Trace.ID)
				require.ErrorIs(t, err, ErrCorrupt)
				requireTraces(t, st, second)
			})
		}
	}
}

// TestTraceWithEarlierChunkKeys: a trace an earlier version wrote (chunk
// keys, a summary without chunk references) reads back, takes late spans
// (placed by its summary) and counts them once, and reads back whole.
func TestTraceWithEarlierChunkKeys(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	kt := newWorkload(14).kept(1)[0]
	first, late := kt, kt
	first.Trace.Spans, late.Trace.Spans = kt.Trace.Spans[:3], kt.Trace.Spans[2:]
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{first}))

	// Rewrite the trace as the previous version stored it: its one chunk
	// under a chunk key (Snappy form), a summary without references.
	require.NoError(t, st.db.Update(func(txn *badger.Txn) error {
		key := traceKey(kt.Trace.ID, subSummary)
		sum, found, err := st.chunkReader(txn).summary(key)
		require.NoError(t, err)
		require.True(t, found)
		require.Len(t, sum.Chunks, 1)
		chunks := st.chunkReader(txn)
		plain, err := chunks.ref(sum.Chunks[0])
		require.NoError(t, err)
		if err := txn.Set(appendU64(chunkPrefix(sum.Seq, kt.Trace.ID), sum.Chunks[0].id), snappyChunk(plain)); err != nil {
			return err
		}
		sum.Chunks, sum.ChunksOnly = nil, false
		return txn.Set(key, sum.appendTo(nil))
	}))
	requireTraces(t, st, []KeptTrace{first})

	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{late}))
	require.Equal(t, 2, chunkCount(t, st, kt.Trace.ID), "the old chunk key and the new reference")
	requireTraces(t, st, []KeptTrace{kt})
	sums := searchAll(t, st)
	require.Len(t, sums, 1)
	require.EqualValues(t, len(kt.Trace.Spans), sums[0].SpanCount, "the span both writes hold counts once")
}

// TestExpiredGroupsLeaveTheValueLog: chunk groups and summary blocks live
// in Badger's value log; once they expire, the compactions that later
// writes cause drop their keys (group keys are random, so new tables
// overlap old ones), and value-log GC then deletes the files that held
// them. The later writes add value-log files of their own, so the test
// follows the files the expired values were in.
func TestExpiredGroupsLeaveTheValueLog(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := openStore(t, dir, func(o *Options) {
		o.Retention = 2 * time.Second
		o.ValueLogFileSize = 1 << 20
		o.MemTableSize = 1 << 20 // keys reach tables, which compactions rewrite
		o.GCInterval = time.Hour // GC runs below
	})
	w := newWorkload(13)
	for range 40 { // about 4 MiB of groups
		require.NoError(t, st.WriteTraces(ctx, w.kept(500)))
	}
	require.Greater(t, dirSize(dir, ".vlog"), int64(3<<20), "groups went to the value log")
	expired, err := filepath.Glob(filepath.Join(dir, "*.vlog"))
	require.NoError(t, err)
	time.Sleep(st.groupTTL() + 500*time.Millisecond) // every group expired
	require.Eventually(t, func() bool {
		require.NoError(t, st.WriteTraces(ctx, w.kept(100)))
		for range 8 {
			if st.db.RunValueLogGC(0.5) != nil {
				break
			}
		}
		left := 0
		for _, f := range expired {
			if _, err := os.Stat(f); err == nil {
				left++
			}
		}
		return left <= len(expired)/2
	}, 30*time.Second, 10*time.Millisecond, "value-log files of expired groups are deleted")
}
