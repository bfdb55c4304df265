package receiver

import (
	"context"
	"errors"
	"fmt"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

// LogsPublisher produces one Kafka record per log batch (keyed by the batch's
// trace ID, unkeyed when HasTrace is false) and returns once all are
// acknowledged. As for traces, a nil error is the only thing that lets the
// receiver tell a client its log records were accepted; errors wrapping
// ErrBackpressure are answered as retryable overload.
type LogsPublisher interface {
	PublishLogs(ctx context.Context, batches []span.LogBatch) error
}

const logsServiceName = "opentelemetry.proto.collector.logs.v1.LogsService"

// WithLogs enables the OTLP logs receivers (gRPC LogsService/Export and HTTP
// POST /v1/logs), publishing to pub. Without it the collector accepts traces
// only.
func WithLogs(pub LogsPublisher) Option {
	return func(r *Receiver) error {
		if pub == nil {
			return errors.New("nil LogsPublisher")
		}
		r.logsPub = pub
		return nil
	}
}

// exportLogs validates and splits one encoded ExportLogsServiceRequest,
// publishes the batches and builds the response. Like exportTraces it must
// not keep req after it returns.
func (r *Receiver) exportLogs(ctx context.Context, transport string, req []byte) (proto.Message, error) {
	sp, _ := r.logSplitters.Get().(*span.LogSplitter)
	if sp == nil {
		sp = span.NewLogSplitter()
	}
	res, err := sp.Split(req)
	r.logSplitters.Put(sp)
	if err != nil {
		return nil, newExportError(errMalformed, fmt.Sprintf("decode ExportLogsServiceRequest: %v", err), err)
	}
	m := r.metrics
	m.logsReceived.WithLabelValues(transport).Add(float64(res.Records + res.Rejected))
	if res.Rejected > 0 {
		m.logsRefused.WithLabelValues(transport, reasonInvalid).Add(float64(res.Rejected))
	}
	if res.Repaired > 0 {
		m.logsRepaired.WithLabelValues(transport).Add(float64(res.Repaired))
	}

	if len(res.Batches) > 0 {
		if err := r.logsPub.PublishLogs(ctx, res.Batches); err != nil {
			ee := classifyPublishError(ctx, err)
			if ee.reason == reasonUnavailable {
				ee.msg = fmt.Sprintf("Kafka did not acknowledge the log records; retry later: %v", err)
			}
			m.logsRefused.WithLabelValues(transport, ee.reason).Add(float64(res.Records))
			r.logLogsPublishError(ee, transport, res.Records)
			return nil, ee
		}
		m.logsAccepted.WithLabelValues(transport).Add(float64(res.Records))
	}

	resp := &collogspb.ExportLogsServiceResponse{}
	switch {
	case res.Rejected > 0:
		msg := res.RejectReason
		if msg == "" {
			msg = fmt.Sprintf("%d log records rejected", res.Rejected)
		}
		resp.PartialSuccess = &collogspb.ExportLogsPartialSuccess{RejectedLogRecords: int64(res.Rejected), ErrorMessage: msg}
	case res.Repaired > 0:
		// A warning with rejected 0, as for spans.
		resp.PartialSuccess = &collogspb.ExportLogsPartialSuccess{
			ErrorMessage: fmt.Sprintf("accepted all log records, but replaced invalid UTF-8 with U+FFFD in %d of them", res.Repaired),
		}
	}
	return resp, nil
}

func (r *Receiver) logLogsPublishError(ee *exportError, transport string, records int) {
	switch ee.reason {
	case reasonUnavailable:
		r.logger.Warn("otlp logs export refused: publish to kafka failed", "transport", transport, "log_records", records, "err", ee.err)
	default:
		// Back-pressure and cancellations are expected under load; metrics
		// show them.
		r.logger.Debug("otlp logs export refused", "reason", ee.reason, "transport", transport, "log_records", records, "err", ee.err)
	}
}
