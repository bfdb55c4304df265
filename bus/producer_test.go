package bus

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/threadline/threadline/span"
)

// TestPublishTracesPooledState publishes from several goroutines at once, so
// pooled record slices and key slabs are reused across requests of
// different sizes, and checks every record on the broker: key the hex trace
// ID, value that trace's data, each exactly once.
func TestPublishTracesPooledState(t *testing.T) {
	e := startBroker(t, t.TempDir())
	t.Cleanup(e.Close)
	p := startProducer(t, e)
	require.True(t, p.ReleasesData())

	want := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for req := range 6 {
				n := 1 + (g*7+req*5)%40 // sizes vary so slices grow and shrink
				batches := make([]span.TraceBatch, n)
				for i := range batches {
					id := span.TraceID{byte(g), byte(req), byte(i), 0xaa}
					batches[i] = span.TraceBatch{ID: id, Spans: 1, Data: fmt.Appendf(nil, "g%d-r%d-t%d", g, req, i)}
				}
				require.NoError(t, p.PublishTraces(context.Background(), batches))
				mu.Lock()
				for _, b := range batches {
					want[b.ID.String()] = string(b.Data)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()

	cl, err := kgo.NewClient(kgo.SeedBrokers(e.Addr()), kgo.ConsumeTopics(DefaultConfig().TracesTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	require.NoError(t, err)
	defer cl.Close()
	got := map[string]string{}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for len(got) < len(want) && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			_, dup := got[string(r.Key)]
			require.False(t, dup, "record for %s delivered twice", r.Key)
			got[string(r.Key)] = string(r.Value)
		})
	}
	require.Equal(t, want, got)
}
