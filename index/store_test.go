package index

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

const ms = int64(time.Millisecond)

// base is the fixture's time origin.
var base = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC).UnixNano()

func openStore(t *testing.T, dir string, mod ...func(*Options)) *Store {
	t.Helper()
	opts := DefaultOptions()
	opts.GCInterval = 50 * time.Millisecond // exercise the GC goroutine
	for _, m := range mod {
		m(&opts)
	}
	st, err := Open(dir, slog.New(slog.DiscardHandler), prometheus.NewRegistry(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	return st
}

func tid(b byte) span.TraceID { return span.TraceID{0xa0, 15: b} }
func sid(b byte) []byte       { return []byte{0x50, 7: b} }

var (
	resFrontend = newResource("frontend", strAttr("deployment.environment", "prod"), strAttr("host.name", "h1"))
	resCheckout = newResource("checkout", strAttr("deployment.environment", "prod"), strAttr("host.name", "h2"))
	resPayment  = newResource("payment", strAttr("deployment.environment", "prod"), strAttr("host.name", "h3"))
	scopeHTTP   = &span.Scope{Scope: &commonpb.InstrumentationScope{Name: "otelhttp", Version: "1.0"}}
	longValue   = strings.Repeat("x", 100)
)

type spanDef struct {
	id, parent byte // parent 0: root
	res        *span.Resource
	name       string
	kind       tracepb.Span_SpanKind
	startMs    int64 // from base
	durMs      int64
	status     tracepb.Status_StatusCode
	attrs      []*commonpb.KeyValue
}

func mkTrace(id span.TraceID, defs ...spanDef) span.Trace {
	tr := span.Trace{ID: id}
	for _, d := range defs {
		sp := &tracepb.Span{
			TraceId:           id[:],
			SpanId:            sid(d.id),
			Name:              d.name,
			Kind:              d.kind,
			StartTimeUnixNano: uint64(base + d.startMs*ms),
			EndTimeUnixNano:   uint64(base + (d.startMs+d.durMs)*ms),
			Attributes:        d.attrs,
		}
		if d.parent != 0 {
			sp.ParentSpanId = sid(d.parent)
		}
		if d.status != 0 {
			sp.Status = &tracepb.Status{Code: d.status}
		}
		tr.Spans = append(tr.Spans, span.Span{Span: sp, Resource: d.res, Scope: scopeHTTP})
	}
	return tr
}

// fixture: three traces, each newer than the one before.
func fixture() []KeptTrace {
	return []KeptTrace{
		{
			Trace: mkTrace(tid(1),
				spanDef{id: 1, res: resFrontend, name: "GET /cart", kind: tracepb.Span_SPAN_KIND_SERVER, startMs: 0, durMs: 100, status: tracepb.Status_STATUS_CODE_OK,
					attrs: []*commonpb.KeyValue{strAttr("http.route", "/cart")}},
				spanDef{id: 2, parent: 1, res: resCheckout, name: "SELECT", kind: tracepb.Span_SPAN_KIND_CLIENT, startMs: 10, durMs: 20,
					attrs: []*commonpb.KeyValue{strAttr("db.system", "postgres"), strAttr("http.route", "/cart")}},
			),
			Reasons: []string{"latency_topn"},
		},
		{
			Trace: mkTrace(tid(2),
				spanDef{id: 1, res: resFrontend, name: "POST /pay", kind: tracepb.Span_SPAN_KIND_SERVER, startMs: 1000, durMs: 500, status: tracepb.Status_STATUS_CODE_ERROR},
				spanDef{id: 2, parent: 1, res: resPayment, name: "charge", kind: tracepb.Span_SPAN_KIND_SERVER, startMs: 1100, durMs: 300, status: tracepb.Status_STATUS_CODE_ERROR,
					attrs: []*commonpb.KeyValue{intAttr("http.response.status_code", 500), strAttr("user.id", "u-42")}},
			),
			Reasons:  []string{"error"},
			Warnings: []string{"clock skew: payment shifted by 3ms"},
		},
		{
			Trace: mkTrace(tid(3),
				spanDef{id: 1, res: resCheckout, name: "consume", kind: tracepb.Span_SPAN_KIND_CONSUMER, startMs: 2000, durMs: 5,
					attrs: []*commonpb.KeyValue{strAttr("blob", longValue), strAttr("name", "weird")}},
			),
			Reasons: []string{"baseline"},
		},
	}
}

func ids(sums []*readerpb.TraceSummary) []byte {
	out := []byte{}
	for _, s := range sums {
		out = append(out, s.TraceId[15])
	}
	return out
}

func TestConformance(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	require.NoError(t, st.WriteTraces(ctx, fixture()))

	t.Run("Trace", func(t *testing.T) {
		for _, kt := range fixture() {
			got, found, err := st.Trace(ctx, kt.Trace.ID)
			require.NoError(t, err)
			require.True(t, found)
			require.Equal(t, kt.Reasons, got.Reasons)
			require.Equal(t, kt.Warnings, got.Warnings)
			require.True(t, proto.Equal(span.ToTracesData(kt.Trace.Spans), span.ToTracesData(got.Spans)),
				"stored trace differs:\nwant %v\ngot  %v", span.ToTracesData(kt.Trace.Spans), span.ToTracesData(got.Spans))
		}
		_, found, err := st.Trace(ctx, tid(99))
		require.NoError(t, err)
		require.False(t, found)
	})

	t.Run("Search", func(t *testing.T) {
		type tags = map[string]string
		for _, tc := range []struct {
			name string
			q    *readerpb.SearchRequest
			want []byte
		}{
			{"all newest first", &readerpb.SearchRequest{}, []byte{3, 2, 1}},
			{"limit", &readerpb.SearchRequest{Limit: 1}, []byte{3}},
			{"service", &readerpb.SearchRequest{Tags: tags{"service.name": "frontend"}}, []byte{2, 1}},
			{"service of a child", &readerpb.SearchRequest{Tags: tags{"service.name": "payment"}}, []byte{2}},
			{"span name", &readerpb.SearchRequest{Tags: tags{"name": "charge"}}, []byte{2}},
			{"name is intrinsic, not the attribute", &readerpb.SearchRequest{Tags: tags{"name": "weird"}}, []byte{}},
			{"status error", &readerpb.SearchRequest{Tags: tags{"status": "error"}}, []byte{2}},
			{"status ok", &readerpb.SearchRequest{Tags: tags{"status": "OK"}}, []byte{1}},
			{"status unset", &readerpb.SearchRequest{Tags: tags{"status": "unset"}}, []byte{3, 1}},
			{"int attribute", &readerpb.SearchRequest{Tags: tags{"http.response.status_code": "500"}}, []byte{2}},
			{"span attribute", &readerpb.SearchRequest{Tags: tags{"db.system": "postgres"}}, []byte{1}},
			{"resource attribute", &readerpb.SearchRequest{Tags: tags{"host.name": "h2"}}, []byte{3, 1}},
			{"shared resource attribute", &readerpb.SearchRequest{Tags: tags{"deployment.environment": "prod"}}, []byte{3, 2, 1}},
			{"unknown value", &readerpb.SearchRequest{Tags: tags{"db.system": "mysql"}}, []byte{}},
			{"long value checked on spans", &readerpb.SearchRequest{Tags: tags{"blob": longValue}}, []byte{3}},
			{"tags on different spans", &readerpb.SearchRequest{Tags: tags{"service.name": "frontend", "db.system": "postgres"}}, []byte{1}},
			{"same_span rejects different spans", &readerpb.SearchRequest{Tags: tags{"service.name": "frontend", "db.system": "postgres"}, SameSpan: true}, []byte{}},
			{"same_span one span", &readerpb.SearchRequest{Tags: tags{"service.name": "checkout", "db.system": "postgres"}, SameSpan: true}, []byte{1}},
			{"same_span operation", &readerpb.SearchRequest{Tags: tags{"service.name": "payment", "name": "charge"}, SameSpan: true}, []byte{2}},
			{"same_span operation absent", &readerpb.SearchRequest{Tags: tags{"service.name": "frontend", "name": "charge"}, SameSpan: true}, []byte{}},
			{"service and name on different spans", &readerpb.SearchRequest{Tags: tags{"service.name": "frontend", "name": "charge"}}, []byte{2}},
			{"min duration", &readerpb.SearchRequest{MinDurationNanos: 200 * ms}, []byte{2}},
			{"duration range", &readerpb.SearchRequest{MinDurationNanos: 50 * ms, MaxDurationNanos: 200 * ms}, []byte{1}},
			{"max duration", &readerpb.SearchRequest{MaxDurationNanos: 50 * ms}, []byte{3}},
			{"time range", &readerpb.SearchRequest{StartUnixNano: base + 900*ms, EndUnixNano: base + 1200*ms}, []byte{2}},
			{"time range overlaps a trace", &readerpb.SearchRequest{StartUnixNano: base + 50*ms, EndUnixNano: base + 60*ms}, []byte{1}},
			{"time range with tag", &readerpb.SearchRequest{Tags: tags{"deployment.environment": "prod"}, StartUnixNano: base + 1400*ms, EndUnixNano: base + 3000*ms}, []byte{3, 2}},
			{"time range before everything", &readerpb.SearchRequest{StartUnixNano: base - 5000*ms, EndUnixNano: base - 4000*ms}, []byte{}},
			{"span min duration", &readerpb.SearchRequest{SpanMinDurationNanos: 15 * ms}, []byte{2, 1}},
			{"span max duration", &readerpb.SearchRequest{SpanMaxDurationNanos: 10 * ms}, []byte{3}},
			{"same_span with span duration", &readerpb.SearchRequest{Tags: tags{"name": "SELECT"}, SameSpan: true, SpanMinDurationNanos: 15 * ms}, []byte{1}},
			{"same_span span duration excludes", &readerpb.SearchRequest{Tags: tags{"name": "SELECT"}, SameSpan: true, SpanMinDurationNanos: 25 * ms}, []byte{}},
			{"kept reason", &readerpb.SearchRequest{KeptReasons: []string{"error"}}, []byte{2}},
			{"kept reasons any of", &readerpb.SearchRequest{KeptReasons: []string{"error", "baseline"}}, []byte{3, 2}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, err := st.Search(ctx, tc.q)
				require.NoError(t, err)
				require.Equal(t, tc.want, ids(got))
			})
		}
	})

	t.Run("SearchSummary", func(t *testing.T) {
		got, err := st.Search(ctx, &readerpb.SearchRequest{Tags: map[string]string{"status": "error"}})
		require.NoError(t, err)
		require.Len(t, got, 1)
		want := &readerpb.TraceSummary{
			TraceId: idBytes(tid(2)), RootServiceName: "frontend", RootSpanName: "POST /pay",
			StartUnixNano: base + 1000*ms, DurationNanos: 500 * ms, SpanCount: 2, ErrorCount: 2,
			KeptReasons: []string{"error"}, Services: []string{"frontend", "payment"},
		}
		require.True(t, proto.Equal(want, got[0]), "got %v", got[0])
	})

	t.Run("BadQuery", func(t *testing.T) {
		for _, q := range []*readerpb.SearchRequest{
			{Tags: map[string]string{"status": "broken"}},
			{MinDurationNanos: -1},
			{MinDurationNanos: 10, MaxDurationNanos: 5},
			{StartUnixNano: 10, EndUnixNano: 5},
		} {
			_, err := st.Search(ctx, q)
			require.ErrorIs(t, err, ErrBadQuery, "%v", q)
		}
	})

	t.Run("Services", func(t *testing.T) {
		got, err := st.Services(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"checkout", "frontend", "payment"}, got)
	})

	t.Run("Operations", func(t *testing.T) {
		op := func(svc, name, kind string) *readerpb.Operation {
			return &readerpb.Operation{Service: svc, Name: name, SpanKind: kind}
		}
		for _, tc := range []struct {
			service string
			want    []*readerpb.Operation
		}{
			{"frontend", []*readerpb.Operation{op("frontend", "GET /cart", "server"), op("frontend", "POST /pay", "server")}},
			{"checkout", []*readerpb.Operation{op("checkout", "SELECT", "client"), op("checkout", "consume", "consumer")}},
			{"nope", nil},
			{"", []*readerpb.Operation{
				op("checkout", "SELECT", "client"), op("checkout", "consume", "consumer"),
				op("frontend", "GET /cart", "server"), op("frontend", "POST /pay", "server"),
				op("payment", "charge", "server"),
			}},
		} {
			got, err := st.Operations(ctx, tc.service)
			require.NoError(t, err)
			require.Len(t, got, len(tc.want), tc.service)
			for i := range got {
				require.True(t, proto.Equal(tc.want[i], got[i]), "%s: %v", tc.service, got)
			}
		}
	})

	t.Run("TagNames", func(t *testing.T) {
		res, spanKeys, err := st.TagNames(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{"deployment.environment", "host.name", "service.name"}, res)
		require.Equal(t, []string{"blob", "db.system", "http.response.status_code", "http.route", "name", "user.id"}, spanKeys)
	})

	t.Run("TagValues", func(t *testing.T) {
		for _, tc := range []struct {
			tag   string
			limit int
			want  []string
		}{
			{"host.name", 0, []string{"h1", "h2", "h3"}},
			{"host.name", 2, []string{"h1", "h2"}},
			{"http.response.status_code", 0, []string{"500"}},
			{"blob", 0, nil}, // too long to index
			{"service.name", 0, []string{"checkout", "frontend", "payment"}},
			{"name", 0, []string{"GET /cart", "POST /pay", "SELECT", "charge", "consume"}},
			{"status", 0, []string{"error", "ok", "unset"}},
			{"missing", 0, nil},
		} {
			got, err := st.TagValues(ctx, tc.tag, tc.limit)
			require.NoError(t, err)
			require.Equal(t, tc.want, got, tc.tag)
		}
	})

	t.Run("Writable", func(t *testing.T) {
		require.NoError(t, st.Writable(ctx))
	})
}

