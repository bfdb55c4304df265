package indexer

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/loadgen"
	"github.com/threadline/threadline/sampling"
	"github.com/threadline/threadline/span"
)

// loadgenRecords returns n Kafka record values as the collector makes them
// from the load generator's requests (one per trace per request: five spans
// in up to three resources, ten attributes each).
func loadgenRecords(tb testing.TB, n int) [][]byte {
	var recs [][]byte
	for _, b := range loadgenBatches(tb, n) {
		recs = append(recs, b.Data)
	}
	return recs
}

// loadgenBatches is loadgenRecords with their trace IDs.
func loadgenBatches(tb testing.TB, n int) []span.TraceBatch {
	tb.Helper()
	cfg := loadgen.DefaultConfig()
	reqs, err := loadgen.Requests(cfg, 7, (n*cfg.SpansPerTrace+cfg.SpansPerRequest-1)/cfg.SpansPerRequest)
	require.NoError(tb, err)
	var batches []span.TraceBatch
	for _, req := range reqs {
		res, err := span.SplitTraces(req)
		require.NoError(tb, err)
		for _, b := range res.Batches {
			b.Data = bytes.Clone(b.Data)
			batches = append(batches, b)
		}
	}
	return batches[:n]
}

// unpacked is what a packed chunk unpacks to, through a lease as the
// indexer decodes it.
func unpacked(t *testing.T, c chunk) []byte {
	t.Helper()
	l, err := c.lease()
	require.NoError(t, err)
	defer l.Release()
	return slices.Clone(l.Bytes())
}

// TestPacker: a held record is compressed, independent of the record's
// buffer (which the Kafka client may reuse), and unpacks to the same bytes.
// Its resources and scopes are kept once per generation, and its spans,
// when dense, are compressed against a dictionary of earlier ones once 64
// KiB of them went by, which is what a record repeats from the records
// before it; when not, alone. A chunk unpacks with its own generation after
// newer ones were made.
func TestPacker(t *testing.T) {
	recs := loadgenRecords(t, 2000)
	p := packer{dense: true}
	now := time.Now()

	value := slices.Clone(recs[0])
	first, err := p.pack(value, now)
	require.NoError(t, err)
	require.True(t, first.packed)
	require.Equal(t, packedOutline, first.data[0])
	require.Nil(t, first.gen.dict, "no dictionary before 64 KiB of spans")
	require.Equal(t, 5, first.spans)
	require.Less(t, len(first.data), len(value)/2, "held records are compressed")
	require.Equal(t, len(first.data), cap(first.data), "no encoder slack is held")
	clear(value)
	require.Equal(t, recs[0], unpacked(t, first))

	chunks := []chunk{first}
	for _, r := range recs[1:] {
		c, err := p.pack(r, now)
		require.NoError(t, err)
		chunks = append(chunks, c)
	}
	gen := p.gen
	require.NotNil(t, gen.dict, "2000 records make a dictionary")
	var held, alone, whole, n int
	for i, c := range chunks {
		require.Equal(t, recs[i], unpacked(t, c), "record %d", i)
		if c.gen == gen {
			require.Equal(t, packedOutline|packedDict, c.data[0])
			n++
			held += len(c.data)
			alone += len(s2.Encode(nil, recs[i]))
			whole += len(gen.dict.Encode(nil, recs[i]))
		}
	}
	t.Logf("%d records (%d resources and scopes) packed to %d bytes, whole against the dictionary %d, S2 alone %d", n, gen.n, held, whole, alone)
	require.Less(t, gen.n, n/5, "resources and scopes are kept once each")
	require.Less(t, held, alone*45/100, "a dictionary of earlier spans compresses far better than the record alone")
	require.Less(t, held, whole*85/100, "heads kept once save what the dictionary could not")

	// Not dense: the same records' spans are compressed alone, in the same
	// generation, larger than dense and smaller than the record alone.
	p.dense = false
	var fast, dense, fastAlone int
	for i := len(recs) - 200; i < len(recs); i++ {
		c, err := p.pack(recs[i], now)
		require.NoError(t, err)
		require.Equal(t, packedOutline, c.data[0])
		require.Same(t, gen, c.gen)
		require.Equal(t, recs[i], unpacked(t, c), "record %d", i)
		fast += len(c.data)
		dense += len(chunks[i].data)
		fastAlone += len(s2.Encode(nil, recs[i]))
	}
	t.Logf("200 records packed to %d bytes, dense %d, S2 alone %d", fast, dense, fastAlone)
	require.Less(t, dense, fast*70/100, "the dictionary is worth its time when memory is at stake")
	require.Less(t, fast, fastAlone*80/100, "heads kept once")
	p.dense = true

	// A minute later the next 64 KiB make a new generation; the chunks
	// packed in the old ones still unpack.
	for i := 0; p.gen == gen; i++ {
		_, err := p.pack(recs[i%len(recs)], now.Add(packDictAge))
		require.NoError(t, err)
	}
	for i, c := range chunks {
		require.Equal(t, recs[i], unpacked(t, c), "record %d", i)
	}

	// A huge record packs like any other, and the packer keeps neither it
	// nor buffers its size.
	huge := slices.Concat(recs[:2000]...)
	c, err := p.pack(huge, now.Add(2*packDictAge))
	require.NoError(t, err)
	want, err := span.CountSpans(huge)
	require.NoError(t, err)
	require.Equal(t, want, c.spans)
	require.Equal(t, huge, unpacked(t, c))
	require.LessOrEqual(t, cap(p.scratch), maxPackScratch)
	require.LessOrEqual(t, cap(p.spans), maxPackScratch)
	require.LessOrEqual(t, cap(p.sample), 4*s2.MaxDictSize)

	// Every truncation of a chunk fails to unpack, without a panic.
	c = chunks[len(chunks)-1]
	for n := range len(c.data) {
		trunc := c
		trunc.data = c.data[:n]
		_, err := trunc.lease()
		require.Error(t, err, "truncated to %d of %d bytes", n, len(c.data))
	}
}

