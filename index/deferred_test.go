package index

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

// decodedTwice encodes each trace as a Kafka record and decodes it twice:
// fully, and lazily with the attributes left in the wire (as the indexer
// does). Every other span of both gets an attribute appended after
// decoding, as the skew stage appends its logical time.
func decodedTwice(t *testing.T, traces []KeptTrace) (full, lazy []KeptTrace) {
	t.Helper()
	var dec span.Decoder
	for _, kt := range traces {
		data, err := proto.Marshal(span.ToTracesData(kt.Trace.Spans))
		require.NoError(t, err)
		f, err := dec.DecodeTraces(data)
		require.NoError(t, err)
		l, err := dec.DecodeTracesLazy(bytes.Clone(data))
		require.NoError(t, err)
		for i := range l {
			if len(f[i].Attributes) > 0 {
				require.True(t, l[i].AttrsDeferred())
			}
			if i%2 == 1 {
				f[i].Attributes = append(f[i].Attributes, intAttr("threadline.logical_time", int64(i)))
				l[i].Attributes = append(l[i].Attributes, intAttr("threadline.logical_time", int64(i)))
			}
		}
		full = append(full, KeptTrace{Trace: span.Trace{ID: kt.Trace.ID, Spans: f}, Reasons: kt.Reasons})
		lazy = append(lazy, KeptTrace{Trace: span.Trace{ID: kt.Trace.ID, Spans: l}, Reasons: kt.Reasons})
	}
	return full, lazy
}

// TestDeferredAttributes: spans whose attributes were left in the wire are
// stored key for key as the same spans decoded in full — bodies, groups,
// summaries and attribute postings of every value kind — and read back
// with every attribute, the appended ones after the received ones.
func TestDeferredAttributes(t *testing.T) {
	ctx := context.Background()
	traces := append(fixture(), newWorkload(21).kept(40)...)
	kinds := traces[0].Trace.Spans[0].Span
	kinds.Attributes = append(kinds.Attributes,
		&commonpb.KeyValue{Key: "flag", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: true}}},
		&commonpb.KeyValue{Key: "ratio", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: math.Pi}}},
		&commonpb.KeyValue{Key: "neg", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: -7}}},
		&commonpb.KeyValue{Key: "raw", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BytesValue{BytesValue: []byte{1}}}},
		&commonpb.KeyValue{Key: "list", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{}}}},
		&commonpb.KeyValue{Key: "unset"},
		&commonpb.KeyValue{Key: "empty", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{}}},
	)
	full, lazy := decodedTwice(t, traces)

	a, b := openStore(t, t.TempDir()), openStore(t, t.TempDir())
	require.NoError(t, a.WriteTraces(ctx, full))
	require.NoError(t, b.WriteTraces(ctx, lazy))
	keys := func(st *Store) [][]byte {
		var out [][]byte
		require.NoError(t, st.scanKeys(ctx, nil, func(k []byte) bool {
			out = append(out, bytes.Clone(k))
			return true
		}))
		return out
	}
	ka := keys(a)
	require.NotEmpty(t, ka)
	require.Equal(t, ka, keys(b), "the same keys, postings among them")
	for _, k := range []string{"flag", "ratio", "neg", "empty", "http.route"} {
		require.Contains(t, ka, firstKey(t, a, appendLV([]byte{prefixAttrPost}, k)), "attribute %q is indexed", k)
	}

	// What was stored has every attribute: the fully decoded spans are
	// the reference, appended ones included.
	requireTraces(t, b, full)
	for i, kt := range lazy {
		for j, s := range kt.Trace.Spans {
			require.Equal(t, len(full[i].Trace.Spans[j].Attributes) > j%2, s.AttrsDeferred(), "the store decodes no deferred attribute")
		}
	}
}

// TestDeferredAttributesInAnyOrder: the store remembers the previous span's
// attribute keys in order (preparer.spanKey); spans that list the same keys
// in other orders, fewer or more of them, with a high-cardinality key
// among them, are stored key for key as the same spans decoded in full.
func TestDeferredAttributesInAnyOrder(t *testing.T) {
	ctx := context.Background()
	orders := [][]string{
		{"user.id", "route", "method"},
		{"route", "user.id", "method"},
		{"method", "route"},
		{"method", "route", "user.id", "region"},
		{"user.id"},
	}
	batch := func(from, to int) []KeptTrace {
		var out []KeptTrace
		for i := from; i < to; i++ {
			var defs []spanDef
			for j, order := range orders {
				var attrs []*commonpb.KeyValue
				for _, k := range order {
					attrs = append(attrs, strAttr(k, fmt.Sprintf("%s-%d", k, (i*len(orders)+j)%(1+len(k)%4))))
				}
				defs = append(defs, spanDef{id: byte(j + 1), res: resFrontend, name: "op", startMs: int64(i*10 + j), durMs: 5, attrs: attrs})
			}
			out = append(out, KeptTrace{Trace: mkTrace(tid(byte(i)), defs...)})
		}
		return out
	}
	opts := func(o *Options) { o.MaxIndexedValuesPerKey = 3 }
	a, b := openStore(t, t.TempDir(), opts), openStore(t, t.TempDir(), opts)
	for _, r := range [][2]int{{1, 4}, {4, 30}} { // the first marks user.id high-cardinality
		full, lazy := decodedTwice(t, batch(r[0], r[1]))
		require.NoError(t, a.WriteTraces(ctx, full))
		require.NoError(t, b.WriteTraces(ctx, lazy))
	}
	require.True(t, b.card.isHigh("user.id"))
	var ka, kb [][]byte
	for _, x := range []struct {
		st  *Store
		out *[][]byte
	}{{a, &ka}, {b, &kb}} {
		require.NoError(t, x.st.scanKeys(ctx, nil, func(k []byte) bool {
			*x.out = append(*x.out, bytes.Clone(k))
			return true
		}))
	}
	require.Equal(t, ka, kb, "the same keys, postings among them")
	for _, k := range []string{"route", "method", "region"} {
		require.Contains(t, kb, firstKey(t, b, appendLV([]byte{prefixAttrPost}, k)), "attribute %q is indexed", k)
	}
	_, names, err := b.TagNames(ctx)
	require.NoError(t, err)
	require.Subset(t, names, []string{"user.id", "route", "method", "region"})
}
