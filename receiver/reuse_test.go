package receiver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/threadline/threadline/span"
)

// releasingPublisher promises, like the Kafka producer, to hold no batch
// after a nil return: it copies what it is given. With fail set it returns
// an error and keeps the batches themselves (as a producer that gave up
// waiting still holds its records), so reusing them would corrupt them.
type releasingPublisher struct {
	mu     sync.Mutex
	copies []span.TraceBatch
	kept   [][]span.TraceBatch
	fail   bool
}

func (p *releasingPublisher) ReleasesData() bool { return true }

func (p *releasingPublisher) PublishTraces(_ context.Context, batches []span.TraceBatch) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail {
		p.kept = append(p.kept, batches)
		return errors.New("kafka down")
	}
	for _, b := range batches {
		p.copies = append(p.copies, span.TraceBatch{ID: b.ID, Spans: b.Spans, Data: bytes.Clone(b.Data)})
	}
	return nil
}

func startWith(t *testing.T, pub TracePublisher) (*Receiver, string) {
	t.Helper()
	cfg := testConfig()
	cfg.HTTPAddr = ""
	r, err := New(cfg, pub, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	require.NoError(t, err)
	runUntilCleanup(t, r)
	g, _ := r.Addrs()
	return r, g.String()
}

// TestSplitBuffersReused sends requests of different sizes concurrently to
// a receiver whose publisher releases its batches: the receiver recycles
// the split buffers, and every published batch must still be exactly what
// a fresh split of its request gives.
func TestSplitBuffersReused(t *testing.T) {
	pub := &releasingPublisher{}
	r, addr := startWith(t, pub)
	require.True(t, r.reuseData)
	conn := dialGRPC(t, addr)

	reqs := [][]byte{marshal(t, buildRequest(40, 5)), marshal(t, buildRequest(3, 2)), marshal(t, buildRequest(100, 1))}
	wantData := map[string]bool{} // every batch any of the requests splits into
	wantSpans := 0
	for _, req := range reqs {
		res, err := span.SplitTraces(req)
		require.NoError(t, err)
		for _, b := range res.Batches {
			wantData[string(b.Data)] = true
		}
		wantSpans += res.Spans
	}
	const rounds = 8
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Go(func() {
			for i := range rounds {
				_, err := exportRaw(context.Background(), conn, reqs[(g+i)%len(reqs)])
				require.NoError(t, err)
			}
		})
	}
	wg.Wait()

	pub.mu.Lock()
	defer pub.mu.Unlock()
	spans := 0
	for _, b := range pub.copies {
		require.True(t, wantData[string(b.Data)], "batch of %s is not what a fresh split gives", b.ID)
		spans += b.Spans
	}
	require.Equal(t, wantSpans*rounds, spans)
}

// TestFailedPublishKeepsBuffers: after a failed publish the receiver must
// not hand the batches' buffer to the next request.
func TestFailedPublishKeepsBuffers(t *testing.T) {
	pub := &releasingPublisher{fail: true}
	_, addr := startWith(t, pub)
	conn := dialGRPC(t, addr)
	first := marshal(t, buildRequest(20, 3))
	_, err := exportRaw(context.Background(), conn, first)
	require.Error(t, err)
	pub.mu.Lock()
	require.Len(t, pub.kept, 1)
	snapshot := make([][]byte, len(pub.kept[0]))
	for i, b := range pub.kept[0] {
		snapshot[i] = bytes.Clone(b.Data)
	}
	pub.mu.Unlock()

	for range 5 {
		_, err := exportRaw(context.Background(), conn, marshal(t, buildRequest(30, 2)))
		require.Error(t, err)
	}
	pub.mu.Lock()
	defer pub.mu.Unlock()
	for i, b := range pub.kept[0] {
		require.Equal(t, snapshot[i], b.Data, "batch %d of the failed request was overwritten", i)
	}
}

// TestRetainingPublisherGetsFreshBuffers: a publisher that does not promise
// to release (recordingPublisher keeps copies, but another could keep the
// slices) disables reuse.
func TestRetainingPublisherGetsFreshBuffers(t *testing.T) {
	r, _ := startWith(t, &recordingPublisher{})
	require.False(t, r.reuseData)
}
