package indexer

import (
	"context"
	"encoding/binary"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/index"
	"github.com/threadline/threadline/sampling"
	"github.com/threadline/threadline/span"
)

// rescueSpan is one span of the rescue tests: parent 0 means none.
type rescueSpan struct {
	id, parent  uint64
	service, op string
	start, end  time.Time
}

// produceSpans sends spans of trace id as one record, the way an SDK's
// export reaches the collector: each span once it has ended.
func (h *exHarness) produceSpans(t *testing.T, id span.TraceID, spans ...rescueSpan) {
	t.Helper()
	b, err := proto.Marshal(tracesData(id, spans...))
	require.NoError(t, err)
	h.produce(t, &kgo.Record{Topic: h.topics.TracesTopic, Key: id.AppendHex(nil), Value: b})
}

// tracesData is spans of trace id, each under its service's resource.
func tracesData(id span.TraceID, spans ...rescueSpan) *tracepb.TracesData {
	td := &tracepb.TracesData{}
	for _, s := range spans {
		sid := binary.BigEndian.AppendUint64(nil, s.id)
		var parent []byte
		if s.parent != 0 {
			parent = binary.BigEndian.AppendUint64(nil, s.parent)
		}
		td.ResourceSpans = append(td.ResourceSpans, &tracepb.ResourceSpans{
			Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: s.service}}}}},
			ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{TraceId: id[:], SpanId: sid, ParentSpanId: parent, Name: s.op,
				StartTimeUnixNano: uint64(s.start.UnixNano()), EndTimeUnixNano: uint64(s.end.UnixNano())}}}},
		})
	}
	return td
}

// dropOrphanSelect sends two traces' database calls, without their roots,
// in window w: other's (40 ms) first, then slow's (5 ms), which is dropped,
// outranked by other's for the top 1 of SELECT.
func (h *exHarness) dropOrphanSelect(t *testing.T, w time.Time) (slow, other span.TraceID) {
	t.Helper()
	slow, other = traceID(1), traceID(2)
	h.produceSpans(t, other, rescueSpan{id: 7, parent: 6, service: "checkout", op: "SELECT", start: w.Add(time.Second), end: w.Add(time.Second + 40*time.Millisecond)})
	h.produceSpans(t, slow, rescueSpan{id: 2, parent: 1, service: "checkout", op: "SELECT", start: w.Add(2 * time.Second), end: w.Add(2*time.Second + 5*time.Millisecond)})
	require.Eventually(t, func() bool {
		h.ix.mu.Lock()
		defer h.ix.mu.Unlock()
		d, ok := h.ix.decisions.get(slow)
		return ok && d == nil
	}, 10*time.Second, 5*time.Millisecond, "the partial trace is dropped: outranked by the other orphan SELECT")
	return slow, other
}

// TestLateRootRescuesDroppedTrace: an 8-second request whose quick database
// call was exported (and the trace decided, without its root) long before
// the request ended. Ranked by that call, the trace is dropped: a faster
// trace's orphan call of the same name outranks it (top 1). When the root
// and the slow bank call arrive, the trace is reopened, ranked by its root
// (the slowest POST /pay of its window), kept, and the spans dropped before
// (the database call, and a cache read that came late to the dropped trace)
// are fetched again from Kafka and stored with it. No alert rules are
// configured: a trace dropped without its root is remembered regardless.
func TestLateRootRescuesDroppedTrace(t *testing.T) {
	cfg := testConfig()
	scfg := sampling.DefaultConfig()
	scfg.TopN = 1
	h := newKafkaHarness(t, cfg, scfg, nil)

	// A window well behind the watermark's idle advance: it closes once
	// the traffic stops.
	w := time.Now().Add(-3 * time.Minute).Truncate(time.Minute)
	slow, other := h.dropOrphanSelect(t, w)
	// Another child, still before the root: a late span of a dropped trace.
	h.produceSpans(t, slow, rescueSpan{id: 4, parent: 1, service: "checkout", op: "GET cart", start: w.Add(3 * time.Second), end: w.Add(3*time.Second + time.Millisecond)})

	h.produceSpans(t, slow,
		rescueSpan{id: 1, service: "checkout", op: "POST /pay", start: w.Add(2 * time.Second), end: w.Add(10 * time.Second)},
		rescueSpan{id: 3, parent: 1, service: "bank", op: "authorize", start: w.Add(2*time.Second + 10*time.Millisecond), end: w.Add(9 * time.Second)})
	require.Eventually(t, func() bool {
		return counterValue(t, h.ix.m.lateRoots.WithLabelValues(lateRootRefetched)) == 1
	}, 20*time.Second, 10*time.Millisecond, "the spans dropped before are written with the rescued trace")
	h.waitSettled(t)

	got, found, err := h.store.Trace(context.Background(), slow)
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, []string{sampling.ReasonLatencyTopN}, got.Reasons)
	names := map[string]bool{}
	for _, s := range got.Spans {
		names[s.GetName()] = true
	}
	require.Equal(t, map[string]bool{"POST /pay": true, "SELECT": true, "GET cart": true, "authorize": true}, names, "every span of the trace")
	require.Equal(t, []string{sampling.ReasonLatencyTopN}, h.reasons(t, other), "the other orphan stays kept: top 1 of its key")
	require.Equal(t, 1.0, counterValue(t, h.ix.m.lateRoots.WithLabelValues(lateRootReopened)))
	require.Equal(t, 1.0, counterValue(t, h.ix.m.lateRoots.WithLabelValues(lateRootKept)))
	require.Zero(t, counterValue(t, h.ix.m.lateRoots.WithLabelValues(lateRootRefetchFailed)))
}

