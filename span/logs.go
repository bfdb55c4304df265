package span

import (
	"fmt"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Logs travel the same way spans do: the collector splits each export request
// by trace ID and produces one LogsData per trace, keyed like that trace's
// spans, so the indexer that holds a trace also holds its log lines. The
// split reuses the trace Splitter's wire walk; only the schema and the keying
// rule differ. Unlike a span, a log record need not belong to a trace: all
// such records of a request form one batch of their own.

// LogBatch is every accepted log record of one trace from one export request,
// encoded as an OTLP LogsData (the Kafka record value). When HasTrace is
// false the batch holds the request's records without a trace ID, and ID is
// zero: publish it without a key so such records spread over partitions.
type LogBatch struct {
	ID       TraceID
	HasTrace bool
	Records  int
	Data     []byte
}

// LogSplitResult is the outcome of splitting one logs export request.
type LogSplitResult struct {
	// Batches holds one LogsData per trace ID and at most one for records
	// without a trace ID, in order of first appearance in the request.
	Batches []LogBatch
	// Records is the number of log records accepted (the sum of
	// Batches[i].Records).
	Records int
	// Rejected is the number of records dropped for a trace or span ID of
	// the wrong length.
	Rejected int
	// RejectReason describes the first few rejected records, for the
	// partial-success message; "" when none.
	RejectReason string
	// Repaired is the number of accepted records whose own strings, or whose
	// resource's or scope's strings, had invalid UTF-8 replaced by U+FFFD.
	Repaired int
}

var logLayout = layout{
	data: mLogsData, resource: mResourceLogs, scope: mScopeLogs, record: mLogRecord,
	traceField: 9, spanField: 10,
	noun: "log record",
	key:  logKey,
}

// logKey keys a log record by its trace ID. Both IDs are optional in OTLP
// logs: an empty or all-zero trace ID means "no trace" (the zero key), and an
// empty or all-zero span ID means "no span". An ID that is present with the
// wrong length is a broken producer, and the record is rejected as a span
// would be, rather than guessing which trace it meant.
func logKey(traceID, spanID []byte) (TraceID, error) {
	var id TraceID
	switch len(traceID) {
	case 0:
	case len(id):
		copy(id[:], traceID)
	default:
		return TraceID{}, fmt.Errorf("trace ID of %d bytes, want 16 or none: %w", len(traceID), ErrIDLength)
	}
	if n := len(spanID); n != 0 && n != len(SpanID{}) {
		return TraceID{}, fmt.Errorf("span ID of %d bytes, want 8 or none: %w", n, ErrIDLength)
	}
	return id, nil
}

// LogSplitter splits OTLP logs export requests by trace ID the way Splitter
// splits traces, reusing its scratch space between calls. It is not safe for
// concurrent use; the zero LogSplitter is ready to use.
type LogSplitter struct {
	s Splitter
}

// NewLogSplitter returns an empty LogSplitter.
func NewLogSplitter() *LogSplitter { return &LogSplitter{} }

// SplitLogs is LogSplitter.Split with a fresh LogSplitter.
func SplitLogs(req []byte) (LogSplitResult, error) {
	var l LogSplitter
	return l.Split(req)
}

// Split splits req, an encoded ExportLogsServiceRequest (or LogsData), into
// one LogsData per trace ID plus one for the records without a trace ID,
// with every record's resource and scope. Records with an ID of the wrong
// length are counted in Rejected and left out; invalid UTF-8 strings are
// repaired. Structurally malformed input returns an error wrapping
// ErrMalformed and no result. The returned Data slices share one allocation
// and do not alias req.
func (l *LogSplitter) Split(req []byte) (LogSplitResult, error) {
	s := &l.s
	s.Reset()
	defer s.Reset() // drop references to req, whatever the outcome
	if err := s.walk(req, &logLayout); err != nil {
		return LogSplitResult{}, err
	}
	res := LogSplitResult{Batches: make([]LogBatch, 0, len(s.batches))}
	s.build(func(id TraceID, n int, data []byte) {
		res.Batches = append(res.Batches, LogBatch{ID: id, HasTrace: !id.IsZero(), Records: n, Data: data})
		res.Records += n
	})
	res.Rejected, res.RejectReason, res.Repaired = s.rejected, s.rejectReason(), s.repaired()
	return res, nil
}

// RepairUTF8LogsData is RepairUTF8TracesData for an encoded LogsData or
// ExportLogsServiceRequest.
func RepairUTF8LogsData(data []byte) ([]byte, int, error) {
	return repairUTF8(data, mLogsData)
}

// DecodeLogs decodes an encoded LogsData (a Kafka record value). Like
// DecodeTraces it replaces invalid UTF-8 strings, which proto.Unmarshal
// rejects, with U+FFFD and decodes again rather than lose the record.
func DecodeLogs(data []byte) (*logspb.LogsData, error) {
	ld := &logspb.LogsData{}
	err := proto.Unmarshal(data, ld)
	if err == nil {
		return ld, nil
	}
	fixed, n, rerr := RepairUTF8LogsData(data)
	if rerr != nil || n == 0 {
		return nil, fmt.Errorf("decode logs: %w", err)
	}
	ld.Reset()
	if err := proto.Unmarshal(fixed, ld); err != nil {
		return nil, fmt.Errorf("decode logs after UTF-8 repair: %w", err)
	}
	return ld, nil
}

// LogsJSONToProto converts an OTLP/JSON ExportLogsServiceRequest (the body of
// POST /v1/logs with Content-Type application/json; trace and span IDs in
// hex) to its protobuf encoding. Unknown fields are ignored as the OTLP spec
// requires.
func LogsJSONToProto(body []byte) ([]byte, error) {
	var req collogspb.ExportLogsServiceRequest
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &req); err != nil {
		return nil, fmt.Errorf("decode OTLP/JSON logs: %w", err)
	}
	if err := FixJSONIDs(&req); err != nil {
		return nil, fmt.Errorf("decode OTLP/JSON logs: %w", err)
	}
	out, err := proto.Marshal(&req)
	if err != nil {
		return nil, fmt.Errorf("encode logs: %w", err)
	}
	return out, nil
}
