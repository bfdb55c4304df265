package sampling

import (
	"bytes"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/threadline/threadline/span"
)

// exceptionEvent is the OpenTelemetry semantic-convention name of the event
// recorded for an exception; instrumentations that record one often leave the
// span status unset, so it counts as an error too.
const exceptionEvent = "exception"

// Info extracts what the tail sampler needs from an assembled trace.
//
// The root is a span with no parent or whose parent is not in the trace (a
// parent still in flight, or dropped upstream); of several, the earliest start
// wins, then the smaller span ID, so the choice never depends on arrival
// order. Duration and End are the root's; when there is no root (a parent
// cycle) or the root ends before it starts, Duration is the trace's extent,
// first start to last end, and End the last end.
func Info(t *span.Trace) TraceInfo {
	info := TraceInfo{ID: t.ID}
	ids := make(map[string]struct{}, len(t.Spans))
	for _, s := range t.Spans {
		ids[string(s.GetSpanId())] = struct{}{}
	}
	var root *span.Span
	var first, last uint64
	for i := range t.Spans {
		s := &t.Spans[i]
		if !info.Error && isError(s.Span) {
			info.Error = true
		}
		start, end := s.GetStartTimeUnixNano(), s.GetEndTimeUnixNano()
		if first == 0 || (start != 0 && start < first) {
			first = start
		}
		if end > last {
			last = end
		}
		if s.HasParent() {
			if _, ok := ids[string(s.GetParentSpanId())]; ok {
				continue
			}
		}
		if root == nil || start < root.GetStartTimeUnixNano() ||
			(start == root.GetStartTimeUnixNano() && bytes.Compare(s.GetSpanId(), root.GetSpanId()) < 0) {
			root = s
		}
	}
	if root != nil {
		info.RootService, info.RootOperation = root.ServiceName(), root.GetName()
		info.Orphan = root.HasParent()
		if start, end := root.GetStartTimeUnixNano(), root.GetEndTimeUnixNano(); end >= start {
			info.End = unixNano(end)
			info.Duration = time.Duration(end - start)
			return info
		}
	} else if len(t.Spans) > 0 {
		// No root: name the trace after its earliest span.
		e := &t.Spans[0]
		for i := range t.Spans {
			s := &t.Spans[i]
			if s.GetStartTimeUnixNano() < e.GetStartTimeUnixNano() ||
				(s.GetStartTimeUnixNano() == e.GetStartTimeUnixNano() && bytes.Compare(s.GetSpanId(), e.GetSpanId()) < 0) {
				e = s
			}
		}
		info.RootService, info.RootOperation = e.ServiceName(), e.GetName()
	}
	info.End = unixNano(max(first, last))
	if last > first {
		info.Duration = time.Duration(last - first)
	}
	return info
}

func isError(s *tracepb.Span) bool {
	if s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR {
		return true
	}
	for _, ev := range s.GetEvents() {
		if ev.GetName() == exceptionEvent {
			return true
		}
	}
	return false
}

// unixNano converts OTLP nanoseconds; values past int64 (year 2262) saturate.
func unixNano(ns uint64) time.Time {
	if ns > 1<<63-1 {
		ns = 1<<63 - 1
	}
	return time.Unix(0, int64(ns))
}
