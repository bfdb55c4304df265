package logstore

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	otlplogs "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/protobuf/proto"

	logspb "github.com/threadline/threadline/proto/logs/v1"
	"github.com/threadline/threadline/span"
)

// Record is one log line to store, with the resource and scope it was
// reported under.
type Record struct {
	Resource *resourcepb.Resource
	Scope    *commonpb.InstrumentationScope
	Log      *otlplogs.LogRecord
	// SkewOffset is the clock-skew correction of the emitting service
	// instance, applied to the line's time for display (the same offset as
	// its spans); the original time is kept.
	SkewOffset time.Duration
}

// Entry is one stored log line as the read methods return it.
type Entry struct {
	TraceID span.TraceID // zero when the line has no trace
	SpanID  span.SpanID  // zero when the line has no span
	// Time is skew-adjusted; OriginalTime is as emitted.
	Time           time.Time
	OriginalTime   time.Time
	SeverityNumber int32
	SeverityText   string
	Body           string
	Attributes     map[string]any
	Service        string
	Resource       map[string]any
}

// recordTime is the line's time: its own, else when it was observed.
func recordTime(l *otlplogs.LogRecord) uint64 {
	if t := l.GetTimeUnixNano(); t != 0 {
		return t
	}
	return l.GetObservedTimeUnixNano()
}

// prepared is a record ready to write: its identity, time and encodings.
type prepared struct {
	id       string // Bleve document ID (hex of key)
	key      []byte // Badger key, nil for a line without a trace
	trace    span.TraceID
	spanID   span.SpanID
	origNs   uint64
	adjNs    int64
	sev      int32
	service  string
	body     string
	attrs    map[string]string
	value    []byte // encoded logspb.LogEntry
	hasTrace bool
}

// Key layout (Badger, big-endian so byte order is time order within a trace):
//
//	'l' | trace ID (16) | original time ns (8) | span ID (8) | content hash (8)
//	    → logspb.LogEntry (body empty; the OTLP record carries it)
//	'o' | service → override: severity (4) | until ns (8)   (TTL = until)
//
// The content hash is FNV-1a over the deterministic encoding of body and
// attributes, so a Kafka replay rewrites the same key and Bleve document.
const (
	prefixLog      = 'l'
	prefixOverride = 'o'
	logKeyLen      = 1 + 16 + 8 + 8 + 8
)

func prepare(r Record, now time.Time) (prepared, error) {
	l := r.Log
	if l == nil {
		return prepared{}, fmt.Errorf("record without a log line")
	}
	var p prepared
	if len(l.GetTraceId()) > 0 {
		id, err := span.TraceIDFromBytes(l.GetTraceId())
		if err == nil {
			p.trace, p.hasTrace = id, true
		}
	}
	if len(l.GetSpanId()) > 0 {
		if id, err := span.SpanIDFromBytes(l.GetSpanId()); err == nil {
			p.spanID = id
		}
	}
	p.origNs = recordTime(l)
	if p.origNs == 0 {
		// Neither time nor observed time: file it under arrival.
		p.origNs = uint64(now.UnixNano())
	}
	p.adjNs = int64(p.origNs) + int64(r.SkewOffset)
	p.sev = Severity(l)
	p.service = serviceName(r.Resource)
	p.body = span.ValueString(l.GetBody())

	h := fnv.New64a()
	det := proto.MarshalOptions{Deterministic: true}
	buf, err := det.Marshal(l.GetBody())
	if err != nil {
		return prepared{}, fmt.Errorf("encode log body: %w", err)
	}
	h.Write(buf)
	for _, kv := range l.GetAttributes() {
		buf, err = det.MarshalAppend(buf[:0], kv)
		if err != nil {
			return prepared{}, fmt.Errorf("encode log attribute: %w", err)
		}
		h.Write(buf)
	}
	sum := h.Sum64()

	key := make([]byte, logKeyLen)
	key[0] = prefixLog
	copy(key[1:17], p.trace[:])
	binary.BigEndian.PutUint64(key[17:25], p.origNs)
	copy(key[25:33], p.spanID[:])
	binary.BigEndian.PutUint64(key[33:41], sum)
	p.id = hex.EncodeToString(key[1:])
	if p.hasTrace {
		p.key = key
	}

	if len(l.GetAttributes()) > 0 {
		p.attrs = make(map[string]string, len(l.GetAttributes()))
		for _, kv := range l.GetAttributes() {
			p.attrs[kv.GetKey()] = span.ValueString(kv.GetValue())
		}
	}

	stored := &logspb.LogEntry{
		TimeUnixNano:         uint64(p.adjNs),
		OriginalTimeUnixNano: p.origNs,
		SeverityNumber:       p.sev,
		SeverityText:         l.GetSeverityText(),
		ServiceName:          p.service,
	}
	if p.hasTrace {
		stored.TraceId = p.trace[:]
	}
	if !p.spanID.IsZero() {
		stored.SpanId = p.spanID[:]
	}
	if stored.Record, err = proto.Marshal(l); err != nil {
		return prepared{}, fmt.Errorf("encode log record: %w", err)
	}
	if r.Resource != nil {
		if stored.Resource, err = proto.Marshal(r.Resource); err != nil {
			return prepared{}, fmt.Errorf("encode log resource: %w", err)
		}
	}
	if p.value, err = proto.Marshal(stored); err != nil {
		return prepared{}, fmt.Errorf("encode log entry: %w", err)
	}
	return p, nil
}