// TestLateRootRescuedAtShutdown: a dropped trace whose root arrives just
// before a graceful shutdown is decided by the shutdown's flush, and the
// spans it had before are fetched and written before the indexer stops.
// The refetch worker used to stop as soon as shutdown began, before the
// flush queued the refetch: the spans dropped before were lost, since a
// restart replays only the root's record and no longer knows where they
// were.
func TestLateRootRescuedAtShutdown(t *testing.T) {
	cfg := testConfig()
	cfg.DecisionWait = time.Second // the rescued trace is still assembling at shutdown
	scfg := sampling.DefaultConfig()
	scfg.TopN = 1
	h := newKafkaHarness(t, cfg, scfg, nil)

	w := time.Now().Add(-3 * time.Minute).Truncate(time.Minute)
	slow, _ := h.dropOrphanSelect(t, w)
	h.produceSpans(t, slow, rescueSpan{id: 1, service: "checkout", op: "POST /pay", start: w.Add(2 * time.Second), end: w.Add(10 * time.Second)})
	require.Equal(t, 1.0, counterValue(t, h.ix.m.lateRoots.WithLabelValues(lateRootReopened)))
	h.stop()

	require.Equal(t, 1.0, counterValue(t, h.ix.m.lateRoots.WithLabelValues(lateRootRefetched)))
	store, err := index.Open(h.dir, slog.New(slog.DiscardHandler), nil, index.DefaultOptions())
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	got, found, err := store.Trace(context.Background(), slow)
	require.NoError(t, err)
	require.True(t, found)
	require.Len(t, got.Spans, 2, "the root and the SELECT dropped before it")
	require.Zero(t, h.ledger.Pending(), "every record's offset may be committed")
}

// TestLateRootReranksHeldTrace: a trace held in a top-N heap without its
// root, ranked by its quick database call (the top 1 of that name so far),
// is ranked again by its root when the root arrives. Ranked by the call, a
// slower orphan call of the same name pushed it out of the heap later, and
// the root, which had joined it, was dropped with it.
func TestLateRootReranksHeldTrace(t *testing.T) {
	scfg := sampling.DefaultConfig()
	scfg.TopN = 1
	cfg := testConfig()
	cfg.WatermarkSlack = 5 * time.Minute // the window stays open until shutdown
	h := newHarness(t, cfg, scfg)
	w := time.Now().Add(-2 * time.Minute).Truncate(time.Minute)
	slow, other := traceID(1), traceID(2)
	h.feed(tracesData(slow, rescueSpan{id: 2, parent: 1, service: "checkout", op: "SELECT", start: w.Add(2 * time.Second), end: w.Add(2*time.Second + 40*time.Millisecond)}))
	h.settle(t)
	h.feed(tracesData(slow,
		rescueSpan{id: 1, service: "checkout", op: "POST /pay", start: w.Add(2 * time.Second), end: w.Add(10 * time.Second)},
		rescueSpan{id: 3, parent: 1, service: "bank", op: "authorize", start: w.Add(2*time.Second + 50*time.Millisecond), end: w.Add(9 * time.Second)}))
	require.Eventually(t, func() bool {
		return counterValue(t, h.ix.m.lateRoots.WithLabelValues(lateRootReranked)) == 1
	}, 10*time.Second, 5*time.Millisecond)
	h.feed(tracesData(other, rescueSpan{id: 7, parent: 6, service: "checkout", op: "SELECT", start: w.Add(3 * time.Second), end: w.Add(3*time.Second + 60*time.Millisecond)}))
	h.settle(t)
	h.stop() // the shutdown flush keeps what the heaps hold

	store := h.reopened(t)
	got, found, err := store.Trace(context.Background(), slow)
	require.NoError(t, err)
	require.True(t, found, "the slowest POST /pay is kept, not pushed out by a slower SELECT")
	require.Equal(t, []string{sampling.ReasonLatencyTopN}, got.Reasons)
	require.Len(t, got.Spans, 3)
	_, found, err = store.Trace(context.Background(), other)
	require.NoError(t, err)
	require.True(t, found, "the slower orphan SELECT is the top 1 of its name")
}

