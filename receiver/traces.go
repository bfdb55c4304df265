package receiver

import (
	"context"
	"errors"
	"fmt"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

// TracePublisher produces one Kafka record per trace batch and returns once
// all are acknowledged. A nil error is the only thing that lets the receiver
// tell a client its spans were accepted.
type TracePublisher interface {
	PublishTraces(ctx context.Context, batches []span.TraceBatch) error
}

// ErrBackpressure is what a publisher wraps when it cannot take more records
// right now (the Kafka producer buffer is full). Clients are told to retry
// later: gRPC RESOURCE_EXHAUSTED with RetryInfo, HTTP 429 with Retry-After.
// Any other publisher error means Kafka did not acknowledge: UNAVAILABLE / 503.
var ErrBackpressure = errors.New("publisher back-pressure")

// dataReleaser is implemented by a TracePublisher that, once PublishTraces
// returned nil, holds no reference to the batches' Data (Kafka acknowledged
// and the client dropped every record). The receiver then reuses the buffer
// behind them for a later request instead of allocating ~the request's size
// anew each time. Publishers that keep batches (tests, fan-outs) simply do
// not implement it.
type dataReleaser interface{ ReleasesData() bool }

const traceServiceName = "opentelemetry.proto.collector.trace.v1.TraceService"

// exportTraces validates and splits one encoded ExportTraceServiceRequest,
// publishes the batches and builds the response. It must not keep req after
// it returns (the gRPC path recycles the buffer).
func (r *Receiver) exportTraces(ctx context.Context, transport string, req []byte) (proto.Message, error) {
	sp, _ := r.splitters.Get().(*span.Splitter)
	if sp == nil {
		sp = span.NewSplitter()
	}
	var res *span.SplitResult
	if r.reuseData {
		res, _ = r.results.Get().(*span.SplitResult)
	}
	if res == nil {
		res = new(span.SplitResult)
	}
	err := sp.SplitInto(res, req)
	r.splitters.Put(sp)
	if err != nil {
		if r.reuseData {
			r.results.Put(res)
		}
		// The span count of an undecodable request is unknown; the request
		// is still counted in requests_total.
		return nil, newExportError(errMalformed, fmt.Sprintf("decode ExportTraceServiceRequest: %v", err), err)
	}
	m := r.metrics
	m.spansReceived.WithLabelValues(transport).Add(float64(res.Spans + res.Rejected))
	if res.Rejected > 0 {
		m.spansRefused.WithLabelValues(transport, reasonInvalid).Add(float64(res.Rejected))
	}
	if res.Repaired > 0 {
		m.spansRepaired.WithLabelValues(transport).Add(float64(res.Repaired))
	}

	if len(res.Batches) > 0 {
		if err := r.pub.PublishTraces(ctx, res.Batches); err != nil {
			ee := classifyPublishError(ctx, err)
			m.spansRefused.WithLabelValues(transport, ee.reason).Add(float64(res.Spans))
			r.logPublishError(ee, transport, res.Spans)
			return nil, ee
		}
		m.spansAccepted.WithLabelValues(transport).Add(float64(res.Spans))
	}
	if r.reuseData {
		// Only on success: after a failure (a timeout in particular) the
		// publisher may still hold the records.
		defer r.results.Put(res)
	}

	resp := &coltracepb.ExportTraceServiceResponse{}
	switch {
	case res.Rejected > 0:
		msg := res.RejectReason
		if msg == "" {
			msg = fmt.Sprintf("%d spans rejected", res.Rejected)
		}
		resp.PartialSuccess = &coltracepb.ExportTracePartialSuccess{RejectedSpans: int64(res.Rejected), ErrorMessage: msg}
	case res.Repaired > 0:
		// The spec lets a fully accepted request carry a warning: rejected 0
		// and a non-empty message. Clients should learn their strings were
		// not valid UTF-8 and were changed.
		resp.PartialSuccess = &coltracepb.ExportTracePartialSuccess{
			ErrorMessage: fmt.Sprintf("accepted all spans, but replaced invalid UTF-8 with U+FFFD in %d of them", res.Repaired),
		}
	}
	return resp, nil
}

func (r *Receiver) logPublishError(ee *exportError, transport string, spans int) {
	switch ee.reason {
	case reasonUnavailable:
		r.logger.Warn("otlp export refused: publish to kafka failed", "transport", transport, "spans", spans, "err", ee.err)
	default:
		// Back-pressure and client cancellations are expected under load and
		// are visible in metrics; logging each would flood the log.
		r.logger.Debug("otlp export refused", "reason", ee.reason, "transport", transport, "spans", spans, "err", ee.err)
	}
}
