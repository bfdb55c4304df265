// Package readapi serves the indexer's read API (proto/reader/v1) over its
// span store. The query service fans each call out to every indexer and
// merges the answers, so this server only answers for its own store.
package readapi

import (
	"context"
	"errors"
	"log/slog"
	"slices"

	"github.com/threadline/threadline/clockskew"
	"github.com/threadline/threadline/index"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Store is what the read API needs from the span store.
type Store interface {
	Trace(ctx context.Context, id span.TraceID) (index.StoredTrace, bool, error)
	Search(ctx context.Context, q *readerpb.SearchRequest) ([]*readerpb.TraceSummary, error)
	Services(ctx context.Context) ([]string, error)
	Operations(ctx context.Context, service string) ([]*readerpb.Operation, error)
	TagNames(ctx context.Context) (resource, spanKeys []string, err error)
	TagValues(ctx context.Context, tag string, limit int) ([]string, error)
	AddReasons(ctx context.Context, id span.TraceID, reasons []string) (bool, error)
}

var _ Store = (*index.Store)(nil)

type server struct {
	readerpb.UnimplementedReaderServer
	store  Store
	logger *slog.Logger
	red    REDStore // optional, see red.go
}

// New returns the gRPC read API over store. A nil store (a RED-only reader)
// answers the span calls with Unimplemented instead of crashing.
func New(store Store, logger *slog.Logger, opts ...Option) readerpb.ReaderServer {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &server{store: store, logger: logger}
	if store == nil {
		s.store = noStore{}
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// GetTrace returns the stored spans as OTLP TracesData. Spans are stored
// skew-adjusted, each marked with the offset applied, and read with their
// logical timestamps (clockskew.AttrLogicalTime); a raw read undoes the
// adjustment and has no logical timestamps.
func (s *server) GetTrace(ctx context.Context, req *readerpb.GetTraceRequest) (*readerpb.GetTraceResponse, error) {
	id, err := span.TraceIDFromBytes(req.GetTraceId())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "get trace: %v", err)
	}
	tr, found, err := s.store.Trace(ctx, id)
	if err != nil {
		return nil, s.internal(ctx, "get trace", err)
	}
	if !found {
		return &readerpb.GetTraceResponse{}, nil
	}
	warnings := tr.Warnings
	if req.GetRaw() {
		clockskew.Raw(&span.Trace{ID: id, Spans: tr.Spans})
	} else {
		// Logical timestamps are assigned here, to the whole trace as
		// stored (every write of it), not by the indexer (see
		// clockskew.RepairClockSkew). The ordering's warnings are the
		// trace's, some stored already by traces written before that.
		for _, w := range clockskew.StampLogicalTimes(&span.Trace{ID: id, Spans: tr.Spans}) {
			if !slices.Contains(warnings, w) {
				warnings = append(warnings, w)
			}
		}
	}
	b, err := proto.Marshal(span.ToTracesData(tr.Spans))
	if err != nil {
		return nil, s.internal(ctx, "marshal trace", err)
	}
	return &readerpb.GetTraceResponse{Found: true, TracesData: b, KeptReasons: tr.Reasons, Warnings: warnings}, nil
}

func (s *server) SearchTraces(ctx context.Context, req *readerpb.SearchRequest) (*readerpb.SearchResponse, error) {
	res, err := s.store.Search(ctx, req)
	if errors.Is(err, index.ErrBadQuery) {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err != nil {
		return nil, s.internal(ctx, "search traces", err)
	}
	return &readerpb.SearchResponse{Traces: res}, nil
}

func (s *server) Services(ctx context.Context, _ *readerpb.ServicesRequest) (*readerpb.ServicesResponse, error) {
	res, err := s.store.Services(ctx)
	if err != nil {
		return nil, s.internal(ctx, "list services", err)
	}
	return &readerpb.ServicesResponse{Services: res}, nil
}

func (s *server) Operations(ctx context.Context, req *readerpb.OperationsRequest) (*readerpb.OperationsResponse, error) {
	res, err := s.store.Operations(ctx, req.GetService())
	if err != nil {
		return nil, s.internal(ctx, "list operations", err)
	}
	return &readerpb.OperationsResponse{Operations: res}, nil
}

func (s *server) TagNames(ctx context.Context, _ *readerpb.TagNamesRequest) (*readerpb.TagNamesResponse, error) {
	res, spanKeys, err := s.store.TagNames(ctx)
	if err != nil {
		return nil, s.internal(ctx, "list tag names", err)
	}
	return &readerpb.TagNamesResponse{Resource: res, Span: spanKeys}, nil
}

func (s *server) TagValues(ctx context.Context, req *readerpb.TagValuesRequest) (*readerpb.TagValuesResponse, error) {
	if req.GetTag() == "" {
		return nil, status.Error(codes.InvalidArgument, "tag values: tag is empty")
	}
	res, err := s.store.TagValues(ctx, req.GetTag(), int(req.GetLimit()))
	if err != nil {
		return nil, s.internal(ctx, "list tag values", err)
	}
	return &readerpb.TagValuesResponse{Values: res}, nil
}

// AddKeptReason adds the reason to every listed trace this store holds.
func (s *server) AddKeptReason(ctx context.Context, req *readerpb.AddKeptReasonRequest) (*readerpb.AddKeptReasonResponse, error) {
	if req.GetReason() == "" {
		return nil, status.Error(codes.InvalidArgument, "add kept reason: reason is empty")
	}
	var found uint32
	for _, b := range req.GetTraceIds() {
		id, err := span.TraceIDFromBytes(b)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "add kept reason: %v", err)
		}
		ok, err := s.store.AddReasons(ctx, id, []string{req.GetReason()})
		if err != nil {
			return nil, s.internal(ctx, "add kept reason", err)
		}
		if ok {
			found++
		}
	}
	return &readerpb.AddKeptReasonResponse{Found: found}, nil
}

// internal logs a store failure and maps it to a gRPC status; a cancelled
// or expired caller context keeps its own code.
func (s *server) internal(ctx context.Context, what string, err error) error {
	switch {
	case errors.Is(err, errNoStore):
		return err
	case errors.Is(err, context.Canceled):
		return status.Errorf(codes.Canceled, "%s: %v", what, err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.DeadlineExceeded, "%s: %v", what, err)
	}
	s.logger.ErrorContext(ctx, what, "err", err)
	return status.Errorf(codes.Internal, "%s: %v", what, err)
}

// noStore is the span store of a reader built without one.
type noStore struct{}

var errNoStore = status.Error(codes.Unimplemented, "this reader has no span store")

func (noStore) Trace(context.Context, span.TraceID) (index.StoredTrace, bool, error) {
	return index.StoredTrace{}, false, errNoStore
}
func (noStore) Search(context.Context, *readerpb.SearchRequest) ([]*readerpb.TraceSummary, error) {
	return nil, errNoStore
}
func (noStore) Services(context.Context) ([]string, error) { return nil, errNoStore }
func (noStore) Operations(context.Context, string) ([]*readerpb.Operation, error) {
	return nil, errNoStore
}
func (noStore) TagNames(context.Context) ([]string, []string, error) { return nil, nil, errNoStore }
func (noStore) TagValues(context.Context, string, int) ([]string, error) {
	return nil, errNoStore
}
func (noStore) AddReasons(context.Context, span.TraceID, []string) (bool, error) {
	return false, errNoStore
}
