package indexer

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/clockskew"
	"github.com/threadline/threadline/index"
	"github.com/threadline/threadline/red"
	"github.com/threadline/threadline/sampling"
	"github.com/threadline/threadline/span"
)

// pipeline is the indexer as the app wires it for spans: the real span
// store, tail sampler, clock-skew stage and RED store, fed keyed records
// (held packed, decoded into leases) as the consumer hands them over.
type pipeline struct {
	ix     *Indexer
	store  *index.Store
	red    *red.Store
	ledger *bus.Ledger
	offset int64
	stop   func()
}

func newPipeline(t *testing.T, cfg Config, scfg sampling.Config) *pipeline {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	store, err := index.Open(t.TempDir(), logger, prometheus.NewRegistry(), index.DefaultOptions())
	require.NoError(t, err)
	rs, err := red.Open(t.TempDir(), logger, prometheus.NewRegistry(), red.DefaultOptions())
	require.NoError(t, err)
	dec, err := sampling.NewTailSampler(scfg, prometheus.NewRegistry())
	require.NoError(t, err)
	ix, err := New(cfg, Parts{Store: store, Decider: dec, Observer: rs, Stages: []Stage{skewStage{clockskew.RepairClockSkew(clockskew.DefaultConfig())}}},
		logger, prometheus.NewRegistry())
	require.NoError(t, err)
	p := &pipeline{ix: ix, store: store, red: rs, ledger: bus.NewLedger()}
	// A write that can never succeed (spans read after their lease was
	// released) is retried for ever: stopping waits 10 s at most.
	p.stop = runIndexer(t, ix, 10*time.Second)
	t.Cleanup(func() {
		p.stop()
		require.NoError(t, rs.Close())
		require.NoError(t, store.Close())
	})
	return p
}

// feed hands records to the indexer keyed by trace ID, as the collector
// keys them.
func (p *pipeline) feed(t *testing.T, traces ...*tracepb.TracesData) {
	t.Helper()
	recs := make([]*kgo.Record, len(traces))
	tickets := make([]*bus.Ticket, len(traces))
	for i, td := range traces {
		b, err := proto.Marshal(td)
		require.NoError(t, err)
		id := span.TraceID(td.ResourceSpans[0].ScopeSpans[0].Spans[0].TraceId)
		recs[i] = &kgo.Record{Topic: "otlp_spans", Offset: p.offset, Key: id.AppendHex(nil), Value: b}
		p.offset++
		tickets[i] = p.ledger.Begin(recs[i])
	}
	p.ix.HandleRecords(context.Background(), recs, tickets)
}

// settle waits until every trace fed is decided or held by the decider,
// and every write queued has been taken. No write may fail meanwhile.
func (p *pipeline) settle(t *testing.T) {
	t.Helper()
	settled := func() bool {
		p.ix.mu.Lock()
		defer p.ix.mu.Unlock()
		for _, h := range p.ix.held {
			if h.deciding {
				return false
			}
		}
		return len(p.ix.traces) == 0 && p.ix.writesQueued() == 0
	}
	for deadline := time.Now().Add(20 * time.Second); !settled(); time.Sleep(5 * time.Millisecond) {
		require.Zero(t, counterValue(t, p.ix.m.writeErrors), "a write failed")
		require.True(t, time.Now().Before(deadline), "traces still assembling, deciding or queued")
	}
}

// recycledTrace is a trace sent in records the way services send them:
// a server root, a client child and, on another service and host whose
// clock runs 3 ms ahead, the server span the client called, so clock-skew
// repair shifts it. Every span has attributes of every kind, an event and a
// link, and strings of its own, so a span read from a recycled buffer
// differs from what was sent.
type recycledTrace struct {
	n        int
	id       span.TraceID
	key      int // root service and operation
	start    time.Time
	duration time.Duration
	err      bool
	records  []*tracepb.TracesData
	spans    int
}

// recycledResource returns the resource of service svc on host, with attributes
// enough to be worth sharing; pad makes it too big to be shared, so its
// spans' resource is decoded from their lease.
func recycledResource(svc, host string, pad int) *resourcepb.Resource {
	attrs := []*commonpb.KeyValue{
		strKV("service.name", svc), strKV("host.name", host),
		strKV("deployment.environment", "test"), strKV("service.version", "1.2."+svc),
	}
	if pad > 0 {
		attrs = append(attrs, strKV("padding", strings.Repeat(host, pad/len(host)+1)))
	}
	return &resourcepb.Resource{Attributes: attrs}
}

