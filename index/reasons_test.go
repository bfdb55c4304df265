package index

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
)

func TestAddReasons(t *testing.T) {
	st := openStore(t, t.TempDir())
	ctx := context.Background()
	w := newWorkload(3)
	kept := w.kept(2)
	require.NoError(t, st.WriteTraces(ctx, kept))
	id := kept[0].Trace.ID

	found, err := st.AddReasons(ctx, id, []string{"alert"})
	require.NoError(t, err)
	require.True(t, found)
	got, ok, err := st.Trace(ctx, id)
	require.NoError(t, err)
	require.True(t, ok)
	require.Contains(t, got.Reasons, "alert")
	for _, r := range kept[0].Reasons {
		require.Contains(t, got.Reasons, r, "earlier reasons stay")
	}
	res, err := st.Search(ctx, &readerpb.SearchRequest{KeptReasons: []string{"alert"}, Limit: 10})
	require.NoError(t, err)
	require.Len(t, res, 1)

	// Idempotent, and an unknown trace is reported, not created.
	found, err = st.AddReasons(ctx, id, []string{"alert"})
	require.NoError(t, err)
	require.True(t, found)
	unknown := id
	unknown[0] ^= 0xff
	found, err = st.AddReasons(ctx, unknown, []string{"alert"})
	require.NoError(t, err)
	require.False(t, found)
	_, ok, err = st.Trace(ctx, unknown)
	require.NoError(t, err)
	require.False(t, ok)
}
