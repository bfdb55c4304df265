package bus

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// createTopic creates topic on the broker at addr with the given topic
// configs, as StartEmbedded does for the bus's topics.
func createTopic(tb testing.TB, addr, topic string, partitions int, configs map[string]string) {
	tb.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	require.NoError(tb, err)
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	req.TimeoutMillis = 10000
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = topic, int32(partitions), 1
	for k, v := range configs {
		c := kmsg.NewCreateTopicsRequestTopicConfig()
		c.Name, c.Value = k, kmsg.StringPtr(v)
		rt.Configs = append(rt.Configs, c)
	}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(context.Background(), cl)
	require.NoError(tb, err)
	require.Len(tb, resp.Topics, 1)
	require.NoError(tb, kerr.ErrorForCode(resp.Topics[0].ErrorCode))
}

// fetchStats counts the fetch responses a client reads and the largest.
type fetchStats struct {
	mu        sync.Mutex
	responses int
	largest   int
}

func (s *fetchStats) OnBrokerRead(_ kgo.BrokerMetadata, key int16, n int, _, _ time.Duration, err error) {
	if key != int16(kmsg.Fetch) || err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.responses++
	s.largest = max(s.largest, n)
}

// produceVaried produces n records of 0 to 40 KiB to topic's partitions
// 0..partitions-1 in rounds of 1 to 40 records, so the log holds batches of
// one to dozens of records (at most 48 KiB), some larger than a 32 KiB
// segment. It returns each partition's records in the order produced and
// the bytes of their values.
func produceVaried(t *testing.T, addr, topic string, partitions, n int) (map[int32][]*kgo.Record, int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.ProducerBatchMaxBytes(48<<10),
		kgo.ProducerLinger(0))
	require.NoError(t, err)
	defer cl.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[int32][]*kgo.Record{}
	total := 0
	for i := 0; i < n; {
		round := make([]*kgo.Record, 0, 40)
		for range 1 + rng.IntN(40) {
			if i == n {
				break
			}
			var size int
			switch r := rng.IntN(100); {
			case r < 5:
				size = 0
			case r < 70:
				size = rng.IntN(512)
			case r < 95:
				size = 512 + rng.IntN(4096)
			default:
				size = 8<<10 + rng.IntN(32<<10) // up to 40 KiB: larger than a segment
			}
			val := make([]byte, size)
			for j := range val {
				val[j] = byte(rng.Uint32()) // incompressible, every byte distinct in kind
			}
			r := &kgo.Record{Topic: topic, Partition: rng.Int32N(int32(partitions)), Key: []byte("k" + strconv.Itoa(i)), Value: val}
			if i%7 == 0 {
				r.Headers = []kgo.RecordHeader{{Key: "h", Value: []byte(strconv.Itoa(i))}}
			}
			round = append(round, r)
			total += size
			i++
		}
		require.NoError(t, cl.ProduceSync(context.Background(), round...).FirstErr())
		for _, r := range round {
			want[r.Partition] = append(want[r.Partition], r)
		}
	}
	return want, total
}

// consumeAll reads topic from offset 0 with a fresh consumer until every
// wanted record is back, and checks each partition returns its records
// exactly once, in order, at offsets 0, 1, 2..., with key, value and headers
// byte-identical. It returns the fetch responses read.
func consumeAll(t *testing.T, addr, topic string, want map[int32][]*kgo.Record, opts ...kgo.Opt) *fetchStats {
	t.Helper()
	stats := &fetchStats{}
	offsets := map[int32]kgo.Offset{}
	total := 0
	for p, recs := range want {
		offsets[p] = kgo.NewOffset().At(0)
		total += len(recs)
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(addr),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}),
		kgo.ConsumeResetOffset(kgo.NoResetOffset()),
		kgo.WithHooks(stats),
	}, opts...)...)
	require.NoError(t, err)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	next := map[int32]int{}
	got := 0
	for got < total {
		f := cl.PollFetches(ctx)
		require.NoError(t, ctx.Err(), "read %d of %d records", got, total)
		for _, fe := range f.Errors() {
			require.NoError(t, fe.Err, "fetch of %s/%d", fe.Topic, fe.Partition)
		}
		f.EachRecord(func(r *kgo.Record) {
			i := next[r.Partition]
			require.Less(t, i, len(want[r.Partition]), "partition %d: more records than produced", r.Partition)
			w := want[r.Partition][i]
			require.Equal(t, int64(i), r.Offset, "partition %d: record out of order or repeated", r.Partition)
			require.Equal(t, w.Key, r.Key, "partition %d offset %d", r.Partition, r.Offset)
			require.Equal(t, w.Value, r.Value, "partition %d offset %d", r.Partition, r.Offset)
			require.Equal(t, len(w.Headers), len(r.Headers), "partition %d offset %d", r.Partition, r.Offset)
			for j := range w.Headers {
				require.Equal(t, w.Headers[j].Key, r.Headers[j].Key)
				require.Equal(t, w.Headers[j].Value, r.Headers[j].Value)
			}
			next[r.Partition]++
			got++
		})
	}
	// Nothing more arrives: no record came twice.
	extra, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	require.Empty(t, cl.PollFetches(extra).Records())
	return stats
}

