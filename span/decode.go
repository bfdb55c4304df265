package span

import (
	"fmt"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// DecodeTraces decodes an encoded TracesData (a Kafka record value) into
// spans. Records written by other producers, an OpenTelemetry Collector
// among them, may carry invalid UTF-8 in string fields, which
// proto.Unmarshal rejects outright; rather than lose the whole record,
// DecodeTraces replaces the bad strings with U+FFFD (RepairUTF8TracesData)
// and decodes again.
//
// Records are decoded by hand first (fastdecode.go); proto.Unmarshal handles
// what that path leaves to it. Resources and scopes are shared with the
// records the Decoder decoded before.
func (c *Decoder) DecodeTraces(data []byte) ([]Span, error) {
	return c.decodeTraces(nil, data, false, false, nil)
}

// DecodeTracesLazy is DecodeTraces for a buffer the caller hands over —
// the spans alias data instead of a copy, so it must never change
// afterwards — that checks span attributes but leaves them in each span's
// Wire (see Span.AttrsDeferred). Attributes are half of a span's decode and
// most of its allocations, and the indexer's path to the store reads them
// once, from the wire.
func (c *Decoder) DecodeTracesLazy(data []byte) ([]Span, error) {
	return c.decodeTraces(nil, data, true, true, nil)
}

// DecodeLeased is DecodeTracesLazy for the record in l's buffer (see
// NewLease), appending the spans to dst: they alias the buffer, and the
// spans and their statuses are structs of the lease, until l is released
// (see Lease for when it may be). Decode one record per lease.
func (c *Decoder) DecodeLeased(dst []Span, l *Lease) ([]Span, error) {
	return c.decodeTraces(dst, l.data, true, true, l)
}

// decodeTraces appends the spans of data to dst; l, when not nil, is the
// lease data is the buffer of.
func (c *Decoder) decodeTraces(dst []Span, data []byte, owned, lazy bool, l *Lease) ([]Span, error) {
	if spans, ok := decodeTracesFast(dst, data, c, owned, lazy, l); ok {
		return spans, nil
	}
	var td tracepb.TracesData
	err := proto.Unmarshal(data, &td)
	if err != nil {
		// The protobuf module exposes no sentinel for its UTF-8 error, so try
		// the repair whatever the error was: it reports whether it replaced
		// anything, and only then is a retry worth it.
		fixed, n, rerr := RepairUTF8TracesData(data)
		if rerr != nil || n == 0 {
			return nil, fmt.Errorf("decode traces: %w", err)
		}
		td.Reset()
		if err := proto.Unmarshal(fixed, &td); err != nil {
			return nil, fmt.Errorf("decode traces after UTF-8 repair: %w", err)
		}
	}
	return append(dst, FromTracesData(&td)...), nil
}