// TestIndexerPacksDenseWhenFull: the indexer packs the records it buffers
// fast while it holds up to half of MaxBufferedSpans, and dense (against
// the dictionary) past that.
func TestIndexerPacksDenseWhenFull(t *testing.T) {
	cfg := testConfig()
	cfg.MaxBufferedSpans = 1000
	dec, err := sampling.NewTailSampler(sampling.DefaultConfig(), prometheus.NewRegistry())
	require.NoError(t, err)
	ix, err := New(cfg, Parts{Store: discardWriter{}, Decider: dec}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	require.NoError(t, err)
	batches := loadgenBatches(t, 150) // 750 spans, not decided: the indexer does not run
	ledger := bus.NewLedger()
	for i, b := range batches {
		r := &kgo.Record{Topic: "otlp_spans", Key: []byte(b.ID.String()), Value: b.Data, Offset: int64(i)}
		ix.HandleRecords(context.Background(), []*kgo.Record{r}, []*bus.Ticket{ledger.Begin(r)})
	}
	buffered := 0
	for _, b := range batches {
		p := ix.traces[b.ID]
		require.NotNil(t, p)
		require.Len(t, p.chunks, 1)
		c := p.chunks[0]
		// The first chunk packed past half (the buffer counted before it) is
		// the first dense one.
		require.Equal(t, buffered > cfg.MaxBufferedSpans/2, c.data[0]&packedDict != 0, "with %d spans buffered", buffered)
		buffered += c.spans
		require.Equal(t, b.Data, unpacked(t, c))
	}
}

// TestPackerFallsBackToWhole: records an outline cannot reproduce byte for
// byte, or whose heads a generation cannot hold, are packed whole and
// unpack to the same bytes; a generation whose table is full gives way to
// a new one with the same dictionary.
func TestPackerFallsBackToWhole(t *testing.T) {
	sp := &tracepb.Span{TraceId: bytes.Repeat([]byte{1}, 16), SpanId: bytes.Repeat([]byte{2}, 8), Name: "op"}
	resource := func(v string) *resourcepb.Resource {
		return &resourcepb.Resource{Attributes: []*commonpb.KeyValue{strKV("service.name", v)}}
	}
	marshal := func(td *tracepb.TracesData) []byte {
		b, err := proto.Marshal(td)
		require.NoError(t, err)
		return b
	}
	tag := func(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }
	ss, err := proto.Marshal(&tracepb.ScopeSpans{Spans: []*tracepb.Span{sp}})
	require.NoError(t, err)
	res, err := proto.Marshal(resource("a"))
	require.NoError(t, err)
	scopeSpans := protowire.AppendBytes(tag(2, protowire.BytesType), ss)
	// A ResourceSpans of schema_url, scope_spans, resource (proto.Marshal
	// writes them in field order).
	rs := protowire.AppendString(tag(3, protowire.BytesType), "https://opentelemetry.io/schemas/1.26.0")
	rs = append(rs, scopeSpans...)
	rs = protowire.AppendBytes(append(rs, tag(1, protowire.BytesType)...), res)
	ordinary := protowire.AppendBytes(tag(1, protowire.BytesType), rs)
	// The same with an unknown field, then a second scope_spans.
	interleaved := protowire.AppendBytes(tag(1, protowire.BytesType),
		append(protowire.AppendVarint(append(slices.Clone(rs), tag(9, protowire.VarintType)...), 7), scopeSpans...))
	// The same ResourceSpans, its length a varint one byte longer than it
	// needs (valid protobuf).
	n := protowire.AppendVarint(nil, uint64(len(rs)))
	n[len(n)-1] |= 0x80
	long := append(append(append(tag(1, protowire.BytesType), n...), 0), rs...)
	unknownTop := protowire.AppendVarint(append(slices.Clone(ordinary), tag(5, protowire.VarintType)...), 1)
	bigHead := marshal(&tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource: resource(strings.Repeat("x", maxHeadBytes)), ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{sp}}}}}})

	var p packer
	now := time.Now()
	for _, tc := range []struct {
		name  string
		value []byte
		kind  byte
		spans int
	}{
		{"fields out of the usual order but not interleaved", ordinary, packedOutline, 1},
		{"a field between scope_spans", interleaved, packedWhole, 2},
		{"a non-minimal length", long, packedWhole, 1},
		{"an unknown top-level field", unknownTop, packedWhole, 1},
		{"a head too big to share", bigHead, packedWhole, 1},
		{"no resource_spans", []byte{}, packedOutline, 0},
	} {
		c, err := p.pack(tc.value, now)
		require.NoError(t, err, tc.name)
		require.Equal(t, tc.kind, c.data[0], tc.name)
		require.Equal(t, tc.spans, c.spans, tc.name)
		require.Equal(t, tc.value, unpacked(t, c), tc.name)
	}

	// Distinct resources fill a generation's table: the next starts with
	// the same dictionary and the chunks of the full one still unpack.
	gen := p.gen
	var chunks []chunk
	var values [][]byte
	for i := 0; p.gen == gen; i++ {
		v := marshal(&tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{
			Resource: resource(fmt.Sprint("service-", i)), ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{sp}}}}}})
		c, err := p.pack(v, now)
		require.NoError(t, err)
		chunks, values = append(chunks, c), append(values, v)
	}
	require.Equal(t, gen.dict, p.gen.dict)
	require.LessOrEqual(t, len(chunks), maxGenHeads)
	for i, c := range chunks {
		require.Equal(t, packedOutline, c.data[0])
		require.Equal(t, values[i], unpacked(t, c))
	}

	// More heads than a generation holds: packed whole.
	many := &tracepb.TracesData{}
	for i := range maxGenHeads {
		many.ResourceSpans = append(many.ResourceSpans, &tracepb.ResourceSpans{Resource: resource(fmt.Sprint("r", i)),
			ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{sp}}}})
	}
	v := marshal(many)
	c, err := p.pack(v, now)
	require.NoError(t, err)
	require.Equal(t, packedWhole, c.data[0])
	require.Equal(t, v, unpacked(t, c))

	// A malformed record is refused as the decoder would refuse it.
	_, err = p.pack([]byte{0x0a, 0x05, 0x12}, now)
	require.ErrorIs(t, err, span.ErrMalformed)
}

