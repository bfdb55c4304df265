package receiver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// errorKind is a refusal as both transports express it.
type errorKind struct {
	code      codes.Code
	http      int
	retryable bool // attach RetryInfo / Retry-After
}

var (
	errMalformed   = errorKind{codes.InvalidArgument, http.StatusBadRequest, false}
	errTooLarge    = errorKind{codes.ResourceExhausted, http.StatusRequestEntityTooLarge, false}
	errMediaType   = errorKind{codes.InvalidArgument, http.StatusUnsupportedMediaType, false}
	errOverloaded  = errorKind{codes.ResourceExhausted, http.StatusTooManyRequests, true}
	errUnavailable = errorKind{codes.Unavailable, http.StatusServiceUnavailable, true}
)

// exportError is a refused export: what to tell the client, and the cause for
// logs and metrics.
type exportError struct {
	kind   errorKind
	msg    string // client-facing message
	reason string // spans_refused_total reason, "" when spans were not counted
	err    error  // cause, may be nil
	ctxErr error  // set when the client cancelled or its deadline passed
}

func newExportError(kind errorKind, msg string, cause error) *exportError {
	return &exportError{kind: kind, msg: msg, err: cause}
}

func (e *exportError) Error() string { return e.msg }
func (e *exportError) Unwrap() error { return e.err }

// classifyPublishError maps a TracePublisher error to the client's answer. A
// done request context wins over the error itself: the publisher most likely
// returned because of it, and the client is gone or has given up.
func classifyPublishError(ctx context.Context, err error) *exportError {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return &exportError{kind: errUnavailable, msg: "request cancelled before Kafka acknowledged it", reason: reasonCanceled, err: err, ctxErr: ctxErr}
	}
	if errors.Is(err, ErrBackpressure) {
		return &exportError{kind: errOverloaded, msg: "collector is overloaded (Kafka producer buffer full); retry later", reason: reasonBackpressure, err: err}
	}
	return &exportError{kind: errUnavailable, msg: fmt.Sprintf("Kafka did not acknowledge the spans; retry later: %v", err), reason: reasonUnavailable, err: err}
}

// grpcStatus turns an export error into the status the client receives.
func (r *Receiver) grpcStatus(err error) error {
	var ee *exportError
	if !errors.As(err, &ee) {
		if _, ok := status.FromError(err); ok {
			return err // already a status (from gRPC's own decoding)
		}
		return status.Error(codes.Internal, err.Error())
	}
	if ee.ctxErr != nil {
		return status.FromContextError(ee.ctxErr).Err()
	}
	st := status.New(ee.kind.code, ee.msg)
	if ee.kind.retryable {
		// OTLP: RESOURCE_EXHAUSTED is retryable only with RetryInfo, and
		// RetryInfo is how a server throttles UNAVAILABLE retries too.
		if withInfo, derr := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(r.cfg.RetryAfter)}); derr == nil {
			st = withInfo
		}
	}
	return st.Err()
}

// retryAfterSeconds is the Retry-After header value: whole seconds, rounded
// up so a client never retries earlier than asked, and at least 1.
func retryAfterSeconds(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(s, 1), 10)
}
