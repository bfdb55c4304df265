package readapi

// The log read API (proto/logs/v1) over the indexer's log store: trace →
// logs, full-text search, the Loki-subset select, label values, and the
// time-boxed level overrides the query service fans out to every indexer.

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/threadline/threadline/logstore"
	logspb "github.com/threadline/threadline/proto/logs/v1"
	"github.com/threadline/threadline/span"
)

// LogStore is what the log read API needs from the log store.
type LogStore interface {
	TraceLogProtos(ctx context.Context, traceID span.TraceID, spanID *span.SpanID, minSeverity int32) ([]*logspb.LogEntry, error)
	SearchProtos(ctx context.Context, q string, start, end time.Time, limit int) ([]*logspb.LogEntry, error)
	SelectProtos(ctx context.Context, sel logstore.Selector) ([]*logspb.LogEntry, error)
	LabelValues(ctx context.Context, name string, start, end time.Time) ([]string, error)
}

// LevelPolicy is the part of the level policy the API changes and lists.
type LevelPolicy interface {
	SetOverride(service string, level int32, until time.Time) error
	Overrides(now time.Time) []logstore.Override
}

var (
	_ LogStore    = (*logstore.Store)(nil)
	_ LevelPolicy = (*logstore.Policy)(nil)
)

// maxLogLimit caps the lines one call returns, whatever the caller asks.
const maxLogLimit = 5000

type logServer struct {
	logspb.UnimplementedLogReaderServer
	store  LogStore
	policy LevelPolicy
	logger *slog.Logger
	now    func() time.Time
}

// NewLogs returns the gRPC log read API over store and policy.
func NewLogs(store LogStore, policy LevelPolicy, logger *slog.Logger) logspb.LogReaderServer {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &logServer{store: store, policy: policy, logger: logger, now: time.Now}
}

func (s *logServer) TraceLogs(ctx context.Context, req *logspb.TraceLogsRequest) (*logspb.LogsResponse, error) {
	id, err := span.TraceIDFromBytes(req.GetTraceId())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "trace logs: %v", err)
	}
	var sid *span.SpanID
	if len(req.GetSpanId()) > 0 {
		v, err := span.SpanIDFromBytes(req.GetSpanId())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "trace logs: %v", err)
		}
		sid = &v
	}
	logs, err := s.store.TraceLogProtos(ctx, id, sid, req.GetMinSeverity())
	if err != nil {
		return nil, s.logErr(ctx, "trace logs", err)
	}
	return &logspb.LogsResponse{Logs: logs}, nil
}

func (s *logServer) SearchLogs(ctx context.Context, req *logspb.SearchLogsRequest) (*logspb.LogsResponse, error) {
	logs, err := s.store.SearchProtos(ctx, req.GetQuery(), nsTime(req.GetStartUnixNano()), nsTime(req.GetEndUnixNano()), clampLimit(req.GetLimit()))
	if err != nil {
		return nil, s.logErr(ctx, "search logs", err)
	}
	return &logspb.LogsResponse{Logs: logs}, nil
}

func (s *logServer) SelectLogs(ctx context.Context, req *logspb.SelectLogsRequest) (*logspb.LogsResponse, error) {
	logs, err := s.store.SelectProtos(ctx, logstore.Selector{
		Service:         req.GetService(),
		Level:           req.GetLevel(),
		TraceID:         req.GetTraceId(),
		SpanID:          req.GetSpanId(),
		LineContains:    req.GetLineContains(),
		LineNotContains: req.GetLineNotContains(),
		Start:           nsTime(req.GetStartUnixNano()),
		End:             nsTime(req.GetEndUnixNano()),
		Limit:           clampLimit(req.GetLimit()),
		Forward:         req.GetForward(),
	})
	if err != nil {
		return nil, s.logErr(ctx, "select logs", err)
	}
	return &logspb.LogsResponse{Logs: logs}, nil
}

func (s *logServer) LabelValues(ctx context.Context, req *logspb.LabelValuesRequest) (*logspb.LabelValuesResponse, error) {
	vals, err := s.store.LabelValues(ctx, req.GetName(), nsTime(req.GetStartUnixNano()), nsTime(req.GetEndUnixNano()))
	if err != nil {
		return nil, s.logErr(ctx, "label values", err)
	}
	return &logspb.LabelValuesResponse{Values: vals}, nil
}

func (s *logServer) SetLevelOverride(ctx context.Context, req *logspb.SetLevelOverrideRequest) (*logspb.SetLevelOverrideResponse, error) {
	if req.GetDurationMs() < 0 {
		return nil, status.Error(codes.InvalidArgument, "set level override: negative duration")
	}
	// The deadline is computed on the indexer's own clock, so clock
	// differences between query service and indexers do not shift it.
	until := s.now().Add(time.Duration(req.GetDurationMs()) * time.Millisecond)
	if err := s.policy.SetOverride(req.GetService(), req.GetSeverityNumber(), until); err != nil {
		return nil, s.logErr(ctx, "set level override", err)
	}
	s.logger.InfoContext(ctx, "log level override set", "service", req.GetService(),
		"level", logstore.LevelName(req.GetSeverityNumber()), "until", until)
	return &logspb.SetLevelOverrideResponse{Override: &logspb.LevelOverride{
		Service: req.GetService(), SeverityNumber: req.GetSeverityNumber(), UntilUnixNano: until.UnixNano(),
	}}, nil
}

func (s *logServer) ListLevelOverrides(_ context.Context, _ *logspb.ListLevelOverridesRequest) (*logspb.ListLevelOverridesResponse, error) {
	var out []*logspb.LevelOverride
	for _, o := range s.policy.Overrides(s.now()) {
		out = append(out, &logspb.LevelOverride{Service: o.Service, SeverityNumber: o.Level, UntilUnixNano: o.Until.UnixNano()})
	}
	return &logspb.ListLevelOverridesResponse{Overrides: out}, nil
}

func (s *logServer) logErr(ctx context.Context, what string, err error) error {
	switch {
	case errors.Is(err, logstore.ErrBadQuery), errors.Is(err, logstore.ErrBadOverride):
		return status.Errorf(codes.InvalidArgument, "%s: %v", what, err)
	case errors.Is(err, context.Canceled):
		return status.Errorf(codes.Canceled, "%s: %v", what, err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.DeadlineExceeded, "%s: %v", what, err)
	}
	s.logger.ErrorContext(ctx, what, "err", err)
	return status.Errorf(codes.Internal, "%s: %v", what, err)
}

func nsTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func clampLimit(n int32) int {
	switch {
	case n <= 0:
		return 100
	case n > maxLogLimit:
		return maxLogLimit
	}
	return int(n)
}