func searchAll(t *testing.T, st *Store) []*readerpb.TraceSummary {
	t.Helper()
	got, err := st.Search(context.Background(), &readerpb.SearchRequest{Limit: 100})
	require.NoError(t, err)
	return got
}

func TestIdempotentWrites(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	require.NoError(t, st.WriteTraces(ctx, fixture()))
	before := searchAll(t, st)
	// The same batch again, then each trace split into single-span writes
	// in reverse (a replay that regroups spans).
	require.NoError(t, st.WriteTraces(ctx, fixture()))
	for _, kt := range fixture() {
		for i := len(kt.Trace.Spans) - 1; i >= 0; i-- {
			one := kt
			one.Trace.Spans = kt.Trace.Spans[i : i+1]
			require.NoError(t, st.WriteTraces(ctx, []KeptTrace{one}))
		}
	}
	after := searchAll(t, st)
	require.Len(t, after, len(before))
	for i := range before {
		require.True(t, proto.Equal(before[i], after[i]), "summary changed:\nbefore %v\nafter  %v", before[i], after[i])
	}
	got, _, err := st.Trace(ctx, tid(1))
	require.NoError(t, err)
	require.Len(t, got.Spans, 2)
	// The frontend posting list names each trace once, however often
	// replays wrote it.
	require.Len(t, postingSeqs(t, st, svcPosting("frontend")), 2)
}

