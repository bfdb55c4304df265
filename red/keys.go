package red

// Key layout. Every key starts with one prefix byte; times are big-endian
// unsigned nanoseconds since the epoch so byte order is time order and one
// bucket's rows are one contiguous range.
//
//	'b' bucket(8) series            → row: count, errors, sum ns, histogram (uvarints)
//	'l' bucket(8) series traceID(16) → link: flags(1: bit0 error) duration ns (uvarint)
//	'p' uvarint len, topic, partition(4) → Kafka records counted there (countedSet)
//	'm' "width"                     → bucket width ns (8)
//
// series = uvarint len, service, uvarint len, operation, kind(1), status(1).
// Rows and links expire Retention after their last write; 'p' keys expire
// ReplayWindow after their last write. Earlier versions kept, per trace, the
// span IDs counted under 'd' traceID(16), with the same TTL; nothing reads
// them now and they expire.

import (
	"encoding/binary"
	"errors"
	"fmt"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/threadline/threadline/span"
)

const (
	prefixRow     = 'b'
	prefixLink    = 'l'
	prefixCounted = 'p'
	prefixMeta    = 'm'
)

var metaWidthKey = []byte{prefixMeta, 'w', 'i', 'd', 't', 'h'}

// errCorrupt reports a stored key or value that does not decode.
var errCorrupt = errors.New("corrupt RED record")

// Series identifies one RED time series.
type Series struct {
	// Service is the resource attribute service.name ("" when unset).
	Service string
	// Operation is the span name.
	Operation string
	// Kind is the OTLP span kind.
	Kind tracepb.Span_SpanKind
	// Status is the OTLP span status code.
	Status tracepb.Status_StatusCode
}

// OtherOperation names the series that collects spans over the cardinality limit.
const OtherOperation = "__other__"

// KindName is the span kind as the read API spells it: server, client,
// producer, consumer, internal or unspecified.
func (s Series) KindName() string {
	switch s.Kind {
	case tracepb.Span_SPAN_KIND_SERVER:
		return "server"
	case tracepb.Span_SPAN_KIND_CLIENT:
		return "client"
	case tracepb.Span_SPAN_KIND_PRODUCER:
		return "producer"
	case tracepb.Span_SPAN_KIND_CONSUMER:
		return "consumer"
	case tracepb.Span_SPAN_KIND_INTERNAL:
		return "internal"
	}
	return "unspecified"
}

// StatusName is the status code as the read API spells it: unset, ok or error.
func (s Series) StatusName() string {
	switch s.Status {
	case tracepb.Status_STATUS_CODE_OK:
		return "ok"
	case tracepb.Status_STATUS_CODE_ERROR:
		return "error"
	}
	return "unset"
}

func (s Series) overflow() Series {
	s.Operation = OtherOperation
	return s
}

func appendSeries(dst []byte, s Series) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s.Service)))
	dst = append(dst, s.Service...)
	dst = binary.AppendUvarint(dst, uint64(len(s.Operation)))
	dst = append(dst, s.Operation...)
	return append(dst, byte(s.Kind), byte(s.Status))
}

// decodeSeries decodes a series from the front of b, returning the rest.
func decodeSeries(b []byte) (Series, []byte, error) {
	str := func() (string, error) {
		n, k := binary.Uvarint(b)
		// Lengths are written in the fewest bytes: a key is one series.
		if k <= 0 || uint64(len(b)-k) < n || k != protowire.SizeVarint(n) {
			return "", errCorrupt
		}
		s := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return s, nil
	}
	var s Series
	var err error
	if s.Service, err = str(); err != nil {
		return s, nil, err
	}
	if s.Operation, err = str(); err != nil {
		return s, nil, err
	}
	if len(b) < 2 {
		return s, nil, errCorrupt
	}
	s.Kind, s.Status = tracepb.Span_SpanKind(b[0]), tracepb.Status_StatusCode(b[1])
	return s, b[2:], nil
}

func appendTime(dst []byte, ns int64) []byte {
	return binary.BigEndian.AppendUint64(dst, uint64(max(ns, 0)))
}

func rowKey(bucket int64, s Series) []byte {
	k := make([]byte, 0, 1+8+len(s.Service)+len(s.Operation)+6)
	k = append(k, prefixRow)
	k = appendTime(k, bucket)
	return appendSeries(k, s)
}

