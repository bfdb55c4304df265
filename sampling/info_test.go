package sampling

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/threadline/threadline/span"
)

func resource(service string) *span.Resource {
	return &span.Resource{Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{
		Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: service}},
	}}}}
}

// sp builds a span: id and parent are one-byte span IDs (parent 0: none),
// start and end are milliseconds after t0.
func sp(id, parent byte, service, name string, start, end int, mods ...func(*tracepb.Span)) span.Span {
	s := &tracepb.Span{
		SpanId:            []byte{0, 0, 0, 0, 0, 0, 0, id},
		Name:              name,
		StartTimeUnixNano: uint64(t0.Add(time.Duration(start) * time.Millisecond).UnixNano()),
		EndTimeUnixNano:   uint64(t0.Add(time.Duration(end) * time.Millisecond).UnixNano()),
	}
	if parent != 0 {
		s.ParentSpanId = []byte{0, 0, 0, 0, 0, 0, 0, parent}
	}
	for _, m := range mods {
		m(s)
	}
	return span.Span{Span: s, Resource: resource(service)}
}

func withStatus(c tracepb.Status_StatusCode) func(*tracepb.Span) {
	return func(s *tracepb.Span) { s.Status = &tracepb.Status{Code: c} }
}

func withEvent(name string) func(*tracepb.Span) {
	return func(s *tracepb.Span) { s.Events = append(s.Events, &tracepb.Span_Event{Name: name}) }
}

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestInfo(t *testing.T) {
	cases := []struct {
		name  string
		spans []span.Span
		want  TraceInfo // ID is filled in
	}{
		{
			name: "one root",
			spans: []span.Span{
				sp(2, 1, "db", "SELECT", 10, 20),
				sp(1, 0, "web", "GET /", 0, 100),
			},
			want: TraceInfo{RootService: "web", RootOperation: "GET /", End: t0.Add(ms(100)), Duration: ms(100)},
		},
		{
			name: "parent missing from the trace makes a root",
			spans: []span.Span{
				sp(3, 9, "api", "handle", 5, 50),
				sp(4, 3, "db", "SELECT", 10, 60),
			},
			want: TraceInfo{RootService: "api", RootOperation: "handle", End: t0.Add(ms(5)).Add(ms(45)), Duration: ms(45), Orphan: true},
		},
		{
			name: "several roots: the earliest",
			spans: []span.Span{
				sp(1, 0, "late", "b", 30, 40),
				sp(2, 0, "early", "a", 10, 15),
				sp(3, 8, "orphan", "c", 20, 90),
			},
			want: TraceInfo{RootService: "early", RootOperation: "a", End: t0.Add(ms(10)).Add(ms(5)), Duration: ms(5)},
		},
		{
			name: "several roots at one instant: the smaller span ID",
			spans: []span.Span{
				sp(7, 0, "seven", "x", 10, 20),
				sp(5, 0, "five", "y", 10, 30),
			},
			want: TraceInfo{RootService: "five", RootOperation: "y", End: t0.Add(ms(10)).Add(ms(20)), Duration: ms(20)},
		},
		{
			name: "all-zero parent ID is no parent",
			spans: []span.Span{
				sp(1, 0, "web", "GET /", 0, 10, func(s *tracepb.Span) { s.ParentSpanId = make([]byte, 8) }),
				sp(2, 1, "db", "q", 1, 2),
			},
			want: TraceInfo{RootService: "web", RootOperation: "GET /", End: t0.Add(ms(10)), Duration: ms(10)},
		},
		{
			name: "exception event is an error",
			spans: []span.Span{
				sp(1, 0, "web", "GET /", 0, 10),
				sp(2, 1, "db", "q", 1, 2, withEvent("log"), withEvent("exception")),
			},
			want: TraceInfo{RootService: "web", RootOperation: "GET /", End: t0.Add(ms(10)), Duration: ms(10), Error: true},
		},
		{
			name: "status ERROR on a child is an error",
			spans: []span.Span{
				sp(1, 0, "web", "GET /", 0, 10, withStatus(tracepb.Status_STATUS_CODE_OK)),
				sp(2, 1, "db", "q", 1, 2, withStatus(tracepb.Status_STATUS_CODE_ERROR)),
			},
			want: TraceInfo{RootService: "web", RootOperation: "GET /", End: t0.Add(ms(10)), Duration: ms(10), Error: true},
		},
		{
			name: "status UNSET and other events are not errors",
			spans: []span.Span{
				sp(1, 0, "web", "GET /", 0, 10, withStatus(tracepb.Status_STATUS_CODE_UNSET), withEvent("retry")),
			},
			want: TraceInfo{RootService: "web", RootOperation: "GET /", End: t0.Add(ms(10)), Duration: ms(10)},
		},
		{
			name: "parent cycle: no root, extent and earliest span",
			spans: []span.Span{
				sp(1, 2, "a", "one", 10, 20),
				sp(2, 1, "b", "two", 5, 40),
			},
			want: TraceInfo{RootService: "b", RootOperation: "two", End: t0.Add(ms(5)).Add(ms(35)), Duration: ms(35)},
		},
		{
			name: "root ending before it starts: the extent",
			spans: []span.Span{
				sp(1, 0, "web", "GET /", 50, 10),
				sp(2, 1, "db", "q", 20, 80),
			},
			want: TraceInfo{RootService: "web", RootOperation: "GET /", End: t0.Add(ms(20)).Add(ms(60)), Duration: ms(60)},
		},
		{
			name: "empty trace",
			want: TraceInfo{End: time.Unix(0, 0)},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := idN(42)
			got := Info(&span.Trace{ID: id, Spans: tc.spans})
			tc.want.ID = id
			require.True(t, tc.want.End.Equal(got.End), "end %s, want %s", got.End, tc.want.End)
			got.End = tc.want.End
			require.Equal(t, tc.want, got)
		})
	}
}

// TestInfoFeedsSampler runs assembled traces end to end: the error one is kept
// at once, the slowest healthy one at window close.
func TestInfoFeedsSampler(t *testing.T) {
	cfg := DefaultConfig()
	cfg.TopN = 1
	s, _ := newSampler(t, cfg)
	traces := []*span.Trace{
		{ID: idN(1), Spans: []span.Span{sp(1, 0, "web", "GET /", 0, 100), sp(2, 1, "db", "q", 1, 2, withEvent("exception"))}},
		{ID: idN(2), Spans: []span.Span{sp(1, 0, "web", "GET /", 0, 300)}},
		{ID: idN(3), Spans: []span.Span{sp(1, 0, "web", "GET /", 0, 200)}},
	}
	var got []Decision
	for _, tr := range traces {
		got = append(got, s.Offer(Info(tr))...)
	}
	got = append(got, s.Advance(t0.Add(time.Minute))...)
	require.Equal(t, []Decision{
		{ID: idN(1), Reasons: []string{ReasonError}},
		{ID: idN(3)},
		{ID: idN(2), Reasons: []string{ReasonLatencyTopN}},
	}, got)
}
