package clockskew

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
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
		const width = 6
		n := len(data) / width
		if n == 0 || n > 200 {
			return
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
