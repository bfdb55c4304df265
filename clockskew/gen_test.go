package clockskew

import (
	"fmt"
	"math/rand/v2"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/threadline/threadline/span"
)

// genTrace builds a random trace of n spans whose true times are causally
// consistent (children inside their parents, servers inside their clients,
// consumers after their producers), on instances whose call graph is a tree,
// then skews every instance but the root's by up to ±maxSkew. It returns the
// injected skew and the call depth of each instance.
// genOpts shape genTrace's output.
type genOpts struct {
	links    bool          // spans may link to earlier spans (acyclic)
	noAsync  bool          // no PRODUCER/CONSUMER spans
	rpcSlack time.Duration // >0: each server starts and ends within rpcSlack of its client
}

func genTrace(rng *rand.Rand, n int, maxSkew time.Duration, o genOpts) (*span.Trace, map[Instance]time.Duration, map[Instance]int) {
	type node struct {
		kind       tracepb.Span_SpanKind
		inst       int
		start, end int64
	}
	nodes := make([]node, 0, n)
	parents := make([]int, 0, n)
	var instParent []int // parent instance of each instance; -1 for the root's
	instParent = append(instParent, -1)
	nodes = append(nodes, node{kind: srv, inst: 0, start: 0, end: int64(10 * sec)})
	parents = append(parents, -1)
	nested := func(p node) (int64, int64) {
		s := p.start + rng.Int64N(p.end-p.start+1)
		return s, s + rng.Int64N(p.end-s+1)
	}
	target := func(from int) int {
		var kids []int
		for i, pi := range instParent {
			if pi == from {
				kids = append(kids, i)
			}
		}
		if len(kids) == 0 || (len(instParent) < 40 && rng.IntN(2) == 0) {
			instParent = append(instParent, from)
			return len(instParent) - 1
		}
		return kids[rng.IntN(len(kids))]
	}
	for len(nodes) < n {
		// Prefer recent spans as parents so trees get deep, not just wide.
		pi := len(nodes) - 1 - rng.IntN(min(len(nodes), 8))
		if rng.IntN(4) == 0 {
			pi = rng.IntN(len(nodes))
		}
		p := nodes[pi]
		var c node
		switch p.kind {
		case cli:
			c.kind, c.inst = srv, target(p.inst)
			c.start, c.end = nested(p)
			if o.rpcSlack > 0 {
				half := (p.end - p.start) / 2
				c.start = p.start + min(rng.Int64N(int64(o.rpcSlack)), half)
				c.end = p.end - min(rng.Int64N(int64(o.rpcSlack)), half)
			}
		case prod:
			c.kind, c.inst = cons, target(p.inst)
			c.start = p.start + rng.Int64N(int64(50*ms))
			c.end = c.start + rng.Int64N(int64(2*sec))
		default:
			c.kind = [...]tracepb.Span_SpanKind{inr, cli, cli, prod}[rng.IntN(4)]
			if o.noAsync && c.kind == prod {
				c.kind = inr
			}
			c.inst = p.inst
			c.start, c.end = nested(p)
		}
		nodes = append(nodes, c)
		parents = append(parents, pi)
	}

	skew := make([]int64, len(instParent))
	skews := map[Instance]time.Duration{}
	depths := map[Instance]int{}
	res := make([]*span.Resource, len(instParent))
	for i := range instParent {
		if i > 0 {
			skew[i] = rng.Int64N(int64(2*maxSkew)+1) - int64(maxSkew)
		}
		res[i] = resourceFor(fmt.Sprintf("svc%d@host%d", i, i))
		skews[InstanceOf(res[i])] = time.Duration(skew[i])
		d := 0
		for j := instParent[i]; j >= 0; j = instParent[j] {
			d++
		}
		depths[InstanceOf(res[i])] = d
	}
	t := &span.Trace{ID: testTraceID}
	scope := &span.Scope{}
	for i, nd := range nodes {
		s := &tracepb.Span{
			TraceId:           testTraceID[:],
			SpanId:            idOf(fmt.Sprint("s", i)),
			Name:              fmt.Sprint("s", i),
			Kind:              nd.kind,
			StartTimeUnixNano: at(time.Duration(nd.start + skew[nd.inst])),
			EndTimeUnixNano:   at(time.Duration(nd.end + skew[nd.inst])),
			Attributes:        []*commonpb.KeyValue{strAttr("i", fmt.Sprint(i))},
		}
		if parents[i] >= 0 {
			s.ParentSpanId = idOf(fmt.Sprint("s", parents[i]))
		}
		if o.links && i > 0 && rng.IntN(5) == 0 {
			for range 1 + rng.IntN(3) {
				s.Links = append(s.Links, &tracepb.Span_Link{
					TraceId: testTraceID[:],
					SpanId:  idOf(fmt.Sprint("s", rng.IntN(i))),
				})
			}
		}
		t.Spans = append(t.Spans, span.Span{Span: s, Resource: res[nd.inst], Scope: scope})
	}
	return t, skews, depths
}