// TestInvalidTraceError: a batch with a trace the store cannot take (a
// span without an 8-byte, non-zero ID) is refused whole, with an
// InvalidTraceError naming that trace, so the caller can write the rest.
func TestInvalidTraceError(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	batch := fixture()
	bad := batch[1]
	bad.Trace.Spans = slices.Clone(bad.Trace.Spans)
	sp := proto.Clone(bad.Trace.Spans[0].Span).(*tracepb.Span)
	sp.SpanId = sp.SpanId[:4]
	bad.Trace.Spans[0].Span = sp
	batch[1] = bad

	err := st.WriteTraces(ctx, batch)
	inv, ok := errors.AsType[*InvalidTraceError](err)
	require.True(t, ok, "%v", err)
	require.Equal(t, bad.Trace.ID, inv.ID)
	require.ErrorIs(t, err, span.ErrIDLength)
	_, found, err := st.Trace(ctx, batch[0].Trace.ID)
	require.NoError(t, err)
	require.False(t, found, "nothing of the batch is written")

	batch = slices.Delete(batch, 1, 2)
	require.NoError(t, st.WriteTraces(ctx, batch))
	requireTraces(t, st, batch)
}

// TestSameSpansNewContent: spans written again under the same IDs with
// different content (a producer that reuses span IDs, or rewrites spans it
// sent) are a new chunk group, not the old one rewritten: the trace reads
// back, as last written, and so does every trace written before. Groups
// were named by the (trace, chunk) IDs they hold, so the second write
// replaced the first group's content under its name while the stored
// summary still placed chunks in the old content: the write read garbage
// (and was retried for ever), or the trace became unreadable.
func TestSameSpansNewContent(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	first := fixture()[:1]
	require.NoError(t, st.WriteTraces(ctx, first))
	again := fixture()[:1]
	for _, sp := range again[0].Trace.Spans {
		sp.Attributes = append(sp.Attributes, strAttr("rewritten", strings.Repeat("x", 40)))
	}
	require.NoError(t, st.WriteTraces(ctx, again))
	requireTraces(t, st, again)
	require.NoError(t, st.WriteTraces(ctx, first))
	requireTraces(t, st, first)
}

