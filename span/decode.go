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
	return c.decodeTraces(data, false, false)
}

// DecodeTracesLazy is DecodeTraces for a buffer the caller hands over —
// the spans alias data instead of a copy, so it must never change
// afterwards — that checks span attributes but leaves them in each span's
// Wire (see Span.AttrsDeferred). Attributes are half of a span's decode and
// most of its allocations, and the indexer's path to the store reads them
// once, from the wire.
func (c *Decoder) DecodeTracesLazy(data []byte) ([]Span, error) {
	return c.decodeTraces(data, true, true)
}

func (c *Decoder) decodeTraces(data []byte, owned, lazy bool) ([]Span, error) {
	if spans, ok := decodeTracesFast(data, c, owned, lazy); ok {
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
	return FromTracesData(&td), nil
}