// checkFetches consumes topic three ways and checks what comes back: with
// the bus consumer's fetch limits; with limits smaller than many batches,
// the request's smaller than the two partitions' together, so fetches stop
// at either limit and some return only the one batch a fetch always gets;
// and read_committed.
func checkFetches(t *testing.T, addr, topic string, want map[int32][]*kgo.Record, total int) {
	t.Helper()
	consumeAll(t, addr, topic, want, kgo.FetchMaxBytes(1<<20), kgo.FetchMaxPartitionBytes(512<<10))

	const maxBytes = 24 << 10
	small := consumeAll(t, addr, topic, want, kgo.FetchMaxBytes(maxBytes), kgo.FetchMaxPartitionBytes(16<<10))
	require.GreaterOrEqual(t, small.responses, total/maxBytes, "records come back in many fetches")
	// A response's batches stay within the request's limit unless its
	// first batch alone is larger (at most 48 KiB here); the rest of the
	// response is a few hundred bytes.
	require.LessOrEqual(t, small.largest, 49<<10, "largest fetch response")

	consumeAll(t, addr, topic, want, kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.FetchMaxBytes(200<<10))
}

// segmentFiles counts the segment files of topic's partitions under a
// kfake data dir.
func segmentFiles(t *testing.T, dir, topic string) int {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "partitions", topic+"-*", "*.dat"))
	require.NoError(t, err)
	return len(files)
}

// TestEmbeddedFetchReturnsLogIntact: records of varied sizes, in batches
// spread over many small segments, come back from the embedded broker
// exactly once, in order and byte-identical, whatever the fetch limits;
// again after a restart, read from the persisted segments; and from a
// broker without a data dir (kfake's in-memory files). The patched
// kfake (third_party/kfake, PATCH.md) reads fetched batches straight into
// the response; a batch placed at a wrong offset fails here.
func TestEmbeddedFetchReturnsLogIntact(t *testing.T) {
	const topic, partitions, records = "fetch_check", 2, 1500
	segments := map[string]string{"segment.bytes": strconv.Itoa(32 << 10)}

	dir := t.TempDir()
	e := startBroker(t, dir)
	t.Cleanup(e.Close) // Close is idempotent
	createTopic(t, e.Addr(), topic, partitions, segments)
	want, total := produceVaried(t, e.Addr(), topic, partitions, records)
	require.Greater(t, segmentFiles(t, dir, topic), 40, "the log spans dozens of segments")
	checkFetches(t, e.Addr(), topic, want, total)
	e.Close()

	e = startBroker(t, dir)
	t.Cleanup(e.Close)
	checkFetches(t, e.Addr(), topic, want, total)

	t.Run("in-memory", func(t *testing.T) {
		c, err := kfake.NewCluster(kfake.NumBrokers(1))
		require.NoError(t, err)
		defer c.Close()
		addr := c.ListenAddrs()[0]
		createTopic(t, addr, topic, partitions, segments)
		want, total := produceVaried(t, addr, topic, partitions, 400)
		checkFetches(t, addr, topic, want, total)
	})
}

// BenchmarkEmbeddedFetch consumes 32 MiB from the embedded broker (data
// dir, two partitions) with the bus consumer's fetch limits: 1 KiB records
// produced 16 at a time, so a partition's fetch returns dozens of batches.
// B/op and allocs/op count the client's
// work too, which does not depend on how the broker builds a response.
func BenchmarkEmbeddedFetch(b *testing.B) {
	const topic, partitions, size, n, round = "fetch_bench", 2, 1 << 10, 32 << 10, 16
	cfg := DefaultEmbeddedConfig()
	cfg.Addr, cfg.DataDir, cfg.Partitions = "127.0.0.1:0", b.TempDir(), partitions
	e, err := StartEmbedded(context.Background(), cfg, []string{topic}, discard())
	require.NoError(b, err)
	defer e.Close()
	prod, err := kgo.NewClient(kgo.SeedBrokers(e.Addr()), kgo.DefaultProduceTopic(topic),
		kgo.ProducerBatchCompression(kgo.NoCompression()))
	require.NoError(b, err)
	val := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range val {
		val[i] = byte(rng.Uint32())
	}
	recs := make([]*kgo.Record, 0, round)
	for i := range n {
		recs = append(recs, &kgo.Record{Key: []byte(strconv.Itoa(i)), Value: val})
		if len(recs) == cap(recs) {
			require.NoError(b, prod.ProduceSync(context.Background(), recs...).FirstErr())
			recs = recs[:0]
		}
	}
	prod.Close()

	b.SetBytes(n * size)
	b.ReportAllocs()
	for b.Loop() {
		cl, err := kgo.NewClient(kgo.SeedBrokers(e.Addr()),
			kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.FetchMaxBytes(1<<20), kgo.FetchMaxPartitionBytes(512<<10))
		require.NoError(b, err)
		for got := 0; got < n; {
			f := cl.PollFetches(context.Background())
			if err := f.Err0(); err != nil {
				b.Fatal(err)
			}
			got += f.NumRecords()
		}
		cl.Close()
	}
}
