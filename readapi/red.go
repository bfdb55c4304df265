package readapi

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/red"
)

// REDStore is what the read API needs from the RED metrics store.
type REDStore interface {
	Query(ctx context.Context, service, operation string, start, end time.Time, step time.Duration) (red.Result, error)
	Totals() (since time.Time, series []red.SeriesTotals)
}

var _ REDStore = (*red.Store)(nil)

// Option configures optional parts of the read API.
type Option func(*server)

// WithRED serves QueryRED and REDTotals from st. Without it both answer
// UNIMPLEMENTED.
func WithRED(st REDStore) Option {
	return func(s *server) { s.red = st }
}

// QueryRED answers per-step counts and raw histograms; steps without spans
// or links are left out (the query service fills them).
func (s *server) QueryRED(ctx context.Context, req *readerpb.REDRequest) (*readerpb.REDResponse, error) {
	if s.red == nil {
		return nil, status.Error(codes.Unimplemented, "RED metrics are not enabled on this indexer")
	}
	res, err := s.red.Query(ctx, req.GetService(), req.GetOperation(),
		time.Unix(0, req.GetStartUnixNano()), time.Unix(0, req.GetEndUnixNano()), time.Duration(req.GetStepNanos()))
	if errors.Is(err, red.ErrBadQuery) {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err != nil {
		return nil, s.internal(ctx, "query RED", err)
	}
	out := &readerpb.REDResponse{
		BucketBoundsSeconds: red.BoundsSeconds(),
		StartUnixNano:       res.Start.UnixNano(),
		StepNanos:           int64(res.Step),
	}
	for _, p := range res.Points {
		if p.Count == 0 && len(p.Traces) == 0 {
			continue
		}
		pt := &readerpb.REDPoint{
			StartUnixNano: p.Start.UnixNano(),
			Count:         p.Count,
			Errors:        p.Errors,
			SumNanos:      int64(p.Sum),
			BucketCounts:  append([]uint64(nil), p.Hist[:]...),
		}
		for _, tr := range p.Traces {
			pt.Traces = append(pt.Traces, &readerpb.REDTraceRef{TraceId: append([]byte(nil), tr.ID[:]...), Error: tr.Error, DurationNanos: int64(tr.Duration)})
		}
		out.Points = append(out.Points, pt)
	}
	return out, nil
}

// REDTotals answers the cumulative counters since the indexer started.
func (s *server) REDTotals(_ context.Context, _ *readerpb.REDTotalsRequest) (*readerpb.REDTotalsResponse, error) {
	if s.red == nil {
		return nil, status.Error(codes.Unimplemented, "RED metrics are not enabled on this indexer")
	}
	since, series := s.red.Totals()
	out := &readerpb.REDTotalsResponse{BucketBoundsSeconds: red.BoundsSeconds(), StartUnixNano: since.UnixNano()}
	for _, st := range series {
		ps := &readerpb.REDSeriesTotals{
			Service:      st.Service,
			Operation:    st.Operation,
			SpanKind:     st.KindName(),
			StatusCode:   st.StatusName(),
			Count:        st.Count,
			Errors:       st.Errors,
			SumSeconds:   st.Sum.Seconds(),
			BucketCounts: append([]uint64(nil), st.Hist[:]...),
		}
		for i, e := range st.Exemplars {
			if e == nil {
				continue
			}
			ps.Exemplars = append(ps.Exemplars, &readerpb.REDExemplar{
				Bucket:       uint32(i),
				TraceId:      append([]byte(nil), e.TraceID[:]...),
				ValueSeconds: e.Duration.Seconds(),
				TimeUnixNano: e.Time.UnixNano(),
			})
		}
		out.Series = append(out.Series, ps)
	}
	return out, nil
}
