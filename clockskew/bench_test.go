package clockskew

import (
	"math/rand/v2"
	"testing"

	"github.com/threadline/threadline/span"
)

// BenchmarkAdjust measures one Adjust per iteration, followed by Raw so every
// Adjust sees a trace as received (Raw is a single pass over the attributes
// and is included in the time).
func BenchmarkAdjust(b *testing.B) {
	small := build([]row{
		{name: "root", inst: "web@h1", kind: srv, start: 0, end: 100 * ms},
		{name: "call", parent: "root", inst: "web@h1", kind: cli, start: 10 * ms, end: 90 * ms},
		{name: "api", parent: "call", inst: "api@h2", kind: srv, start: 2*sec + 20*ms, end: 2*sec + 80*ms},
		{name: "q", parent: "api", inst: "api@h2", kind: cli, start: 2*sec + 30*ms, end: 2*sec + 70*ms},
		{name: "db", parent: "q", inst: "db@h3", kind: srv, start: -sec + 40*ms, end: -sec + 60*ms},
	})
	large10k, _, _ := genTrace(rand.New(rand.NewPCG(3, 4)), 10_000, 5*sec, genOpts{links: true})
	large100k, _, _ := genTrace(rand.New(rand.NewPCG(5, 6)), 100_000, 5*sec, genOpts{links: true})
	for _, bc := range []struct {
		name string
		tr   *span.Trace
	}{{"5spans", small}, {"10kspans", large10k}, {"100kspans", large100k}} {
		b.Run(bc.name, func(b *testing.B) {
			adj := CorrectClockSkew(DefaultConfig())
			b.ReportAllocs()
			for b.Loop() {
				adj.Adjust(bc.tr)
				Raw(bc.tr)
			}
			b.ReportMetric(float64(len(bc.tr.Spans))*float64(b.N)/b.Elapsed().Seconds(), "spans/s")
		})
	}
}