// feedDuring is a stage that feeds records to the indexer while it decides
// trace id, once: spans arriving between the pop and the offer.
type feedDuring struct {
	id   span.TraceID
	feed func()
	done atomic.Bool
}

func (f *feedDuring) Process(t *span.Trace) []string {
	if t.ID == f.id && f.done.CompareAndSwap(false, true) {
		f.feed()
	}
	return nil
}

// TestLateRootDuringDecision: the root arrives while the trace is being
// decided without it (a stage feeds it between the pop and the offer), so
// it joins the decision's chunks, too late to be ranked by it. Held by its
// child's rank, the trace is ranked again by the root all the same; dropped
// by it (a slower orphan of the child's name came first and holds the top
// 1), the trace is reopened by the root and kept. Either way it is not lost
// to a slower SELECT.
func TestLateRootDuringDecision(t *testing.T) {
	for _, tc := range []struct {
		name       string
		otherFirst bool
		outcome    string
		spans      int // the SELECT dropped before a rescue is not refetched: no Kafka fetcher here
	}{
		{"held", false, lateRootReranked, 2},
		{"dropped", true, lateRootReopened, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			scfg := sampling.DefaultConfig()
			scfg.TopN = 1
			cfg := testConfig()
			cfg.WatermarkSlack = 5 * time.Minute // the window stays open until shutdown
			w := time.Now().Add(-2 * time.Minute).Truncate(time.Minute)
			slow, other := traceID(1), traceID(2)
			var h *harness
			stage := &feedDuring{id: slow, feed: func() {
				h.feed(tracesData(slow, rescueSpan{id: 1, service: "checkout", op: "POST /pay", start: w.Add(2 * time.Second), end: w.Add(10 * time.Second)}))
			}}
			h = newHarness(t, cfg, scfg, func(_ *index.Store, p *Parts) { p.Stages = []Stage{stage} })
			feedOther := func() {
				h.feed(tracesData(other, rescueSpan{id: 7, parent: 6, service: "checkout", op: "SELECT", start: w.Add(time.Second), end: w.Add(time.Second + 60*time.Millisecond)}))
				h.settle(t)
			}
			if tc.otherFirst {
				feedOther()
			}
			h.feed(tracesData(slow, rescueSpan{id: 2, parent: 1, service: "checkout", op: "SELECT", start: w.Add(2 * time.Second), end: w.Add(2*time.Second + 40*time.Millisecond)}))
			require.Eventually(t, func() bool {
				return counterValue(t, h.ix.m.lateRoots.WithLabelValues(tc.outcome)) == 1
			}, 10*time.Second, 5*time.Millisecond)
			require.True(t, stage.done.Load())
			if !tc.otherFirst {
				feedOther()
			}
			h.settle(t)
			h.stop()

			store := h.reopened(t)
			got, found, err := store.Trace(context.Background(), slow)
			require.NoError(t, err)
			require.True(t, found, "ranked by its root, not pushed out by a slower SELECT")
			require.Equal(t, []string{sampling.ReasonLatencyTopN}, got.Reasons)
			require.Len(t, got.Spans, tc.spans)
			_, found, err = store.Trace(context.Background(), other)
			require.NoError(t, err)
			require.True(t, found, "the slower orphan SELECT is the top 1 of its name")
		})
	}
}
