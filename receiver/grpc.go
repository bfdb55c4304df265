package receiver

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// rawRequest is an OTLP export request kept as its protobuf encoding. The
// server codec fills it without decoding, which is the whole point: the
// splitter walks the wire format and copies spans as bytes, so a request is
// never turned into tracepb structs on the collector's hot path.
type rawRequest struct {
	// buf holds a reference on gRPC's pooled buffer; Free it when done.
	buf mem.Buffer
}

// rawCodec is the server codec: *rawRequest passes through as bytes, every
// other message goes to gRPC's standard proto codec, so proto services (such
// as health) can share the server. pool is the server's buffer pool, which
// also holds requests that arrive in several buffers.
type rawCodec struct{ pool mem.BufferPool }

var _ encoding.CodecV2 = rawCodec{}

func (rawCodec) protoCodec() encoding.CodecV2 { return encoding.GetCodecV2(protocodec.Name) }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*rawRequest); ok {
		// gRPC frees what Marshal returns; keep the caller's reference.
		r.buf.Ref()
		return mem.BufferSlice{r.buf}, nil
	}
	return c.protoCodec().Marshal(v)
}

func (c rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*rawRequest); ok {
		// gRPC frees data when Unmarshal returns; MaterializeToBuffer takes
		// our own reference (a single-buffer message is not copied).
		pool := c.pool
		if pool == nil {
			pool = mem.DefaultBufferPool()
		}
		r.buf = data.MaterializeToBuffer(pool)
		return nil
	}
	return c.protoCodec().Unmarshal(data, v)
}

// Name is "proto": on the wire the raw path is ordinary protobuf gRPC.
func (rawCodec) Name() string { return protocodec.Name }

// exportFunc handles one OTLP export request of a signal given as its
// protobuf encoding (Export*ServiceRequest) and returns the
// Export*ServiceResponse or an *exportError. It must not keep req.
type exportFunc func(ctx context.Context, transport string, req []byte) (proto.Message, error)

// rawExportService is an OTLP collector service (TraceService, LogsService,
// MetricsService: all have a single unary Export method) served through
// rawCodec. Adding a signal is one registerRawExport call with its exportFunc.
type rawExportService struct {
	r      *Receiver
	signal string
	export exportFunc
}

// registerRawExport registers service (its full proto name, e.g.
// "opentelemetry.proto.collector.logs.v1.LogsService") on s. s must use
// rawCodec (grpc.ForceServerCodecV2), or requests would not decode.
func registerRawExport(s *grpc.Server, service string, svc *rawExportService) {
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: service,
		// The handler is not a generated interface; any value will do.
		HandlerType: (*any)(nil),
		Methods:     []grpc.MethodDesc{{MethodName: "Export", Handler: rawExportHandler(service)}},
		Streams:     []grpc.StreamDesc{},
	}, svc)
}

func rawExportHandler(service string) func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	info := &grpc.UnaryServerInfo{FullMethod: "/" + service + "/Export"}
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		s, ok := srv.(*rawExportService)
		if !ok {
			return nil, fmt.Errorf("%s: handler is %T, want *rawExportService", info.FullMethod, srv)
		}
		start := time.Now()
		resp, err := s.serve(ctx, dec, interceptor, info)
		m := s.r.metrics
		m.requests.WithLabelValues(s.signal, transportGRPC, status.Code(err).String()).Inc()
		m.duration.WithLabelValues(s.signal, transportGRPC).Observe(time.Since(start).Seconds())
		return resp, err
	}
}

func (s *rawExportService) serve(ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor, info *grpc.UnaryServerInfo) (any, error) {
	// Take the slot before dec: gRPC reads the message lazily, so a refused
	// request's body is never buffered.
	if !s.r.limit.tryAcquire() {
		return nil, s.r.grpcStatus(newExportError(errOverloaded, "too many concurrent export requests; retry later", nil))
	}
	defer s.r.limit.release()

	req := &rawRequest{}
	if err := dec(req); err != nil {
		return nil, err // a status from gRPC: size limit, bad compression…
	}
	defer req.buf.Free()

	handle := func(ctx context.Context, v any) (any, error) {
		req, ok := v.(*rawRequest)
		if !ok {
			return nil, status.Errorf(codes.Internal, "%s: request is %T, want *rawRequest", info.FullMethod, v)
		}
		resp, err := s.export(ctx, transportGRPC, req.buf.ReadOnlyData())
		if err != nil {
			return nil, s.r.grpcStatus(err)
		}
		return resp, nil
	}
	if interceptor == nil {
		return handle(ctx, req)
	}
	return interceptor(ctx, req, info, handle)
}
