// Package span is Threadline's span model and its OTLP wire conversion.
//
// A Span is an OTLP span together with the resource and instrumentation scope it
// was reported under; a Trace is every span Threadline holds for one trace ID.
// The package is pure (no I/O, no globals) so every stage — the collector's
// split by trace ID, the indexer's assembly, the stores and the query API —
// shares one model. Encoders are append-style and decoders return errors
// instead of panicking; the decoders are fuzzed.
package span

import (
	"encoding/hex"
	"errors"
	"fmt"
)

// TraceID is a 16-byte W3C/OTLP trace ID.
type TraceID [16]byte

// SpanID is an 8-byte OTLP span ID.
type SpanID [8]byte

var (
	// ErrZeroID reports an all-zero trace or span ID, which OTLP forbids.
	ErrZeroID = errors.New("all-zero ID")
	// ErrIDLength reports a trace or span ID of the wrong byte length.
	ErrIDLength = errors.New("wrong ID length")
)

// TraceIDFromBytes validates an OTLP trace_id field: 16 bytes, not all zero.
func TraceIDFromBytes(b []byte) (TraceID, error) {
	var id TraceID
	if len(b) != len(id) {
		return id, fmt.Errorf("trace ID of %d bytes, want 16: %w", len(b), ErrIDLength)
	}
	copy(id[:], b)
	if id.IsZero() {
		return id, fmt.Errorf("trace ID: %w", ErrZeroID)
	}
	return id, nil
}

// SpanIDFromBytes validates an OTLP span_id field: 8 bytes, not all zero.
func SpanIDFromBytes(b []byte) (SpanID, error) {
	var id SpanID
	if len(b) != len(id) {
		return id, fmt.Errorf("span ID of %d bytes, want 8: %w", len(b), ErrIDLength)
	}
	copy(id[:], b)
	if id.IsZero() {
		return id, fmt.Errorf("span ID: %w", ErrZeroID)
	}
	return id, nil
}

// ParseTraceID parses a hex trace ID as Tempo and Jaeger accept it: 1 to 32 hex
// digits of either case, left-padded with zeros (Jaeger and Zipkin clients emit
// 64-bit IDs as 16 digits). The result must not be all zero.
func ParseTraceID(s string) (TraceID, error) {
	var id TraceID
	if len(s) == 0 || len(s) > 32 {
		return id, fmt.Errorf("trace ID %q: want 1 to 32 hex digits", truncate(s))
	}
	var padded [32]byte
	for i := range padded {
		padded[i] = '0'
	}
	copy(padded[32-len(s):], s)
	if _, err := hex.Decode(id[:], padded[:]); err != nil {
		return TraceID{}, fmt.Errorf("trace ID %q: not hex", truncate(s))
	}
	if id.IsZero() {
		return id, fmt.Errorf("trace ID %q: %w", s, ErrZeroID)
	}
	return id, nil
}

// ParseSpanID parses a 16-digit hex span ID of either case.
func ParseSpanID(s string) (SpanID, error) {
	var id SpanID
	if len(s) != 16 {
		return id, fmt.Errorf("span ID %q: want 16 hex digits", truncate(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return SpanID{}, fmt.Errorf("span ID %q: not hex", truncate(s))
	}
	if id.IsZero() {
		return id, fmt.Errorf("span ID %q: %w", s, ErrZeroID)
	}
	return id, nil
}

// IsZero reports whether every byte of the ID is zero.
func (id TraceID) IsZero() bool { return id == TraceID{} }

// IsZero reports whether every byte of the ID is zero.
func (id SpanID) IsZero() bool { return id == SpanID{} }

// String is the 32-digit lowercase hex form, the Kafka record key and the form
// every API returns.
func (id TraceID) String() string { return hex.EncodeToString(id[:]) }

// String is the 16-digit lowercase hex form.
func (id SpanID) String() string { return hex.EncodeToString(id[:]) }

// AppendHex appends the 32-digit lowercase hex form to dst.
func (id TraceID) AppendHex(dst []byte) []byte { return hex.AppendEncode(dst, id[:]) }

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
