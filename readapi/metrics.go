package readapi

// The received-metrics read API (proto/metrics/v1) over the indexer's metric
// store: series points for metric alert rules and exemplar links for the
// metric → traces jump. The query service fans both out to every indexer and
// merges the answers.

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/threadline/threadline/metricstore"
	metricspb "github.com/threadline/threadline/proto/metrics/v1"
)

// MetricStore is what the metric read API needs from the metric store.
type MetricStore interface {
	Series(ctx context.Context, metric string, matchers map[string]string, start, end time.Time) ([]metricstore.SeriesPoints, error)
	Exemplars(ctx context.Context, metric string, matchers map[string]string, start, end time.Time, limit int) ([]metricstore.Link, error)
}

var _ MetricStore = (*metricstore.Store)(nil)

type metricServer struct {
	metricspb.UnimplementedMetricReaderServer
	store  MetricStore
	logger *slog.Logger
}

// NewMetrics returns the gRPC metric read API over store.
func NewMetrics(store MetricStore, logger *slog.Logger) metricspb.MetricReaderServer {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &metricServer{store: store, logger: logger}
}

func (s *metricServer) QuerySeries(ctx context.Context, req *metricspb.QuerySeriesRequest) (*metricspb.QuerySeriesResponse, error) {
	if req.GetMetric() == "" {
		return nil, status.Error(codes.InvalidArgument, "query series: metric is required")
	}
	series, err := s.store.Series(ctx, req.GetMetric(), req.GetMatchers(), nsTime(req.GetStartUnixNano()), nsTime(req.GetEndUnixNano()))
	if err != nil {
		return nil, s.metricErr(ctx, "query series", err)
	}
	out := &metricspb.QuerySeriesResponse{Series: make([]*metricspb.Series, 0, len(series))}
	for _, sp := range series {
		ser := &metricspb.Series{Metric: sp.Metric, Labels: labelsPB(sp.Labels), Kind: sp.Kind,
			Temporality: sp.Temporality, Monotonic: sp.Monotonic, Unit: sp.Unit, Points: make([]*metricspb.Point, len(sp.Points))}
		for i, p := range sp.Points {
			ser.Points[i] = &metricspb.Point{TimeUnixNano: unixNano(p.Time), StartTimeUnixNano: unixNano(p.Start),
				Value: p.Value, Count: p.Count, Sum: p.Sum, ExplicitBounds: p.Bounds, BucketCounts: p.BucketCounts}
		}
		out.Series = append(out.Series, ser)
	}
	return out, nil
}

func (s *metricServer) QueryExemplars(ctx context.Context, req *metricspb.QueryExemplarsRequest) (*metricspb.QueryExemplarsResponse, error) {
	if req.GetMetric() == "" {
		return nil, status.Error(codes.InvalidArgument, "query exemplars: metric is required")
	}
	links, err := s.store.Exemplars(ctx, req.GetMetric(), req.GetMatchers(), nsTime(req.GetStartUnixNano()), nsTime(req.GetEndUnixNano()), int(req.GetLimit()))
	if err != nil {
		return nil, s.metricErr(ctx, "query exemplars", err)
	}
	out := &metricspb.QueryExemplarsResponse{Exemplars: make([]*metricspb.Exemplar, len(links))}
	for i, l := range links {
		e := &metricspb.Exemplar{Metric: l.Metric, Labels: labelsPB(l.Labels), TimeUnixNano: unixNano(l.Time),
			Value: l.Value, TraceId: l.TraceID[:]}
		if !l.SpanID.IsZero() {
			e.SpanId = l.SpanID[:]
		}
		out.Exemplars[i] = e
	}
	return out, nil
}

func labelsPB(ls []metricstore.Label) []*metricspb.Label {
	out := make([]*metricspb.Label, len(ls))
	for i, l := range ls {
		out[i] = &metricspb.Label{Name: l.Name, Value: l.Value}
	}
	return out
}

func unixNano(t time.Time) uint64 {
	if t.IsZero() || t.UnixNano() < 0 {
		return 0
	}
	return uint64(t.UnixNano())
}

func (s *metricServer) metricErr(ctx context.Context, what string, err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return status.Errorf(codes.Canceled, "%s: %v", what, err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.DeadlineExceeded, "%s: %v", what, err)
	}
	s.logger.ErrorContext(ctx, what, "err", err)
	return status.Errorf(codes.Internal, "%s: %v", what, err)
}