func strKV(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

// record returns a record of the trace's spans first to first+n-1 (span 0
// is the root, 1 the client, 2 the skewed server, the rest children of the
// root), each with a padding attribute of attrBytes bytes, and its
// service's resource padded by resourcePad bytes (see recycledResource).
func (tr *recycledTrace) record(first, n, attrBytes, resourcePad int) *tracepb.TracesData {
	svc := fmt.Sprintf("svc-%d", tr.key%3)
	start := uint64(tr.start.UnixNano())
	spanID := func(i int) []byte { return binary.BigEndian.AppendUint64(nil, uint64(tr.n)<<16|uint64(i)+1) }
	var local, remote []*tracepb.Span
	for i := first; i < first+n; i++ {
		sp := &tracepb.Span{
			TraceId: tr.id[:], SpanId: spanID(i), Name: fmt.Sprintf("op-%d", tr.key), Kind: tracepb.Span_SPAN_KIND_SERVER,
			TraceState:        fmt.Sprintf("t=%d", tr.n),
			StartTimeUnixNano: start, EndTimeUnixNano: start + uint64(tr.duration),
			Attributes: []*commonpb.KeyValue{
				strKV("user.id", fmt.Sprintf("user-%d-%d", tr.n, i)),
				{Key: "attempt", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: int64(i)}}},
				{Key: "cached", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: i%2 == 0}}},
				{Key: "tags", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: []*commonpb.AnyValue{
					{Value: &commonpb.AnyValue_StringValue{StringValue: fmt.Sprintf("tag-%d", tr.n)}},
					{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: float64(i) / 4}},
				}}}}},
			},
			Events: []*tracepb.Span_Event{{TimeUnixNano: start + 500, Name: fmt.Sprintf("event-%d", i), Attributes: []*commonpb.KeyValue{strKV("event.detail", fmt.Sprintf("detail-%d-%d", tr.n, i))}}},
			Links:  []*tracepb.Span_Link{{TraceId: bytes.Repeat([]byte{byte(tr.n) | 1}, 16), SpanId: spanID(99), TraceState: "linked"}},
		}
		if attrBytes > 0 {
			sp.Attributes = append(sp.Attributes, strKV("payload", strings.Repeat(fmt.Sprintf("%d.", i), attrBytes/4)))
		}
		if i > 0 {
			parent := 0
			if i == 2 {
				parent = 1
			}
			sp.ParentSpanId = spanID(parent)
			sp.Name = fmt.Sprintf("child-%d-%d", tr.n, i)
			sp.Kind = tracepb.Span_SPAN_KIND_INTERNAL
			sp.StartTimeUnixNano, sp.EndTimeUnixNano = start+uint64(i)*1000, start+uint64(tr.duration)/2-uint64(i)*1000
		}
		switch i {
		case 1:
			sp.Kind = tracepb.Span_SPAN_KIND_CLIENT
		case 2: // served on a host 3 ms ahead: it ends after the client call
			sp.Kind = tracepb.Span_SPAN_KIND_SERVER
			sp.StartTimeUnixNano += 3_000_000
			sp.EndTimeUnixNano += 3_000_000
		}
		if tr.err && i == 1 {
			sp.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: fmt.Sprintf("boom %d", tr.n)}
		}
		if i == 2 {
			remote = append(remote, sp)
		} else {
			local = append(local, sp)
		}
	}
	td := &tracepb.TracesData{}
	if len(local) > 0 {
		td.ResourceSpans = append(td.ResourceSpans, &tracepb.ResourceSpans{
			Resource: recycledResource(svc, "host-a", resourcePad), SchemaUrl: "https://opentelemetry.io/schemas/1.26.0",
			ScopeSpans: []*tracepb.ScopeSpans{{Scope: &commonpb.InstrumentationScope{Name: "http", Version: "1.0"}, SchemaUrl: "scope", Spans: local}},
		})
	}
	if len(remote) > 0 {
		td.ResourceSpans = append(td.ResourceSpans, &tracepb.ResourceSpans{
			Resource:   recycledResource("backend", "host-b", 0),
			ScopeSpans: []*tracepb.ScopeSpans{{Scope: &commonpb.InstrumentationScope{Name: "grpc"}, Spans: remote}},
		})
	}
	tr.records = append(tr.records, td)
	tr.spans += n
	return td
}