func TestLateSpansMerge(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	full := mkTrace(tid(7),
		spanDef{id: 1, res: resFrontend, name: "GET /late", kind: tracepb.Span_SPAN_KIND_SERVER, startMs: 0, durMs: 1000},
		spanDef{id: 2, parent: 1, res: resCheckout, name: "work", startMs: 100, durMs: 50, status: tracepb.Status_STATUS_CODE_ERROR},
		spanDef{id: 3, parent: 1, res: resPayment, name: "pay", startMs: 300, durMs: 100},
	)
	first := KeptTrace{Trace: span.Trace{ID: full.ID, Spans: full.Spans[1:2]}, Reasons: []string{"error"}}
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{first}))
	got := searchAll(t, st)
	require.Len(t, got, 1)
	require.Equal(t, "", got[0].RootSpanName)
	require.Equal(t, 50*ms, got[0].DurationNanos)
	require.Equal(t, base+100*ms, got[0].StartUnixNano)

	late := KeptTrace{Trace: span.Trace{ID: full.ID, Spans: []span.Span{full.Spans[0], full.Spans[2], full.Spans[1]}}, Reasons: []string{"alert"}, Warnings: []string{"late"}}
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{late}))
	got = searchAll(t, st)
	require.Len(t, got, 1)
	want := &readerpb.TraceSummary{
		TraceId: idBytes(tid(7)), RootServiceName: "frontend", RootSpanName: "GET /late",
		StartUnixNano: base, DurationNanos: 1000 * ms, SpanCount: 3, ErrorCount: 1,
		KeptReasons: []string{"error", "alert"}, Services: []string{"checkout", "frontend", "payment"},
	}
	require.True(t, proto.Equal(want, got[0]), "got %v", got[0])
	// The moved start is searchable.
	res, err := st.Search(ctx, &readerpb.SearchRequest{StartUnixNano: base, EndUnixNano: base + 10*ms, Tags: map[string]string{"service.name": "payment"}})
	require.NoError(t, err)
	require.Equal(t, []byte{7}, ids(res))
	tr, _, err := st.Trace(ctx, tid(7))
	require.NoError(t, err)
	require.Len(t, tr.Spans, 3)
	require.Equal(t, []string{"late"}, tr.Warnings)
}

func TestConcurrentLateSpans(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	var defs []spanDef
	for i := range 40 {
		defs = append(defs, spanDef{id: byte(i + 1), parent: 100, res: resCheckout, name: "w", startMs: int64(i), durMs: 1})
	}
	tr := mkTrace(tid(9), defs...)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < len(tr.Spans); i += 4 {
				one := KeptTrace{Trace: span.Trace{ID: tr.ID, Spans: tr.Spans[i : i+1]}}
				if err := st.WriteTraces(ctx, []KeptTrace{one}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	got := searchAll(t, st)
	require.Len(t, got, 1)
	require.EqualValues(t, 40, got[0].SpanCount)
}

func TestRetention(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir(), func(o *Options) { o.Retention = time.Second })
	require.NoError(t, st.WriteTraces(ctx, fixture()[:1]))
	_, found, err := st.Trace(ctx, tid(1))
	require.NoError(t, err)
	require.True(t, found)
	require.Eventually(t, func() bool {
		_, found, err := st.Trace(ctx, tid(1))
		require.NoError(t, err)
		return !found
	}, 10*time.Second, 100*time.Millisecond)
	require.Empty(t, searchAll(t, st))
	svcs, err := st.Services(ctx)
	require.NoError(t, err)
	require.Empty(t, svcs)
}

func TestReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := DefaultOptions()
	st, err := Open(dir, nil, nil, opts)
	require.NoError(t, err)
	require.NoError(t, st.WriteTraces(ctx, fixture()))
	before := searchAll(t, st)
	require.NoError(t, st.Close())
	require.NoError(t, st.Close(), "Close is idempotent")

	st = openStore(t, dir)
	after := searchAll(t, st)
	require.Len(t, after, len(before))
	for i := range before {
		require.True(t, proto.Equal(before[i], after[i]))
	}
	got, found, err := st.Trace(ctx, tid(2))
	require.NoError(t, err)
	require.True(t, found)
	require.Len(t, got.Spans, 2)
	// New traces after reopen sort after the old ones.
	extra := mkTrace(tid(4), spanDef{id: 1, res: resPayment, name: "refund", startMs: 5000, durMs: 1})
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{{Trace: extra}}))
	res, err := st.Search(ctx, &readerpb.SearchRequest{Tags: map[string]string{"service.name": "payment"}})
	require.NoError(t, err)
	require.Equal(t, []byte{4, 2}, ids(res))
	// The list cache was reloaded: known values are not rewritten.
	require.True(t, st.lists.known(svcListKey("frontend")))
}

func TestOpenFails(t *testing.T) {
	opts := DefaultOptions()
	opts.NumCompactors = 1
	_, err := Open(t.TempDir(), nil, nil, opts)
	require.Error(t, err)

	// A registry that already holds the metrics makes Open fail after Badger
	// opened; the directory must be released (lock file) for a retry.
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	st, err := Open(dir, nil, reg, DefaultOptions())
	require.NoError(t, err)
	require.NoError(t, st.Close())
	_, err = Open(dir, nil, reg, DefaultOptions())
	require.Error(t, err)
	st, err = Open(dir, nil, prometheus.NewRegistry(), DefaultOptions())
	require.NoError(t, err)
	require.NoError(t, st.Close())
}