func linkKey(bucket int64, s Series, id span.TraceID) []byte {
	k := make([]byte, 0, 1+8+len(s.Service)+len(s.Operation)+6+16)
	k = append(k, prefixLink)
	k = appendTime(k, bucket)
	k = appendSeries(k, s)
	return append(k, id[:]...)
}

func countedKey(tp topicPartition) []byte {
	k := binary.AppendUvarint([]byte{prefixCounted}, uint64(len(tp.topic)))
	k = append(k, tp.topic...)
	return binary.BigEndian.AppendUint32(k, uint32(tp.partition))
}

// decodeRowKey splits a 'b' or 'l' key into bucket time, series and the
// rest (the trace ID of a link key).
func decodeRowKey(k []byte) (int64, Series, []byte, error) {
	if len(k) < 9 {
		return 0, Series{}, nil, fmt.Errorf("key of %d bytes: %w", len(k), errCorrupt)
	}
	t := int64(binary.BigEndian.Uint64(k[1:9]))
	if t < 0 {
		// appendTime never writes one: times before 1970 are written as 0.
		return 0, Series{}, nil, fmt.Errorf("key time %#x out of range: %w", k[1:9], errCorrupt)
	}
	s, rest, err := decodeSeries(k[9:])
	if err != nil {
		return 0, Series{}, nil, fmt.Errorf("series in key: %w", err)
	}
	return t, s, rest, nil
}

// agg is one series' counts in one bucket.
type agg struct {
	count, errors uint64
	sum           uint64 // nanoseconds
	hist          [NumBuckets]uint64
}

func (a *agg) add(o *agg) {
	a.count += o.count
	a.errors += o.errors
	a.sum += o.sum
	for i := range a.hist {
		a.hist[i] += o.hist[i]
	}
}

func (a *agg) appendTo(dst []byte) []byte {
	dst = binary.AppendUvarint(dst, a.count)
	dst = binary.AppendUvarint(dst, a.errors)
	dst = binary.AppendUvarint(dst, a.sum)
	dst = binary.AppendUvarint(dst, NumBuckets)
	for _, c := range a.hist {
		dst = binary.AppendUvarint(dst, c)
	}
	return dst
}

func decodeAgg(b []byte, a *agg) error {
	next := func() (uint64, error) {
		v, k := binary.Uvarint(b)
		if k <= 0 || k != protowire.SizeVarint(v) { // written in the fewest bytes
			return 0, errCorrupt
		}
		b = b[k:]
		return v, nil
	}
	var err error
	if a.count, err = next(); err != nil {
		return err
	}
	if a.errors, err = next(); err != nil {
		return err
	}
	if a.sum, err = next(); err != nil {
		return err
	}
	n, err := next()
	if err != nil {
		return err
	}
	if n != NumBuckets {
		return fmt.Errorf("row with %d histogram buckets, want %d: %w", n, NumBuckets, errCorrupt)
	}
	for i := range a.hist {
		if a.hist[i], err = next(); err != nil {
			return err
		}
	}
	if len(b) != 0 {
		return fmt.Errorf("row with %d trailing bytes: %w", len(b), errCorrupt)
	}
	return nil
}

// linkRef is one kept trace linked to a bucket and series.
type linkRef struct {
	id  span.TraceID
	err bool
	dur int64
}

// better orders links as queries return them: errors first, then slowest,
// then by trace ID so the order is total.
func (a linkRef) better(b linkRef) bool {
	if a.err != b.err {
		return a.err
	}
	if a.dur != b.dur {
		return a.dur > b.dur
	}
	return string(a.id[:]) < string(b.id[:])
}

func (a linkRef) value() []byte {
	var flags byte
	if a.err {
		flags = 1
	}
	return binary.AppendUvarint([]byte{flags}, uint64(max(a.dur, 0)))
}

func decodeLink(id []byte, v []byte) (linkRef, error) {
	if len(id) != 16 || len(v) < 2 {
		return linkRef{}, errCorrupt
	}
	d, k := binary.Uvarint(v[1:])
	if k <= 0 || k != len(v)-1 {
		return linkRef{}, errCorrupt
	}
	return linkRef{id: span.TraceID(id), err: v[0]&1 != 0, dur: int64(d)}, nil
}