// EntryFromProto decodes a stored or transmitted LogEntry.
func EntryFromProto(pe *logspb.LogEntry) (Entry, error) {
	e := Entry{
		Time:           time.Unix(0, int64(pe.GetTimeUnixNano())).UTC(),
		OriginalTime:   time.Unix(0, int64(pe.GetOriginalTimeUnixNano())).UTC(),
		SeverityNumber: pe.GetSeverityNumber(),
		SeverityText:   pe.GetSeverityText(),
		Body:           pe.GetBody(),
		Service:        pe.GetServiceName(),
	}
	if len(pe.GetTraceId()) == 16 {
		e.TraceID = span.TraceID(pe.GetTraceId())
	}
	if len(pe.GetSpanId()) == 8 {
		e.SpanID = span.SpanID(pe.GetSpanId())
	}
	if e.SeverityText == "" {
		e.SeverityText = LevelName(e.SeverityNumber)
	}
	if len(pe.GetRecord()) > 0 {
		var l otlplogs.LogRecord
		if err := proto.Unmarshal(pe.GetRecord(), &l); err != nil {
			return Entry{}, fmt.Errorf("decode log record: %w", err)
		}
		if e.Body == "" {
			e.Body = span.ValueString(l.GetBody())
		}
		e.Attributes = attrMap(l.GetAttributes())
	}
	if len(pe.GetResource()) > 0 {
		var r resourcepb.Resource
		if err := proto.Unmarshal(pe.GetResource(), &r); err != nil {
			return Entry{}, fmt.Errorf("decode log resource: %w", err)
		}
		e.Resource = attrMap(r.GetAttributes())
	}
	return e, nil
}

// decodeStoredProto decodes a storage value and fills in the body, for the
// gRPC API.
func decodeStoredProto(b []byte) (*logspb.LogEntry, error) {
	pe := &logspb.LogEntry{}
	if err := proto.Unmarshal(b, pe); err != nil {
		return nil, fmt.Errorf("decode log entry: %w", err)
	}
	if pe.Body == "" && len(pe.Record) > 0 {
		var l otlplogs.LogRecord
		if err := proto.Unmarshal(pe.Record, &l); err != nil {
			return nil, fmt.Errorf("decode log record: %w", err)
		}
		pe.Body = span.ValueString(l.GetBody())
	}
	return pe, nil
}

func serviceName(r *resourcepb.Resource) string {
	for _, kv := range r.GetAttributes() {
		if kv.GetKey() == "service.name" {
			return kv.GetValue().GetStringValue()
		}
	}
	return "unknown_service"
}

func attrMap(kvs []*commonpb.KeyValue) map[string]any {
	if len(kvs) == 0 {
		return nil
	}
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[kv.GetKey()] = anyValue(kv.GetValue())
	}
	return m
}

// anyValue converts an OTLP value to its JSON-friendly Go form. 64-bit
// integers stay int64; bytes become base64 as in OTLP/JSON.
func anyValue(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		return x.DoubleValue
	case *commonpb.AnyValue_BytesValue:
		return base64.StdEncoding.EncodeToString(x.BytesValue)
	case *commonpb.AnyValue_ArrayValue:
		out := make([]any, 0, len(x.ArrayValue.GetValues()))
		for _, e := range x.ArrayValue.GetValues() {
			out = append(out, anyValue(e))
		}
		return out
	case *commonpb.AnyValue_KvlistValue:
		return attrMap(x.KvlistValue.GetValues())
	}
	return nil
}
