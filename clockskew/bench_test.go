package clockskew

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/threadline/threadline/span"
)

// BenchmarkAdjust measures one Adjust per iteration, followed by Raw so every
// Adjust sees a trace as received (Raw is a single pass over the attributes
// and is included in the time). Raw leaves room in each span's attribute
// list for the stamps; clipping it again makes every Adjust pay for growing
// the list, as it does for spans fresh off the wire.
func BenchmarkAdjust(b *testing.B) {
	// Most traces are small and correct: noskew is the indexer's common case.
	noSkew := build([]row{
		{name: "root", inst: "web@h1", kind: srv, start: 0, end: 100 * ms},
		{name: "call", parent: "root", inst: "web@h1", kind: cli, start: 10 * ms, end: 90 * ms},
		{name: "api", parent: "call", inst: "api@h2", kind: srv, start: 20 * ms, end: 80 * ms},
		{name: "q", parent: "api", inst: "api@h2", kind: cli, start: 30 * ms, end: 70 * ms},
		{name: "db", parent: "q", inst: "db@h3", kind: srv, start: 40 * ms, end: 60 * ms},
	})
	oneSkew := build([]row{
		{name: "root", inst: "web@h1", kind: srv, start: 0, end: 100 * ms},
		{name: "call", parent: "root", inst: "web@h1", kind: cli, start: 10 * ms, end: 90 * ms},
		{name: "api", parent: "call", inst: "api@h2", kind: srv, start: 20 * ms, end: 80 * ms},
		{name: "q", parent: "api", inst: "api@h2", kind: cli, start: 30 * ms, end: 70 * ms},
		{name: "db", parent: "q", inst: "db@h3", kind: srv, start: -sec + 40*ms, end: -sec + 60*ms},
	})
	small := build([]row{
		{name: "root", inst: "web@h1", kind: srv, start: 0, end: 100 * ms},
		{name: "call", parent: "root", inst: "web@h1", kind: cli, start: 10 * ms, end: 90 * ms},
		{name: "api", parent: "call", inst: "api@h2", kind: srv, start: 2*sec + 20*ms, end: 2*sec + 80*ms},
		{name: "q", parent: "api", inst: "api@h2", kind: cli, start: 2*sec + 30*ms, end: 2*sec + 70*ms},
		{name: "db", parent: "q", inst: "db@h3", kind: srv, start: -sec + 40*ms, end: -sec + 60*ms},
	})
	large10k, _, _ := genTrace(rand.New(rand.NewPCG(3, 4)), 10_000, 5*sec, genOpts{links: true})
	large100k, _, _ := genTrace(rand.New(rand.NewPCG(5, 6)), 100_000, 5*sec, genOpts{links: true})
	// repair is what the indexer runs (RepairClockSkew: no logical
	// timestamps, which readers assign).
	for _, bc := range []struct {
		name string
		tr   *span.Trace
		adj  Adjuster
	}{
		{"5spans-noskew", noSkew, CorrectClockSkew(DefaultConfig())},
		{"5spans-noskew-repair", noSkew, RepairClockSkew(DefaultConfig())},
		{"5spans-oneskew", oneSkew, CorrectClockSkew(DefaultConfig())},
		{"5spans-oneskew-repair", oneSkew, RepairClockSkew(DefaultConfig())},
		{"5spans", small, CorrectClockSkew(DefaultConfig())},
		{"10kspans", large10k, CorrectClockSkew(DefaultConfig())},
		{"100kspans", large100k, CorrectClockSkew(DefaultConfig())},
	} {
		b.Run(bc.name, func(b *testing.B) {
			adj := bc.adj
			b.ReportAllocs()
			for b.Loop() {
				adj.Adjust(bc.tr)
				Raw(bc.tr)
				for i := range bc.tr.Spans {
					bc.tr.Spans[i].Attributes = slices.Clip(bc.tr.Spans[i].Attributes)
				}
			}
			b.ReportMetric(float64(len(bc.tr.Spans))*float64(b.N)/b.Elapsed().Seconds(), "spans/s")
		})
	}
}
