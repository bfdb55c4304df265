package sampling

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// BenchmarkOffer feeds a steady stream over 1k keys, 5% errors, advancing
// the watermark as the stream moves on, as the indexer would; 20k keys
// exceeds the default MaxKeys (5000), so it measures the shedding path.
func BenchmarkOffer(b *testing.B) {
	for _, keys := range []int{1000, 20000} {
		b.Run(fmt.Sprintf("keys=%d", keys), func(b *testing.B) {
			const n = 1 << 16
			r := rand.New(rand.NewPCG(1, 2))
			ops := make([]string, keys)
			for i := range ops {
				ops[i] = fmt.Sprintf("GET /api/v1/op%d", i)
			}
			svcs := []string{"frontend", "checkout", "cart", "payment", "shipping"}
			traces := make([]TraceInfo, n)
			for i := range traces {
				k := r.IntN(keys)
				traces[i] = TraceInfo{
					ID:            randID(r),
					RootService:   svcs[k%len(svcs)],
					RootOperation: ops[k],
					Duration:      time.Duration(r.Int64N(int64(time.Second))),
					Error:         r.IntN(20) == 0,
				}
			}
			cfg := DefaultConfig()
			s, _ := newSampler(b, cfg)
			// 10k traces/s of event time: a window holds 600k traces.
			const step = 100 * time.Microsecond
			start := t0
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				tr := traces[i%n]
				tr.End = start.Add(time.Duration(i) * step)
				binary.BigEndian.PutUint64(tr.ID[:8], uint64(i)) // unique IDs
				s.Offer(tr)
				if i%1024 == 0 {
					s.Advance(tr.End.Add(-30 * time.Second))
				}
			}
			s.Flush()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "traces/s")
		})
	}
}