// TestPackedChunkCorrupt: a chunk whose header or outline was damaged fails
// to unpack (the outline must account for every byte of the record), but
// for a block compressed alone marked as against the dictionary, which
// decodes the same; one whose compressed spans were damaged (S2 blocks have
// no checksum) fails or unpacks to other bytes, and never panics.
func TestPackedChunkCorrupt(t *testing.T) {
	recs := loadgenRecords(t, 50)
	for _, dense := range []bool{false, true} {
		p := packer{dense: dense}
		var c chunk
		for _, r := range recs {
			var err error
			c, err = p.pack(r, time.Now())
			require.NoError(t, err)
		}
		require.Equal(t, dense, c.data[0]&packedDict != 0)
		require.Equal(t, packedOutline, c.data[0]&^packedDict)
		_, _, block, err := c.outline()
		require.NoError(t, err)
		head := len(c.data) - len(block) // kind, lengths and outline
		for i := range c.data {
			for _, flip := range []byte{0x01, 0x80, 0xff} {
				bad := c
				bad.data = slices.Clone(c.data)
				bad.data[i] ^= flip
				if i == 0 && flip == packedDict && !dense {
					require.Equal(t, recs[len(recs)-1], unpacked(t, bad))
					continue
				}
				if i < head {
					_, err := bad.lease()
					require.Error(t, err, "dense %v: byte %d of the header and outline ^ %#x", dense, i, flip)
					continue
				}
				require.NotPanics(t, func() {
					if l, err := bad.lease(); err == nil {
						l.Release()
					}
				}, "dense %v: byte %d ^ %#x", dense, i, flip)
			}
		}
		bad := c
		bad.data = binary.AppendUvarint([]byte{c.data[0]}, 1<<40)
		_, err = bad.lease()
		require.Error(t, err)
	}
}

// FuzzPack: whatever a record holds, packing either refuses it as
// malformed or it unpacks to the same bytes.
func FuzzPack(f *testing.F) {
	for _, r := range loadgenRecords(f, 3) {
		f.Add(r)
	}
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x00})
	f.Add([]byte{0x0a, 0x02, 0x12, 0x00})
	f.Fuzz(func(t *testing.T, value []byte) {
		var p packer
		c, err := p.pack(value, time.Now())
		if err != nil {
			require.ErrorIs(t, err, span.ErrMalformed)
			return
		}
		require.Equal(t, value, unpacked(t, c))
	})
}