// sentSpan is a span as sent, with its resource and scope.
type sentSpan struct {
	span     *tracepb.Span
	resource *resourcepb.Resource
	schema   string
	scope    *commonpb.InstrumentationScope
}

// sent returns the trace's spans as sent, by span ID; a stray span of
// another trace in its records is not one of them.
func (tr *recycledTrace) sent() map[string]sentSpan {
	out := map[string]sentSpan{}
	for _, td := range tr.records {
		for _, rs := range td.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, sp := range ss.Spans {
					if span.TraceID(sp.TraceId) == tr.id {
						out[string(sp.SpanId)] = sentSpan{span: sp, resource: rs.Resource, schema: rs.SchemaUrl, scope: ss.Scope}
					}
				}
			}
		}
	}
	return out
}

// TestRecycledSpansIntact runs traces through the indexer as the app wires
// it — clock-skew repair, RED counting, tail sampling that keeps errors at
// once and holds the slowest traces per key until their window closes,
// late spans joining kept, held and dropped traces — and reads every kept
// trace back from the store: span by span, with its resource and scope, it
// is what was sent, and RED counted every span once under the names sent.
// Test binaries poison the memory of a released lease (span.Lease), so a
// span read after its lease was released is caught here, not only when the
// buffer happens to be reused.
func TestRecycledSpansIntact(t *testing.T) {
	cfg := testConfig()
	cfg.WatermarkSlack = 5 * time.Minute // arrival is shuffled over two windows
	cfg.IdleAdvance = time.Hour          // windows close when a later trace moves the watermark
	scfg := sampling.DefaultConfig()
	scfg.TopN = 2
	p := newPipeline(t, cfg, scfg)
	rng := rand.New(rand.NewPCG(11, 12))
	base := time.Now().Add(-10 * time.Minute).Truncate(time.Minute)

	var traces []*recycledTrace
	newTrace := func(key, window int, err bool) *recycledTrace {
		n := len(traces)
		tr := &recycledTrace{n: n, id: traceID(1000 + n), key: key, err: err,
			start:    base.Add(time.Duration(window)*time.Minute + time.Duration(rng.IntN(50_000))*time.Millisecond),
			duration: time.Duration(2000+rng.IntN(100_000)) * time.Microsecond}
		traces = append(traces, tr)
		return tr
	}
	// The first record with each resource and scope has the Decoder share
	// them with every later record. These are error traces, kept at once,
	// so their leases are released as soon as they are written, in a size
	// no later record takes: if a shared resource or scope kept any of that
	// memory, every later span naming it would read poison.
	var primers []*tracepb.TracesData
	for key := range 3 {
		primers = append(primers, newTrace(key, 0, true).record(0, 40, 0, 0))
	}
	p.feed(t, primers...)
	p.settle(t)

	var first []*tracepb.TracesData
	for key := range 4 {
		for window := range 2 {
			for i := range 12 {
				tr := newTrace(key, window, i%5 == 2)
				first = append(first, tr.record(0, 3+i%4, 0, 0))
			}
		}
	}
	// A span of another trace in a record keyed by this one is counted as
	// bad and dropped, and the spans after it are kept.
	stray := first[len(first)-1].ResourceSpans[0].ScopeSpans[0]
	stray.Spans = slices.Insert(stray.Spans, 1, &tracepb.Span{TraceId: bytes.Repeat([]byte{7}, 16), SpanId: bytes.Repeat([]byte{7}, 8), Name: "stray"})
	// Resources too big to share (decoded from the lease) and a record too
	// big to pool.
	bigResource := newTrace(0, 0, true)
	first = append(first, bigResource.record(0, 4, 0, 20<<10))
	bigRecord := newTrace(1, 1, true)
	first = append(first, bigRecord.record(0, 300, 1<<10, 0))
	rng.Shuffle(len(first), func(i, j int) { first[i], first[j] = first[j], first[i] })
	p.feed(t, first...)
	p.settle(t)

	// Ground truth: every error trace, and the two slowest of the rest per
	// key per window, which are held until the window closes.
	kept := map[span.TraceID][]string{}
	groups := map[[2]int][]*recycledTrace{}
	for _, tr := range traces {
		if tr.err {
			kept[tr.id] = []string{sampling.ReasonError}
			continue
		}
		k := [2]int{tr.key, int(tr.start.Sub(base) / time.Minute)}
		groups[k] = append(groups[k], tr)
	}
	var held, dropped []*recycledTrace
	for _, g := range groups {
		sort.Slice(g, func(i, j int) bool { return g[i].duration > g[j].duration })
		for _, tr := range g[:2] {
			kept[tr.id] = []string{sampling.ReasonLatencyTopN}
		}
		held = append(held, g[:2]...)
		dropped = append(dropped, g[2:]...)
	}
	errTraces := slices.DeleteFunc(slices.Clone(traces), func(tr *recycledTrace) bool { return !tr.err })
	p.ix.mu.Lock()
	for _, tr := range held {
		require.NotNil(t, p.ix.held[tr.id], "trace %d is held in a top-N heap", tr.n)
	}
	p.ix.mu.Unlock()

	// Late spans: of traces kept at once (written when they come), of held
	// traces (joining them until their window closes) and of dropped ones
	// (counted, not written).
	var late []*tracepb.TracesData
	for _, group := range [][]*recycledTrace{errTraces[:6], held[:6], dropped[:6]} {
		for _, tr := range group {
			late = append(late, tr.record(tr.spans, 2, 0, 0))
		}
	}
	p.feed(t, late...)
	p.settle(t)

	// A trace of now moves the watermark past both windows: the held
	// traces are decided, and written with their late spans. Held itself
	// in the window of now, it is written at shutdown.
	closer := newTrace(0, 0, false)
	closer.start = time.Now()
	p.feed(t, closer.record(0, 3, 0, 0))
	kept[closer.id] = []string{sampling.ReasonLatencyTopN}
	p.settle(t)
	p.stop()
	require.Equal(t, float64(1), counterValue(t, p.ix.m.badSpans), "the stray span")
	require.Eventually(t, func() bool { return p.ledger.Pending() == 0 }, 10*time.Second, 10*time.Millisecond, "every record released")

	for _, tr := range traces {
		got, found, err := p.store.Trace(context.Background(), tr.id)
		require.NoError(t, err)
		reasons, want := kept[tr.id]
		require.Equal(t, want, found, "trace %d (err %v) stored", tr.n, tr.err)
		if !want {
			continue
		}
		require.Equal(t, reasons, got.Reasons, "trace %d", tr.n)
		sent := tr.sent()
		require.Len(t, got.Spans, len(sent), "trace %d", tr.n)
		clockskew.Raw(&span.Trace{ID: tr.id, Spans: got.Spans}) // as received
		for _, sp := range got.Spans {
			s, ok := sent[string(sp.GetSpanId())]
			require.True(t, ok, "trace %d: span %x was not sent", tr.n, sp.GetSpanId())
			require.True(t, proto.Equal(s.span, sp.Span), "trace %d span %x:\nsent %v\n got %v", tr.n, sp.GetSpanId(), s.span, sp.Span)
			require.True(t, proto.Equal(s.resource, sp.Resource.Resource), "trace %d span %x: resource\nsent %v\n got %v", tr.n, sp.GetSpanId(), s.resource, sp.Resource.Resource)
			require.Equal(t, s.schema, sp.Resource.SchemaURL)
			require.True(t, proto.Equal(s.scope, sp.Scope.Scope), "trace %d span %x: scope", tr.n, sp.GetSpanId())
		}
	}

	// RED counted every span sent once, under the names sent.
	require.NoError(t, p.red.Flush(context.Background()))
	_, totals := p.red.Totals()
	counted := map[[2]string]uint64{}
	for _, s := range totals {
		counted[[2]string{s.Service, s.Operation}] += s.Count
	}
	want := map[[2]string]uint64{}
	for _, tr := range traces {
		for _, s := range tr.sent() {
			var svc string
			for _, kv := range s.resource.GetAttributes() {
				if kv.GetKey() == "service.name" {
					svc = kv.GetValue().GetStringValue()
				}
			}
			want[[2]string{svc, s.span.GetName()}]++
		}
	}
	require.Equal(t, want, counted)
}

