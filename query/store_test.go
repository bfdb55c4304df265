package query

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/threadline/threadline/index"
	"github.com/threadline/threadline/span"
)

// openShardStore writes one indexer's share of the fixtures into a real
// Badger index.Store in t.TempDir().
func openShardStore(t testing.TB, sh shard) *index.Store {
	t.Helper()
	st, err := index.Open(t.TempDir(), slog.New(slog.DiscardHandler), nil, index.DefaultOptions())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	byTrace := map[span.TraceID]*index.KeptTrace{}
	var order []span.TraceID
	for _, s := range sh.spans {
		id, err := span.TraceIDFromBytes(s.GetTraceId())
		require.NoError(t, err)
		kt, ok := byTrace[id]
		if !ok {
			kt = &index.KeptTrace{Trace: span.Trace{ID: id}, Reasons: sh.reasons[id]}
			byTrace[id] = kt
			order = append(order, id)
		}
		kt.Trace.Spans = append(kt.Trace.Spans, s)
	}
	var kept []index.KeptTrace
	for _, id := range order {
		kept = append(kept, *byTrace[id])
	}
	require.NoError(t, st.WriteTraces(context.Background(), kept))
	return st
}
