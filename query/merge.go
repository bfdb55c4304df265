package query

import (
	"bytes"
	"fmt"
	"slices"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
)

// mergedTrace is one trace assembled from every indexer that holds part of it.
type mergedTrace struct {
	spans    []span.Span
	reasons  []string
	warnings []string
	parts    int // answers that held the trace
}

// mergeTrace unions the spans of every found answer, keeping the first copy of
// a span ID: after a rebalance and replay the same span can be stored twice.
// Resources and scopes that are equal are shared again, so the regrouped
// TracesData has one ResourceSpans per service instance rather than one per
// indexer. It returns found=false when no indexer holds the trace.
func mergeTrace(answers []*readerpb.GetTraceResponse) (mergedTrace, bool, error) {
	var (
		out    mergedTrace
		seen   = map[span.SpanID]bool{}
		intern = newInterner()
	)
	for _, an := range answers {
		if !an.GetFound() {
			continue
		}
		out.parts++
		out.reasons = append(out.reasons, an.GetKeptReasons()...)
		out.warnings = append(out.warnings, an.GetWarnings()...)
		var td tracepb.TracesData
		if err := proto.Unmarshal(an.GetTracesData(), &td); err != nil {
			return mergedTrace{}, false, fmt.Errorf("decode indexer trace: %w", err)
		}
		for _, s := range span.FromTracesData(&td) {
			var id span.SpanID
			copy(id[:], s.GetSpanId())
			if seen[id] {
				continue
			}
			seen[id] = true
			s.Resource = intern.resource(s.Resource)
			s.Scope = intern.scope(s.Resource, s.Scope)
			out.spans = append(out.spans, s)
		}
	}
	// Start order reads naturally in every consumer and makes the output
	// independent of which indexer answered first.
	slices.SortStableFunc(out.spans, func(x, y span.Span) int {
		if c := compareUint(x.GetStartTimeUnixNano(), y.GetStartTimeUnixNano()); c != 0 {
			return c
		}
		return bytes.Compare(x.GetSpanId(), y.GetSpanId())
	})
	out.reasons = unionSorted(out.reasons)
	out.warnings = unionSorted(out.warnings)
	return out, out.parts > 0, nil
}

// interner maps equal resources (and equal scopes under one resource) to one
// pointer. Spans decoded from one ResourceSpans already share a pointer, so
// each distinct pointer is serialized once, not each span.
type interner struct {
	mo       proto.MarshalOptions
	resByKey map[string]*span.Resource
	resByPtr map[*span.Resource]*span.Resource
	scByKey  map[scopeKey]*span.Scope
	scByPtr  map[scopePtr]*span.Scope
}

type scopeKey struct {
	res *span.Resource
	key string
}

type scopePtr struct {
	res *span.Resource
	sc  *span.Scope
}

func newInterner() *interner {
	return &interner{
		mo:       proto.MarshalOptions{Deterministic: true},
		resByKey: map[string]*span.Resource{},
		resByPtr: map[*span.Resource]*span.Resource{},
		scByKey:  map[scopeKey]*span.Scope{},
		scByPtr:  map[scopePtr]*span.Scope{},
	}
}

func (in *interner) resource(r *span.Resource) *span.Resource {
	if r == nil {
		return nil
	}
	if have, ok := in.resByPtr[r]; ok {
		return have
	}
	b, _ := in.mo.Marshal(r.Resource)
	key := r.SchemaURL + "\x00" + string(b)
	have, ok := in.resByKey[key]
	if !ok {
		have = r
		in.resByKey[key] = r
	}
	in.resByPtr[r] = have
	return have
}

// scope interns s under its (already interned) resource r, since scopes are
// grouped per resource.
func (in *interner) scope(r *span.Resource, s *span.Scope) *span.Scope {
	if s == nil {
		return nil
	}
	pk := scopePtr{r, s}
	if have, ok := in.scByPtr[pk]; ok {
		return have
	}
	b, _ := in.mo.Marshal(s.Scope)
	k := scopeKey{r, s.SchemaURL + "\x00" + string(b)}
	have, ok := in.scByKey[k]
	if !ok {
		have = s
		in.scByKey[k] = s
	}
	in.scByPtr[pk] = have
	return have
}

func compareUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// mergeSummaries combines the summaries of one trace reported by several
// indexers: the trace spans from the earliest start to the latest end any of
// them saw; counts add up (each indexer holds different spans); the root is
// taken from the summary that starts earliest, since the root span starts
// first and an indexer holding only children reports a non-root "root". The
// result is newest first, cut to limit.
func mergeSummaries(answers []*readerpb.SearchResponse, limit int) []*readerpb.TraceSummary {
	byID := map[string]*readerpb.TraceSummary{}
	var order []*readerpb.TraceSummary
	for _, an := range answers {
		for _, s := range an.GetTraces() {
			key := string(s.GetTraceId())
			have, ok := byID[key]
			if !ok {
				c := proto.Clone(s).(*readerpb.TraceSummary)
				byID[key] = c
				order = append(order, c)
				continue
			}
			mergeSummary(have, s)
		}
	}
	slices.SortStableFunc(order, func(x, y *readerpb.TraceSummary) int {
		if c := compareInt(y.GetStartUnixNano(), x.GetStartUnixNano()); c != 0 {
			return c
		}
		return bytes.Compare(x.GetTraceId(), y.GetTraceId())
	})
	if limit > 0 && len(order) > limit {
		order = order[:limit]
	}
	return order
}

func mergeSummary(dst, src *readerpb.TraceSummary) {
	dstEnd := dst.StartUnixNano + dst.DurationNanos
	srcEnd := src.GetStartUnixNano() + src.GetDurationNanos()
	if src.GetStartUnixNano() < dst.StartUnixNano || (dst.RootServiceName == "" && dst.RootSpanName == "") {
		if src.GetRootServiceName() != "" || src.GetRootSpanName() != "" {
			dst.RootServiceName, dst.RootSpanName = src.GetRootServiceName(), src.GetRootSpanName()
		}
	}
	if src.GetStartUnixNano() < dst.StartUnixNano {
		dst.StartUnixNano = src.GetStartUnixNano()
	}
	dst.DurationNanos = max(dstEnd, srcEnd) - dst.StartUnixNano
	dst.SpanCount += src.GetSpanCount()
	dst.ErrorCount += src.GetErrorCount()
	dst.KeptReasons = unionSorted(append(dst.KeptReasons, src.GetKeptReasons()...))
	dst.Services = unionSorted(append(dst.Services, src.GetServices()...))
}

func compareInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// unionSorted returns the distinct non-empty strings of in, sorted.
func unionSorted(in []string) []string {
	out := slices.DeleteFunc(slices.Clone(in), func(s string) bool { return s == "" })
	slices.Sort(out)
	return slices.Compact(out)
}

// unionLists merges string lists from every indexer.
func unionLists(lists [][]string) []string {
	var all []string
	for _, l := range lists {
		all = append(all, l...)
	}
	return unionSorted(all)
}