// firstKey returns the first key under prefix.
func firstKey(t *testing.T, st *Store, prefix []byte) []byte {
	t.Helper()
	var key []byte
	require.NoError(t, st.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		it.Rewind()
		require.True(t, it.Valid(), "no key under %x", prefix)
		key = it.Item().KeyCopy(nil)
		return nil
	}))
	return key
}

func TestCorruptValues(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		prefix []byte
		read   func(st *Store) error
	}{
		{"summary", traceKey(tid(1), subSummary), func(st *Store) error { _, _, err := st.Trace(ctx, tid(1)); return err }},
		{"posting fragment", statusPosting(statusOK), func(st *Store) error {
			_, err := st.Search(ctx, &readerpb.SearchRequest{Tags: map[string]string{"status": "ok"}})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openStore(t, t.TempDir())
			require.NoError(t, st.WriteTraces(ctx, fixture()))
			key := firstKey(t, st, tc.prefix)
			require.NoError(t, st.db.Update(func(txn *badger.Txn) error {
				return txn.Set(key, []byte("\xffgarbage"))
			}))
			require.ErrorIs(t, tc.read(st), ErrCorrupt)
			// Other traces still read.
			_, found, err := st.Trace(ctx, tid(2))
			require.NoError(t, err)
			require.True(t, found)
		})
	}
}

// postingSeqs returns the distinct seqs of one posting list, newest first.
func postingSeqs(t *testing.T, st *Store, prefix []byte) []uint64 {
	t.Helper()
	var out []uint64
	require.NoError(t, st.db.View(func(txn *badger.Txn) error {
		ps := newPostingStream(txn, prefix, math.MaxUint64)
		defer ps.close()
		for {
			seq, ok, err := ps.next()
			if err != nil || !ok {
				return err
			}
			if len(out) == 0 || out[len(out)-1] != seq {
				out = append(out, seq)
			}
		}
	}))
	return out
}

func countKeys(t *testing.T, st *Store, prefix []byte) int {
	t.Helper()
	n := 0
	require.NoError(t, st.scanKeys(context.Background(), prefix, func([]byte) bool { n++; return true }))
	return n
}

// chunkCount counts the chunks of a trace.
func chunkCount(t *testing.T, st *Store, id span.TraceID) int {
	t.Helper()
	var sum summary
	require.NoError(t, st.db.View(func(txn *badger.Txn) error {
		var found bool
		var err error
		sum, found, err = st.chunkReader(txn).summary(traceKey(id, subSummary))
		require.True(t, found)
		return err
	}))
	return len(sum.Chunks) + countKeys(t, st, chunkPrefix(sum.Seq, id))
}

func TestReplayRegroupsChunks(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	tr := mkTrace(tid(5),
		spanDef{id: 1, res: resFrontend, name: "root", startMs: 0, durMs: 100},
		spanDef{id: 2, parent: 1, res: resCheckout, name: "a", startMs: 10, durMs: 10, status: tracepb.Status_STATUS_CODE_ERROR},
		spanDef{id: 3, parent: 1, res: resPayment, name: "b", startMs: 20, durMs: 10},
	)
	write := func(groups ...[]int) {
		for _, g := range groups {
			kt := KeptTrace{Trace: span.Trace{ID: tr.ID}}
			for _, i := range g {
				kt.Trace.Spans = append(kt.Trace.Spans, tr.Spans[i])
			}
			require.NoError(t, st.WriteTraces(ctx, []KeptTrace{kt}))
		}
	}
	write([]int{0, 1}, []int{2})
	require.Equal(t, 2, chunkCount(t, st, tid(5)))
	// The same grouping, in another span order, rewrites the same chunks.
	write([]int{1, 0}, []int{2})
	require.Equal(t, 2, chunkCount(t, st, tid(5)))
	// Other groupings add chunks repeating spans.
	write([]int{0}, []int{1, 2}, []int{2, 1, 0})
	require.Equal(t, 5, chunkCount(t, st, tid(5)))

	got, found, err := st.Trace(ctx, tid(5))
	require.NoError(t, err)
	require.True(t, found)
	require.True(t, proto.Equal(span.ToTracesData(tr.Spans), span.ToTracesData(got.Spans)),
		"want %v\ngot  %v", span.ToTracesData(tr.Spans), span.ToTracesData(got.Spans))
	sums := searchAll(t, st)
	require.Len(t, sums, 1)
	require.EqualValues(t, 3, sums[0].SpanCount)
	require.EqualValues(t, 1, sums[0].ErrorCount)
}

func TestBigTraceSplitsChunks(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	var defs []spanDef
	for i := range 300 {
		defs = append(defs, spanDef{id: byte(i % 250), parent: 1, res: resCheckout, name: "w", startMs: int64(i), durMs: 1,
			attrs: []*commonpb.KeyValue{strAttr("payload", strings.Repeat("p", 200))}})
	}
	tr := mkTrace(tid(6), defs...)
	for i := range tr.Spans {
		tr.Spans[i].SpanId = []byte{0x51, byte(i >> 8), 7: byte(i)}
	}
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{{Trace: tr}}))
	require.Greater(t, chunkCount(t, st, tid(6)), 1)
	got, _, err := st.Trace(ctx, tid(6))
	require.NoError(t, err)
	require.Len(t, got.Spans, 300)
	require.EqualValues(t, 300, searchAll(t, st)[0].SpanCount)
}

func TestHighCardinalityKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(dir, nil, nil, func() Options { o := DefaultOptions(); o.MaxIndexedValuesPerKey = 3; return o }())
	require.NoError(t, err)
	write := func(st *Store, from, to int) {
		var batch []KeptTrace
		for i := from; i < to; i++ {
			batch = append(batch, KeptTrace{Trace: mkTrace(tid(byte(i)),
				spanDef{id: 1, res: resFrontend, name: "GET", startMs: int64(i) * 1000, durMs: 10,
					attrs: []*commonpb.KeyValue{strAttr("user.id", fmt.Sprintf("u%d", i)), strAttr("route", fmt.Sprintf("/r%d", i%2))}})})
		}
		require.NoError(t, st.WriteTraces(ctx, batch))
	}
	write(st, 1, 3) // indexed: u1, u2
	write(st, 3, 9) // u3 indexed, then the key is marked
	require.True(t, st.card.isHigh("user.id"))
	require.False(t, st.card.isHigh("route"))
	require.Equal(t, 3, countKeys(t, st, attrPosting("user.id", "")[:1+1+len("user.id")]))
	search := func(st *Store, tags map[string]string) []byte {
		got, err := st.Search(ctx, &readerpb.SearchRequest{Tags: tags})
		require.NoError(t, err)
		return ids(got)
	}
	check := func(st *Store, r0 []byte) {
		require.Equal(t, []byte{2}, search(st, map[string]string{"user.id": "u2"}), "indexed before the mark")
		require.Equal(t, []byte{7}, search(st, map[string]string{"user.id": "u7"}), "checked on spans")
		require.Equal(t, []byte{}, search(st, map[string]string{"user.id": "u99"}))
		require.Equal(t, []byte{7}, search(st, map[string]string{"user.id": "u7", "route": "/r1"}))
		require.Equal(t, []byte{}, search(st, map[string]string{"user.id": "u7", "route": "/r0"}))
		require.Equal(t, r0, search(st, map[string]string{"route": "/r0"}))
	}
	check(st, []byte{8, 6, 4, 2})
	require.NoError(t, st.Close())

	// The mark survives a restart, so later values stay unindexed.
	st = openStore(t, dir, func(o *Options) { o.MaxIndexedValuesPerKey = 3 })
	require.True(t, st.card.isHigh("user.id"))
	write(st, 9, 12)
	require.Equal(t, 3, countKeys(t, st, attrPosting("user.id", "")[:1+1+len("user.id")]))
	check(st, []byte{10, 8, 6, 4, 2})
	require.Equal(t, []byte{10}, search(st, map[string]string{"user.id": "u10"}))
}

// TestOverlappingFragments writes batches whose traces interleave in time
// (late traces), so posting fragments overlap: search must still return
// newest first, honour limits and time ranges, and join postings.
func TestOverlappingFragments(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	tr := func(id byte, startMs int64, svc *span.Resource, status tracepb.Status_StatusCode) KeptTrace {
		return KeptTrace{Trace: mkTrace(tid(id), spanDef{id: 1, res: svc, name: "op", startMs: startMs, durMs: 1, status: status})}
	}
	const sec = 1000
	// Each batch spans several fragment windows and overlaps the others.
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{
		tr(1, 0, resFrontend, 0), tr(4, 3*sec, resFrontend, tracepb.Status_STATUS_CODE_ERROR), tr(9, 60*sec, resFrontend, 0),
	}))
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{
		tr(2, 1*sec, resFrontend, tracepb.Status_STATUS_CODE_ERROR), tr(8, 50*sec, resFrontend, tracepb.Status_STATUS_CODE_ERROR), tr(5, 4*sec, resPayment, 0),
	}))
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{
		tr(3, 2*sec, resFrontend, 0), tr(7, 30*sec, resFrontend, 0), tr(6, 5*sec, resFrontend, tracepb.Status_STATUS_CODE_ERROR),
	}))
	for _, tc := range []struct {
		name string
		q    *readerpb.SearchRequest
		want []byte
	}{
		{"service newest first", &readerpb.SearchRequest{Tags: map[string]string{"service.name": "frontend"}}, []byte{9, 8, 7, 6, 4, 3, 2, 1}},
		{"limit keeps the newest", &readerpb.SearchRequest{Tags: map[string]string{"service.name": "frontend"}, Limit: 3}, []byte{9, 8, 7}},
		{"join", &readerpb.SearchRequest{Tags: map[string]string{"service.name": "frontend", "status": "error"}}, []byte{8, 6, 4, 2}},
		{"join with limit", &readerpb.SearchRequest{Tags: map[string]string{"service.name": "frontend", "status": "error"}, Limit: 2}, []byte{8, 6}},
		{"time range", &readerpb.SearchRequest{Tags: map[string]string{"service.name": "frontend"},
			StartUnixNano: base + 2*sec*ms, EndUnixNano: base + 4*sec*ms}, []byte{4, 3}},
		{"time range far back", &readerpb.SearchRequest{Tags: map[string]string{"status": "error"},
			StartUnixNano: base, EndUnixNano: base + 1500*ms}, []byte{2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := st.Search(ctx, tc.q)
			require.NoError(t, err)
			require.Equal(t, tc.want, ids(got))
		})
	}
	require.Len(t, postingSeqs(t, st, svcPosting("frontend")), 8)
}

