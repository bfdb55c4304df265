package clockskew

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

// FuzzAdjust builds arbitrary (often nonsensical) traces from bytes: parents
// that are missing, self, or looping; any kinds; links anywhere; times in any
// order, including zero-length and inverted spans. Adjust must not panic,
// must number every span exactly once, and Raw must restore the input.
func FuzzAdjust(f *testing.F) {
	f.Add([]byte{0, 0, 2, 10, 50, 0, 1, 1, 3, 20, 10, 0})
	f.Add([]byte{2, 0, 2, 10, 50, 1, 1, 1, 3, 200, 10, 2, 0, 2, 1, 0, 3, 0})
	f.Add([]byte{1, 1, 1, 1, 1, 1})
	f.Add([]byte{255, 3, 4, 128, 0, 7, 0, 2, 5, 127, 255, 0, 1, 3, 2, 0, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		rows := fuzzRows(data)
		if rows == nil {
			return
		}
		tr := build(rows)
		orig := cloneSpans(tr)
		res := CorrectClockSkew(DefaultConfig()).Adjust(tr)
		sorted := slices.Clone(res.LogicalTimes)
		slices.Sort(sorted)
		for i, v := range sorted {
			require.Equal(t, int64(i+1), v)
		}
		Raw(tr)
		for i := range tr.Spans {
			require.True(t, proto.Equal(orig[i], tr.Spans[i].Span), "span %d", i)
		}
	})
}

// fuzzRows reads a trace of up to 200 spans from bytes, six per span (see
// FuzzAdjust); nil when there are none or too many.
func fuzzRows(data []byte) []row {
	const width = 6
	n := len(data) / width
	if n == 0 || n > 200 {
		return nil
	}
	name := func(b byte) string { return fmt.Sprint("f", int(b)%(n+1)) } // f<n> does not exist: a missing parent
	var rows []row
	for i := range n {
		d := data[i*width : (i+1)*width]
		r := row{
			name:  fmt.Sprint("f", i),
			inst:  fmt.Sprintf("s%d@h%d", d[1]%4, d[1]%4),
			kind:  [...]tracepb.Span_SpanKind{unset, inr, srv, cli, prod, cons}[d[2]%6],
			start: time.Duration(int8(d[3])) * ms,
			end:   time.Duration(int8(d[3]))*ms + time.Duration(int(d[4])-20)*ms,
		}
		if d[0]%5 != 0 {
			r.parent = name(d[0])
		}
		if d[5]%3 == 0 {
			r.links = []string{name(d[5] / 3)}
		}
		rows = append(rows, r)
	}
	return rows
}

// TestSmallTreesMatchMaps: trees up to smallTree spans scan where larger
// ones use maps; both must give the same result, duplicate span IDs and
// shared resources included.
func TestSmallTreesMatchMaps(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	defer func(n int) { smallTree = n }(smallTree)
	for range 500 {
		data := make([]byte, 6*(1+r.IntN(30)))
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		tr := build(fuzzRows(data))
		if n := len(tr.Spans); n > 2 && r.IntN(2) == 0 {
			tr.Spans[r.IntN(n)].SpanId = slices.Clone(tr.Spans[r.IntN(n)].SpanId) // a duplicate ID
		}
		adjust := func(small int) (Result, []*tracepb.Span) {
			smallTree = small
			c := &span.Trace{ID: tr.ID, Spans: slices.Clone(tr.Spans)}
			spans := cloneSpans(tr)
			for i := range c.Spans {
				c.Spans[i].Span = spans[i]
			}
			return CorrectClockSkew(DefaultConfig()).Adjust(c), spans
		}
		scanned, a := adjust(1 << 30)
		mapped, b := adjust(-1)
		require.Equal(t, mapped, scanned)
		for i := range a {
			require.True(t, proto.Equal(b[i], a[i]), "span %d", i)
		}
	}
}

// TestUnskewedNeedsNoCorrection: Adjust skips instances and offset
// estimation for a trace where tree.skewed finds no out-of-order pair. That
// is only right if correct would then decide every offset 0 and
// checkResidual would warn about nothing; check that on traces that are
// correct (no injected skew) and on random ones.
func TestUnskewedNeedsNoCorrection(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	unskewed := 0
	for i := range 2000 {
		var tr *span.Trace
		if i%2 == 0 {
			tr, _, _ = genTrace(r, 1+r.IntN(40), 0, genOpts{links: r.IntN(2) == 0})
		} else {
			data := make([]byte, 6*(1+r.IntN(30)))
			for i := range data {
				data[i] = byte(r.Uint32())
			}
			tr = build(fuzzRows(data))
		}
		tree := newTree(0)
		tree.build(tr)
		if tree.skewed() {
			continue
		}
		unskewed++
		warnings := len(tree.warnings)
		tree.groupInstances()
		if len(tree.insts) > 1 {
			if off := tree.correct(time.Hour.Nanoseconds()); off != nil {
				require.Equal(t, make([]int64, len(tree.insts)), off)
				tree.checkResidual()
			}
		}
		require.Len(t, tree.warnings, warnings, "%q", tree.warnings)
	}
	require.Greater(t, unskewed, 500)
}
