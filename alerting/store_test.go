package alerting

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

func TestStoreRoundTripAndOrder(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	st, err := OpenStore(dir, nil, reg, DefaultStoreOptions())
	require.NoError(t, err)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	ctx := context.Background()
	// Written out of order; read back by time.
	for _, i := range []int{3, 1, 2, 0} {
		v := float64(i)
		require.NoError(t, st.Put(ctx, Event{ID: eventID("t", fmt.Sprint(i)), Name: fmt.Sprint("A", i), State: StateFiring,
			Time: base.Add(time.Duration(i) * time.Minute), Value: &v, Labels: map[string]string{"service": "s"},
			TraceIDs: []string{tid(byte(i)).String()}, Source: SourceRule}))
	}
	evs, err := st.Events(ctx, base.Add(time.Minute), base.Add(3*time.Minute))
	require.NoError(t, err)
	require.Len(t, evs, 2, "start inclusive, end exclusive")
	require.Equal(t, "A1", evs[0].Name)
	require.Equal(t, "A2", evs[1].Name)
	require.InDelta(t, 2, *evs[1].Value, 0)

	// Rewriting an event with a new time moves it.
	moved := evs[0]
	moved.Time = base.Add(10 * time.Minute)
	require.NoError(t, st.Put(ctx, moved))
	evs, err = st.Events(ctx, base, base.Add(time.Hour))
	require.NoError(t, err)
	require.Len(t, evs, 4)
	require.Equal(t, "A1", evs[3].Name)

	require.NoError(t, st.Close())
	st, err = OpenStore(dir, nil, nil, DefaultStoreOptions())
	require.NoError(t, err)
	defer func() { require.NoError(t, st.Close()) }()
	ev, found, err := st.Event(ctx, moved.ID)
	require.NoError(t, err)
	require.True(t, found, "survives a reopen")
	require.True(t, ev.Time.Equal(moved.Time))

	_, found, err = st.Event(ctx, eventID("nope"))
	require.NoError(t, err)
	require.False(t, found)
	_, _, err = st.Event(ctx, "zz")
	require.ErrorIs(t, err, ErrBadID)
	require.ErrorIs(t, st.Put(ctx, Event{ID: "short", Time: time.Now()}), ErrBadID)
}

func TestStoreRetention(t *testing.T) {
	st, err := OpenStore(t.TempDir(), nil, nil, StoreOptions{Retention: time.Hour})
	require.NoError(t, err)
	defer func() { require.NoError(t, st.Close()) }()
	ctx := context.Background()
	now := time.Now()
	old := Event{ID: eventID("old"), Name: "Old", State: StateFiring, Time: now.Add(-2 * time.Hour), Source: SourceRule}
	// Expires about one second from now (Badger's TTL has 1 s resolution).
	soon := Event{ID: eventID("soon"), Name: "Soon", State: StateFiring, Time: now.Add(-time.Hour + 1500*time.Millisecond), Source: SourceRule}
	fresh := Event{ID: eventID("fresh"), Name: "Fresh", State: StateFiring, Time: now, Source: SourceRule}
	for _, ev := range []Event{old, soon, fresh} {
		require.NoError(t, st.Put(ctx, ev))
	}
	names := func() []string {
		evs, err := st.Events(ctx, now.Add(-3*time.Hour), now.Add(time.Hour))
		require.NoError(t, err)
		var out []string
		for _, ev := range evs {
			out = append(out, ev.Name)
		}
		return out
	}
	require.Equal(t, []string{"Soon", "Fresh"}, names(), "an event older than the retention is not written")
	require.Eventually(t, func() bool { return len(names()) == 1 }, 5*time.Second, 100*time.Millisecond)
	require.Equal(t, []string{"Fresh"}, names())
	_, found, err := st.Event(ctx, soon.ID)
	require.NoError(t, err)
	require.False(t, found, "the ID index expires with the event")

	_, err = OpenStore(t.TempDir(), nil, nil, StoreOptions{})
	require.ErrorContains(t, err, "retention must be positive")
}
