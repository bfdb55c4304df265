package indexer

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/index"
	"github.com/threadline/threadline/sampling"
	"github.com/threadline/threadline/span"
)

// feedKeyed hands one record per trace to the indexer, keyed by its trace
// ID as the collector (and an OTel Collector) keys them.
func (h *harness) feedKeyed(ids []span.TraceID, traces ...*tracepb.TracesData) {
	recs := make([]*kgo.Record, len(traces))
	tickets := make([]*bus.Ticket, len(traces))
	for i, td := range traces {
		b, _ := proto.Marshal(td)
		recs[i] = &kgo.Record{Topic: "otlp_spans", Key: ids[i].AppendHex(nil), Offset: h.offset, Value: b, Timestamp: time.Now()}
		h.offset++
		tickets[i] = h.ledger.Begin(recs[i])
	}
	h.ix.HandleRecords(context.Background(), recs, tickets)
}

// waitStored waits until trace id reads back from the store.
func (h *harness) waitStored(t *testing.T, id span.TraceID, msg string) {
	t.Helper()
	require.Eventually(t, func() bool {
		_, found, err := h.store.Trace(context.Background(), id)
		return err == nil && found
	}, 10*time.Second, 10*time.Millisecond, msg)
}

func keepAll() sampling.Config {
	scfg := sampling.DefaultConfig()
	scfg.Baseline = 1
	return scfg
}

// TestSpanWithInvalidIDSkipped: a record from a producer other than our
// collector, which refuses them, holds spans without a span ID or with an
// all-zero one. They are skipped and counted, the rest of the trace is
// kept, and the indexer goes on writing: the store refuses such a span, and
// the write used to be retried for ever, stalling every write behind it
// (and again after each restart, which replays the record).
func TestSpanWithInvalidIDSkipped(t *testing.T) {
	h := newHarness(t, testConfig(), keepAll())
	bad, next := traceID(1), traceID(2)
	td := traceSpec{id: bad, service: "api", op: "GET /", start: time.Now(), duration: time.Millisecond, spans: 3}.build()
	spans := td.ResourceSpans[0].ScopeSpans[0].Spans
	spans[1].SpanId = nil
	spans[2].SpanId = make([]byte, 8)
	h.feedKeyed([]span.TraceID{bad}, td)
	h.feedKeyed([]span.TraceID{next}, traceSpec{id: next, service: "api", op: "GET /", start: time.Now(), duration: time.Millisecond, spans: 2}.build())

	h.waitStored(t, next, "writes go on")
	got, found, err := h.store.Trace(context.Background(), bad)
	require.NoError(t, err)
	require.True(t, found)
	require.Len(t, got.Spans, 1, "the span with a valid ID")
	require.Equal(t, 2.0, counterValue(t, h.ix.m.badSpans))
	require.Eventually(t, func() bool { return h.ledger.Pending() == 0 }, 10*time.Second, 10*time.Millisecond)
}

// refusingWriter is the store refusing one trace for what it holds, as it
// refuses a trace whose content it cannot encode.
type refusingWriter struct {
	*index.Store
	refuse span.TraceID
}

func (w *refusingWriter) WriteTracesThen(ctx context.Context, traces []index.KeptTrace, durable func()) error {
	for _, kt := range traces {
		if kt.Trace.ID == w.refuse {
			return &index.InvalidTraceError{ID: kt.Trace.ID, Err: errors.New("cannot encode")}
		}
	}
	return w.Store.WriteTracesThen(ctx, traces, durable)
}

// TestUnwritableTraceDropped: a kept trace the store refuses for its
// content is dropped (logged, counted), and the traces written with it in
// one batch are written without it, their records released; retried, the
// write would fail for ever.
func TestUnwritableTraceDropped(t *testing.T) {
	bad, good := traceID(1), traceID(2)
	cfg := testConfig()
	cfg.DecisionWait = 200 * time.Millisecond // both decided in one pass, written in one batch
	h := newHarness(t, cfg, keepAll(), func(st *index.Store, p *Parts) {
		p.Store = &refusingWriter{Store: st, refuse: bad}
	})
	h.feedKeyed([]span.TraceID{bad, good},
		traceSpec{id: bad, service: "api", op: "GET /", start: time.Now(), duration: time.Millisecond, spans: 2}.build(),
		traceSpec{id: good, service: "api", op: "GET /", start: time.Now(), duration: time.Millisecond, spans: 2}.build())

	h.waitStored(t, good, "the rest of the batch is written")
	_, found, err := h.store.Trace(context.Background(), bad)
	require.NoError(t, err)
	require.False(t, found)
	require.Equal(t, 1.0, counterValue(t, h.ix.m.traces.WithLabelValues("unwritable")))
	require.Eventually(t, func() bool { return counterValue(t, h.ix.m.spansWritten) == 2 }, 10*time.Second, 10*time.Millisecond, "only the written trace's spans count as written")
	require.Eventually(t, func() bool { return h.ledger.Pending() == 0 }, 10*time.Second, 10*time.Millisecond, "every record released")
}