// TestSkewOffsetsOutliveLeases: the per-instance offsets a held trace keeps
// for its log lines name instances by strings of their own, not by the
// resource strings of spans whose leases are released when the trace is
// decided (resources too big to share are decoded from the lease).
func TestSkewOffsetsOutliveLeases(t *testing.T) {
	dec, err := sampling.NewTailSampler(sampling.DefaultConfig(), prometheus.NewRegistry())
	require.NoError(t, err)
	ix, err := New(testConfig(), Parts{Store: discardWriter{}, Decider: dec}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	require.NoError(t, err)
	tr := &recycledTrace{n: 1, id: traceID(1), start: time.Now(), duration: 10 * time.Millisecond}
	td := tr.record(0, 3, 0, 0)
	for i, rs := range td.ResourceSpans {
		// Named by service.name alone, and too big to be shared.
		rs.Resource = &resourcepb.Resource{Attributes: []*commonpb.KeyValue{
			strKV("service.name", fmt.Sprintf("service-%d", i)), strKV("padding", strings.Repeat("x", 20<<10))}}
	}
	value, err := proto.Marshal(td)
	require.NoError(t, err)
	c, err := ix.packer.pack(value, time.Now())
	require.NoError(t, err)
	require.Equal(t, packedWhole, c.data[0], "a head too big to share: packed whole")
	spans, _, leases := ix.decodeChunks(tr.id, []chunk{c})
	require.Len(t, leases, 1)
	trace := span.Trace{ID: tr.id, Spans: spans}
	skewStage{clockskew.RepairClockSkew(clockskew.DefaultConfig())}.Process(&trace)
	offsets := skewOffsets(trace.Spans)
	require.NotEmpty(t, offsets, "the trace was repaired")
	releaseLeases(leases)
	for inst := range offsets {
		require.Contains(t, []clockskew.Instance{"service-0", "service-1"}, inst)
	}
}

// namesDecider drops every trace at once and keeps the root names offered,
// as a decider may.
type namesDecider struct {
	mu    sync.Mutex
	names map[span.TraceID][2]string
}

func (d *namesDecider) Offer(t sampling.TraceInfo) []sampling.Decision {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.names[t.ID] = [2]string{t.RootService, t.RootOperation}
	return []sampling.Decision{{ID: t.ID}}
}
func (d *namesDecider) Advance(time.Time) []sampling.Decision { return nil }
func (d *namesDecider) Flush() []sampling.Decision            { return nil }
func (d *namesDecider) Pin(span.TraceID, string) (sampling.Decision, bool) {
	return sampling.Decision{}, false
}

// TestDeciderKeepsNames: a decider may keep the root names it is offered
// after deciding the trace, when the trace's leases are released.
func TestDeciderKeepsNames(t *testing.T) {
	d := &namesDecider{names: map[span.TraceID][2]string{}}
	ix, err := New(testConfig(), Parts{Store: discardWriter{}, Decider: d}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ix.Run(ctx) }()
	ledger := bus.NewLedger()
	var traces []*recycledTrace
	for n := range 50 {
		tr := &recycledTrace{n: n, id: traceID(n), key: n, start: time.Now(), duration: 10 * time.Millisecond}
		traces = append(traces, tr)
		value, err := proto.Marshal(tr.record(0, 3, 0, 0))
		require.NoError(t, err)
		r := &kgo.Record{Topic: "otlp_spans", Offset: int64(n), Key: tr.id.AppendHex(nil), Value: value}
		ix.HandleRecords(ctx, []*kgo.Record{r}, []*bus.Ticket{ledger.Begin(r)})
	}
	require.Eventually(t, func() bool { return ledger.Pending() == 0 }, 10*time.Second, 5*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	d.mu.Lock()
	defer d.mu.Unlock()
	require.Len(t, d.names, len(traces))
	for _, tr := range traces {
		require.Equal(t, [2]string{fmt.Sprintf("svc-%d", tr.key%3), fmt.Sprintf("op-%d", tr.key)}, d.names[tr.id], "trace %d", tr.n)
	}
}