func TestMetrics(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	st, err := Open(t.TempDir(), nil, reg, DefaultOptions())
	require.NoError(t, err)
	defer func() { require.NoError(t, st.Close()) }()
	require.NoError(t, st.WriteTraces(ctx, fixture()))
	require.Equal(t, 5.0, counterValue(t, st.metrics.spansWritten))
	require.Equal(t, 3.0, counterValue(t, st.metrics.tracesWritten))
	require.Error(t, st.WriteTraces(ctx, []KeptTrace{{Trace: span.Trace{}}}))
	require.Equal(t, 1.0, counterValue(t, st.metrics.writeErrors))
	families, err := reg.Gather()
	require.NoError(t, err)
	n := 0
	for _, f := range families {
		if f.GetName() == "threadline_store_disk_bytes" || f.GetName() == "threadline_store_write_duration_seconds" {
			n += len(f.GetMetric())
		}
	}
	require.Equal(t, 3, n)
}

func TestWorkloadSearch(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	w := newWorkload(3)
	var all []KeptTrace
	for range 10 {
		batch := w.kept(50)
		all = append(all, batch...)
		require.NoError(t, st.WriteTraces(ctx, batch))
	}
	got, err := st.Search(ctx, &readerpb.SearchRequest{Limit: 1000})
	require.NoError(t, err)
	require.Len(t, got, len(all))
	require.True(t, slices.IsSortedFunc(got, func(a, b *readerpb.TraceSummary) int { return int(b.StartUnixNano - a.StartUnixNano) }))
	tr, found, err := st.Trace(ctx, all[17].Trace.ID)
	require.NoError(t, err)
	require.True(t, found)
	require.True(t, proto.Equal(span.ToTracesData(all[17].Trace.Spans), span.ToTracesData(tr.Spans)))
}

func idBytes(id span.TraceID) []byte { return id[:] }

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}

func TestSameTraceTwiceInOneBatch(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	full := fixture()[0]
	a, b := full, full
	a.Trace.Spans, b.Trace.Spans = full.Trace.Spans[:1], full.Trace.Spans[1:]
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{a, b, a}))
	sums := searchAll(t, st)
	require.Len(t, sums, 1)
	require.EqualValues(t, 2, sums[0].SpanCount)
	require.Len(t, postingSeqs(t, st, svcPosting("frontend")), 1)
	got, _, err := st.Trace(ctx, full.Trace.ID)
	require.NoError(t, err)
	require.True(t, proto.Equal(span.ToTracesData(full.Trace.Spans), span.ToTracesData(got.Spans)))
}

// TestWireDecodedResources: spans decoded from the wire carry their resource
// and scope as received, and the store frames those bytes instead of
// encoding them again; what comes back must equal what went in, and the
// same resource must share one blob however it was decoded.
func TestWireDecodedResources(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	want := fixture()[1]
	wire, err := proto.Marshal(span.ToTracesData(want.Trace.Spans))
	require.NoError(t, err)
	spans, err := new(span.Decoder).DecodeTraces(wire)
	require.NoError(t, err)
	require.NotNil(t, spans[0].Resource.Encoded, "the fast decoder keeps the received bytes")
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{{Trace: span.Trace{ID: want.Trace.ID, Spans: spans}, Reasons: want.Reasons}}))
	blobs := countKeys(t, st, []byte{prefixBlob})

	// A second trace decoded separately (new *Resource values) adds no blob.
	again, err := new(span.Decoder).DecodeTraces(wire)
	require.NoError(t, err)
	other := tid(9)
	for _, s := range again {
		s.TraceId = other[:]
	}
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{{Trace: span.Trace{ID: other, Spans: again}}}))
	require.Equal(t, blobs, countKeys(t, st, []byte{prefixBlob}))

	got, found, err := st.Trace(ctx, want.Trace.ID)
	require.NoError(t, err)
	require.True(t, found)
	require.Len(t, got.Spans, len(want.Trace.Spans))
	for i, s := range got.Spans {
		require.True(t, proto.Equal(want.Trace.Spans[i].Resource.Resource, s.Resource.Resource))
		require.True(t, proto.Equal(want.Trace.Spans[i].Scope.Scope, s.Scope.Scope))
		require.True(t, proto.Equal(want.Trace.Spans[i].Span, s.Span))
	}
}

// TestSeqsAcrossReopen: traces starting in one millisecond get distinct
// seqs, whether written by this process (hints, no reads) or before a
// reopen (probed), and after the hints are forgotten.
func TestSeqsAcrossReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	oneMs := func(from, n int, startMs int64) []KeptTrace {
		out := make([]KeptTrace, n)
		for i := range out {
			out[i] = KeptTrace{Trace: mkTrace(tid(byte(from+i)), spanDef{id: 1, res: resFrontend, name: "op", startMs: startMs, durMs: 1})}
		}
		return out
	}
	st := openStore(t, dir)
	require.NoError(t, st.WriteTraces(ctx, oneMs(1, 5, 0)))
	require.NoError(t, st.WriteTraces(ctx, oneMs(6, 5, 0)))
	require.NoError(t, st.Close())
	st = openStore(t, dir)
	require.NoError(t, st.WriteTraces(ctx, oneMs(11, 5, 0)))  // probed: the millisecond holds seqs from before
	require.NoError(t, st.WriteTraces(ctx, oneMs(16, 5, 10))) // a later millisecond: hints only
	st.writeMu.Lock()
	for i := range 1<<16 + 1 {
		st.seqHint[uint64(i)] = uint64(i) // force the hints to be forgotten
	}
	st.writeMu.Unlock()
	require.NoError(t, st.WriteTraces(ctx, oneMs(21, 5, 10)))

	sums := searchAll(t, st)
	require.Len(t, sums, 25)
	seqs := map[uint64]bool{}
	require.NoError(t, st.db.View(func(txn *badger.Txn) error {
		for i := 1; i <= 25; i++ {
			sum, found, err := st.chunkReader(txn).summary(traceKey(tid(byte(i)), subSummary))
			require.NoError(t, err)
			require.True(t, found)
			require.False(t, seqs[sum.Seq], "seq %d handed out twice", sum.Seq)
			seqs[sum.Seq] = true
		}
		return nil
	}))
	require.Equal(t, 25, countKeys(t, st, []byte{prefixSeq}))
}

// TestDurationBucket: buckets grow with the duration and none is wider
// than an eighth of its lower edge.
func TestDurationBucket(t *testing.T) {
	prev := durationBucket(0)
	lo := map[uint16]uint64{}
	for _, ns := range []uint64{0, 1, 2, 3, 4, 5, 7, 8, 1000, 1001, 1250, 1e6, 2e9, 1<<63 - 1, 1 << 63, math.MaxUint64} {
		b := durationBucket(ns)
		require.GreaterOrEqual(t, b, prev, "bucket of %d", ns)
		prev = b
	}
	for ns := uint64(8); ns < 1<<16; ns++ {
		b := durationBucket(ns)
		if _, ok := lo[b]; !ok {
			lo[b] = ns
		}
		require.LessOrEqual(t, float64(ns), 1.125*float64(lo[b]), "bucket %d holds %d and %d", b, lo[b], ns)
	}
}

// TestDurationSearch: a duration-only search finds traces by their merged
// duration (a late span that lengthens a trace moves it), ignores the
// stale bucket, finds traces an earlier version indexed with duration
// keys, and past the candidate cap falls back to the start-time scan.
func TestDurationSearch(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, t.TempDir())
	search := func(minMs, maxMs int64) []byte {
		t.Helper()
		got, err := st.Search(ctx, &readerpb.SearchRequest{MinDurationNanos: minMs * ms, MaxDurationNanos: maxMs * ms, Limit: 50})
		require.NoError(t, err)
		out := []byte{}
		for _, s := range got {
			out = append(out, s.TraceId[15])
		}
		return out
	}
	// The child first (no root: the trace lasts 100 ms), then the root.
	short := mkTrace(tid(1), spanDef{id: 2, parent: 1, res: resFrontend, name: "b", startMs: 10, durMs: 100})
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{{Trace: short}}))
	require.Equal(t, []byte{1}, search(90, 0))
	require.Empty(t, search(150, 0))

	late := mkTrace(tid(1), spanDef{id: 1, res: resFrontend, name: "a", startMs: 0, durMs: 300})
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{{Trace: late}}))
	require.Equal(t, []byte{1}, search(150, 0), "the lengthened trace")
	require.Empty(t, search(90, 120), "its stale bucket")

	// A trace of an earlier version: a duration key, no duration posting.
	old := mkTrace(tid(2), spanDef{id: 1, res: resFrontend, name: "a", startMs: 5, durMs: 500})
	require.NoError(t, st.WriteTraces(ctx, []KeptTrace{{Trace: old}}))
	require.NoError(t, st.db.Update(func(txn *badger.Txn) error {
		sum, _, err := st.chunkReader(txn).summary(traceKey(tid(2), subSummary))
		require.NoError(t, err)
		if err := txn.Delete(firstKeyIn(t, txn, durPosting(durationBucket(500*uint64(ms))))); err != nil {
			return err
		}
		return txn.Set(appendU64(appendU64([]byte{prefixDuration}, sum.Duration()), sum.Seq), nil)
	}))
	require.Equal(t, []byte{2}, search(400, 0))
	require.Equal(t, []byte{2, 1}, search(150, 0))

	// More candidates than the cap: the start-time scan answers.
	var many []KeptTrace
	for i := range durationScanCap + 10 {
		many = append(many, KeptTrace{Trace: mkTrace(span.TraceID{0xaa, byte(i >> 8), byte(i)}, spanDef{id: 1, res: resFrontend, name: "m", startMs: 1000 + int64(i), durMs: 200})})
	}
	require.NoError(t, st.WriteTraces(ctx, many))
	got := search(150, 0)
	require.Len(t, got, 50)
}

// firstKeyIn returns the first key under prefix.
func firstKeyIn(t *testing.T, txn *badger.Txn, prefix []byte) []byte {
	t.Helper()
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	it.Rewind()
	require.True(t, it.Valid(), "no key under %x", prefix)
	return it.Item().KeyCopy(nil)
}

// TestBatchPostingsNewestFirst checks the per-batch posting lists against
// appending every trace's seq and sorting: every list newest first, each
// trace once per posting it holds (twice when the batch holds it twice).
// One postingLists gathers every round, as a pooled preparer's does.
func TestBatchPostingsNewestFirst(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var lists postingLists
	for round := range 50 {
		const npostings = 12
		n := 1 + rng.IntN(200)
		prepared := make([]preparedTrace, n)
		seqs := make([]uint64, n)
		durs := make([]int, n)
		want := make([][]uint64, npostings)
		for i := range prepared {
			seqs[i] = rng.Uint64N(1 << 40)
			if i > 0 && rng.IntN(10) == 0 {
				seqs[i] = seqs[rng.IntN(i)] // the same trace twice in a batch
			}
			durs[i] = 8 + rng.IntN(npostings-8) // duration postings follow the others
			want[durs[i]] = append(want[durs[i]], seqs[i])
			for _, p := range rng.Perm(8)[:rng.IntN(8)] {
				prepared[i].postings = append(prepared[i].postings, int32(p))
				want[p] = append(want[p], seqs[i])
			}
		}
		got := lists.gather(prepared, seqs, durs, npostings)
		for p := range want {
			if len(want[p]) == 0 {
				require.Empty(t, got[p], "round %d, posting %d", round, p)
				continue
			}
			slices.Sort(want[p])
			slices.Reverse(want[p])
			require.Equal(t, want[p], got[p], "round %d, posting %d", round, p)
		}
	}
}
