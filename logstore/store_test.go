package logstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	otlplogs "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"go.uber.org/goleak"

	"github.com/threadline/threadline/span"
)

// Bleve starts a process-wide analysis worker pool in its package init.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/blevesearch/bleve_index_api.AnalysisWorker"))
}

var (
	traceA = span.TraceID{0x0a, 0xf7, 15: 0x9c}
	traceB = span.TraceID{0x4b, 0xf9, 15: 0xa6}
	span1  = span.SpanID{7: 1}
	span2  = span.SpanID{7: 2}
)

func str(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func res(svc string) *resourcepb.Resource {
	return &resourcepb.Resource{Attributes: []*commonpb.KeyValue{str("service.name", svc), str("host.name", "h1")}}
}

type lineOpt func(*Record)

func withTrace(t span.TraceID, s span.SpanID) lineOpt {
	return func(r *Record) { r.Log.TraceId, r.Log.SpanId = t[:], s[:] }
}

func withAttr(k, v string) lineOpt {
	return func(r *Record) { r.Log.Attributes = append(r.Log.Attributes, str(k, v)) }
}

func withSkew(d time.Duration) lineOpt { return func(r *Record) { r.SkewOffset = d } }

func line(svc string, at time.Time, sev int32, body string, opts ...lineOpt) Record {
	r := Record{
		Resource: res(svc),
		Scope:    &commonpb.InstrumentationScope{Name: "lib"},
		Log: &otlplogs.LogRecord{
			TimeUnixNano:   uint64(at.UnixNano()),
			SeverityNumber: otlplogs.SeverityNumber(sev),
			SeverityText:   LevelName(sev),
			Body:           &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: body}},
		},
	}
	for _, o := range opts {
		o(&r)
	}
	return r
}

func testOptions() Options {
	o := DefaultOptions()
	o.MaintenanceInterval = time.Hour // tests run maintenance by hand
	return o
}

func open(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, nil, nil, opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

func bodies(es []Entry) []string {
	out := make([]string, 0, len(es))
	for _, e := range es {
		out = append(out, e.Body)
	}
	return out
}

func TestTraceLogsExactAndOrdered(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir(), testOptions())
	t0 := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// Written out of order, across services and levels, with a skewed host.
	require.NoError(t, s.Write(ctx, []Record{
		line("checkout", at(30), SeverityError, "payment failed", withTrace(traceA, span2), withAttr("order", "42")),
		line("checkout", at(10), SeverityDebug, "cart loaded", withTrace(traceA, span1)),
		line("payments", at(25), SeverityInfo, "charging card", withTrace(traceA, span2), withSkew(-10*time.Millisecond)),
		line("checkout", at(0), SeverityTrace, "enter handler", withTrace(traceA, span1)),
		line("checkout", at(20), SeverityWarn, "slow cart", withTrace(traceA, span1)),
		line("checkout", at(5), SeverityError, "other trace", withTrace(traceB, span1)),
		line("checkout", at(6), SeverityInfo, "no trace at all"),
	}))

	got, err := s.TraceLogs(ctx, traceA, nil, 0)
	require.NoError(t, err)
	// "charging card" is at 25ms on its host, 15ms once skew-corrected.
	require.Equal(t, []string{"enter handler", "cart loaded", "charging card", "slow cart", "payment failed"}, bodies(got))
	require.Equal(t, at(15).UnixNano(), got[2].Time.UnixNano())
	require.Equal(t, at(25).UnixNano(), got[2].OriginalTime.UnixNano())
	require.Equal(t, "payments", got[2].Service)
	require.Equal(t, traceA, got[4].TraceID)
	require.Equal(t, span2, got[4].SpanID)
	require.Equal(t, "42", got[4].Attributes["order"])
	require.Equal(t, "h1", got[4].Resource["host.name"])
	require.Equal(t, "ERROR", got[4].SeverityText)

	cases := []struct {
		name   string
		span   *span.SpanID
		minSev int32
		want   []string
	}{
		{"span filter", &span1, 0, []string{"enter handler", "cart loaded", "slow cart"}},
		{"min level warn", nil, SeverityWarn, []string{"slow cart", "payment failed"}},
		{"span and level", &span2, SeverityInfo, []string{"charging card", "payment failed"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := s.TraceLogs(ctx, traceA, c.span, c.minSev)
			require.NoError(t, err)
			require.Equal(t, c.want, bodies(got))
		})
	}
	none, err := s.TraceLogs(ctx, span.TraceID{1, 15: 1}, nil, 0)
	require.NoError(t, err)
	require.Empty(t, none)
}

// TestPolicyThroughStore applies the policy as the indexer does and checks
// what the store then holds.
func TestPolicyThroughStore(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir(), testOptions())
	p := s.Policy()
	now := time.Now()
	t0 := now.Add(-time.Minute)
	kept, dropped := traceA, traceB
	var recs []Record
	for i, sev := range []int32{SeverityTrace, SeverityDebug, SeverityInfo, SeverityWarn, SeverityError, SeverityFatal} {
		at := t0.Add(time.Duration(i) * time.Millisecond)
		recs = append(recs,
			line("checkout", at, sev, "kept "+LevelName(sev), withTrace(kept, span1)),
			line("checkout", at, sev, "dropped "+LevelName(sev), withTrace(dropped, span1)),
			line("checkout", at, sev, "untraced "+LevelName(sev)),
		)
	}
	var keep []Record
	for _, r := range recs {
		traceKept := len(r.Log.TraceId) > 0 && span.TraceID(r.Log.TraceId) == kept
		if p.Keep("checkout", Severity(r.Log), traceKept, len(r.Log.TraceId) > 0, now) {
			keep = append(keep, r)
		}
	}
	require.NoError(t, s.Write(ctx, keep))

	got, err := s.TraceLogs(ctx, kept, nil, 0)
	require.NoError(t, err)
	require.Equal(t, []string{"kept TRACE", "kept DEBUG", "kept INFO", "kept WARN", "kept ERROR", "kept FATAL"}, bodies(got))
	got, err = s.TraceLogs(ctx, dropped, nil, 0)
	require.NoError(t, err)
	require.Equal(t, []string{"dropped WARN", "dropped ERROR", "dropped FATAL"}, bodies(got))
	got, err = s.Select(ctx, Selector{LineContains: []string{"untraced"}, Forward: true})
	require.NoError(t, err)
	require.Equal(t, []string{"untraced INFO", "untraced WARN", "untraced ERROR", "untraced FATAL"}, bodies(got))
}

func TestPolicyOverrideAppliesAndExpires(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, nil, nil, testOptions())
	require.NoError(t, err)
	p := s.Policy()
	now := time.Now()
	until := now.Add(10 * time.Minute)

	type check struct {
		svc              string
		sev              int32
		traceKept, trace bool
		at               time.Time
		want             bool
	}
	run := func(p *Policy, checks []check) {
		t.Helper()
		for i, c := range checks {
			require.Equal(t, c.want, p.Keep(c.svc, c.sev, c.traceKept, c.trace, c.at), "check %d: %+v", i, c)
		}
	}
	before := []check{
		{"checkout", SeverityTrace, true, true, now, true},
		{"checkout", SeverityInfo, false, true, now, false},
		{"checkout", SeverityWarn, false, true, now, true},
		{"checkout", SeverityDebug, false, false, now, false},
		{"checkout", SeverityInfo, false, false, now, true},
	}
	run(p, before)

	require.ErrorIs(t, p.SetOverride("checkout", 0, until), ErrBadOverride)
	require.ErrorIs(t, p.SetOverride("", SeverityDebug, until), ErrBadOverride)
	require.ErrorIs(t, p.SetOverride("checkout", SeverityDebug, now.Add(48*time.Hour)), ErrBadOverride)
	require.NoError(t, p.SetOverride("checkout", SeverityDebug, until))

	during := []check{
		{"checkout", SeverityDebug, false, true, now, true},
		{"checkout", SeverityDebug, false, false, now, true},
		{"checkout", SeverityTrace, false, false, now, false},
		{"payments", SeverityDebug, false, false, now, false}, // other service untouched
		{"checkout", SeverityDebug, false, true, until.Add(time.Second), false},
		{"checkout", SeverityDebug, false, false, until.Add(time.Second), false},
	}
	run(p, during)
	require.Equal(t, []Override{{Service: "checkout", Level: SeverityDebug, Until: until}}, p.Overrides(now))

	// It survives a restart.
	require.NoError(t, s.Close())
	s, err = Open(dir, nil, nil, testOptions())
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close()) }()
	p = s.Policy()
	got := p.Overrides(now)
	require.Len(t, got, 1)
	require.True(t, got[0].Until.Equal(until))
	run(p, during)

	// Expired overrides are purged; an override can be lifted early.
	require.Empty(t, p.Overrides(until.Add(time.Second)))
	run(p, before)
	require.NoError(t, p.SetOverride("payments", SeverityTrace, now.Add(time.Minute)))
	require.NoError(t, p.SetOverride("payments", SeverityTrace, now.Add(-time.Second)))
	require.Empty(t, p.Overrides(now))
}

func TestSearch(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir(), testOptions())
	t0 := time.Now().Add(-10 * time.Minute)
	require.NoError(t, s.Write(ctx, []Record{
		line("checkout", t0, SeverityError, "connection refused by inventory-db", withTrace(traceA, span2)),
		line("checkout", t0.Add(time.Second), SeverityInfo, "cart loaded for user", withAttr("user", "alice")),
		line("payments", t0.Add(2*time.Second), SeverityWarn, "retrying connection", withTrace(traceB, span1)),
	}))
	cases := []struct {
		name       string
		q          string
		start, end time.Time
		want       []string
	}{
		{"word in body, newest first", "connection", time.Time{}, time.Time{}, []string{"retrying connection", "connection refused by inventory-db"}},
		{"attribute by name", `attr:"user=alice"`, time.Time{}, time.Time{}, []string{"cart loaded for user"}},
		{"phrase", `"refused by"`, time.Time{}, time.Time{}, []string{"connection refused by inventory-db"}},
		{"attribute value bare", "alice", time.Time{}, time.Time{}, []string{"cart loaded for user"}},
		{"keyword field", "connection +service_name:payments", time.Time{}, time.Time{}, []string{"retrying connection"}},
		{"time range", "connection", t0.Add(-time.Second), t0.Add(time.Second), []string{"connection refused by inventory-db"}},
		{"no match", "nothinglikethis", time.Time{}, time.Time{}, []string{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := s.Search(ctx, c.q, c.start, c.end, 10)
			require.NoError(t, err)
			require.Equal(t, c.want, bodies(got))
		})
	}
	got, err := s.Search(ctx, "refused", time.Time{}, time.Time{}, 10)
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, traceA, got[0].TraceID, "a search hit links to its trace")
	require.Equal(t, span2, got[0].SpanID)

	_, err = s.Search(ctx, `body:"unclosed`, time.Time{}, time.Time{}, 10)
	require.ErrorIs(t, err, ErrBadQuery)
}

func TestIdempotentRewrite(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(dir, nil, nil, testOptions())
	require.NoError(t, err)
	t0 := time.Now().Add(-time.Minute)
	batch := []Record{
		line("checkout", t0, SeverityInfo, "same line", withTrace(traceA, span1)),
		line("checkout", t0, SeverityInfo, "same line", withTrace(traceA, span1), withAttr("k", "v")), // differs by attribute
		line("checkout", t0, SeverityInfo, "untraced line"),
	}
	require.NoError(t, s.Write(ctx, batch))
	require.NoError(t, s.Write(ctx, batch))
	require.NoError(t, s.Close())
	// A replay after a restart too.
	s = open(t, dir, testOptions())
	require.NoError(t, s.Write(ctx, batch))

	got, err := s.TraceLogs(ctx, traceA, nil, 0)
	require.NoError(t, err)
	require.Len(t, got, 2)
	found, err := s.Search(ctx, "line", time.Time{}, time.Time{}, 100)
	require.NoError(t, err)
	require.Len(t, found, 3)
}

func TestRetentionDropsShardsAndKeys(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.Retention = 2 * time.Second
	opts.ShardDuration = 100 * time.Millisecond
	dir := t.TempDir()
	s := open(t, dir, opts)
	t0 := time.Now()
	old := t0.Add(-1500 * time.Millisecond)
	var recs []Record
	for i := range 5 {
		at := old.Add(time.Duration(i) * 50 * time.Millisecond)
		recs = append(recs, line("checkout", at, SeverityInfo, fmt.Sprintf("old line %d", i), withTrace(traceA, span1)))
	}
	require.NoError(t, s.Write(ctx, recs))
	shardDirs := func() int {
		es, err := os.ReadDir(filepath.Join(dir, "bleve"))
		require.NoError(t, err)
		return len(es)
	}
	require.GreaterOrEqual(t, shardDirs(), 2)
	got, err := s.TraceLogs(ctx, traceA, nil, 0)
	require.NoError(t, err)
	require.Len(t, got, 5)

	// Lines already past retention are not written at all.
	require.NoError(t, s.Write(ctx, []Record{line("checkout", t0.Add(-time.Hour), SeverityInfo, "ancient", withTrace(traceB, span1))}))
	got, err = s.TraceLogs(ctx, traceB, nil, 0)
	require.NoError(t, err)
	require.Empty(t, got)

	// Badger's TTL has whole-second resolution: wait past it.
	time.Sleep(2600 * time.Millisecond)
	fresh := time.Now()
	require.NoError(t, s.Write(ctx, []Record{line("checkout", fresh, SeverityInfo, "fresh line", withTrace(traceA, span1))}))
	require.NoError(t, s.RunMaintenance())
	require.Equal(t, 1, shardDirs(), "only the fresh line's shard is left")
	got, err = s.TraceLogs(ctx, traceA, nil, 0)
	require.NoError(t, err)
	require.Equal(t, []string{"fresh line"}, bodies(got))
	found, err := s.Search(ctx, "line", time.Time{}, time.Time{}, 100)
	require.NoError(t, err)
	require.Equal(t, []string{"fresh line"}, bodies(found))
}

func TestIdleShardsCloseAndReopen(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.ShardIdleTimeout = time.Nanosecond
	s := open(t, t.TempDir(), opts)
	require.NoError(t, s.Write(ctx, []Record{line("checkout", time.Now(), SeverityInfo, "hello idle")}))
	_, openN := s.shards.counts()
	require.Equal(t, 1, openN)
	require.NoError(t, s.RunMaintenance())
	known, openN := s.shards.counts()
	require.Equal(t, 1, known)
	require.Equal(t, 0, openN)
	got, err := s.Search(ctx, "idle", time.Time{}, time.Time{}, 10)
	require.NoError(t, err)
	require.Equal(t, []string{"hello idle"}, bodies(got))
}

func TestSelectAndLabels(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir(), testOptions())
	t0 := time.Now().Add(-time.Minute)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	require.NoError(t, s.Write(ctx, []Record{
		line("checkout", at(1), SeverityInfo, "GET /cart 200", withTrace(traceA, span1)),
		line("checkout", at(2), SeverityError, "GET /pay 500", withTrace(traceA, span2)),
		line("payments", at(3), SeverityError, "card declined", withTrace(traceB, span1)),
		line("payments", at(4), SeverityInfo, "GET /health 200"),
	}))
	cases := []struct {
		name string
		sel  Selector
		want []string
	}{
		{"service backward", Selector{Service: "checkout"}, []string{"GET /pay 500", "GET /cart 200"}},
		{"service forward", Selector{Service: "checkout", Forward: true}, []string{"GET /cart 200", "GET /pay 500"}},
		{"level", Selector{Level: "error", Forward: true}, []string{"GET /pay 500", "card declined"}},
		{"line contains", Selector{LineContains: []string{"GET", " 200"}, Forward: true}, []string{"GET /cart 200", "GET /health 200"}},
		{"line not contains", Selector{Service: "payments", LineNotContains: []string{"health"}}, []string{"card declined"}},
		{"trace id selector", Selector{TraceID: traceA.String(), Forward: true}, []string{"GET /cart 200", "GET /pay 500"}},
		{"trace id as line filter (Grafana)", Selector{Service: "checkout", LineContains: []string{traceA.String()}}, []string{"GET /pay 500", "GET /cart 200"}},
		{"span id", Selector{SpanID: span2.String()}, []string{"GET /pay 500"}},
		{"limit", Selector{Limit: 1}, []string{"GET /health 200"}},
		{"time range", Selector{Start: at(2), End: at(3), Forward: true}, []string{"GET /pay 500", "card declined"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := s.Select(ctx, c.sel)
			require.NoError(t, err)
			require.Equal(t, c.want, bodies(got))
		})
	}
	_, err := s.Select(ctx, Selector{Level: "loud"})
	require.ErrorIs(t, err, ErrBadQuery)

	svcs, err := s.LabelValues(ctx, "service_name", time.Time{}, time.Time{})
	require.NoError(t, err)
	require.Equal(t, []string{"checkout", "payments"}, svcs)
	levels, err := s.LabelValues(ctx, "level", time.Time{}, time.Time{})
	require.NoError(t, err)
	require.Equal(t, []string{"error", "info"}, levels)
	none, err := s.LabelValues(ctx, "trace_id", time.Time{}, time.Time{})
	require.NoError(t, err)
	require.Empty(t, none)
}

func TestLevels(t *testing.T) {
	cases := []struct {
		in   string
		want int32
		ok   bool
	}{
		{"trace", 1, true}, {"DEBUG", 5, true}, {"info", 9, true}, {"Warn", 13, true}, {"warning", 13, true},
		{"WARN3", 13, true}, {"error", 17, true}, {"fatal", 21, true}, {"15", 15, true},
		{"loud", 0, false}, {"0", 0, false}, {"25", 0, false}, {"", 0, false},
	}
	for _, c := range cases {
		got, err := ParseLevel(c.in)
		if !c.ok {
			require.Error(t, err, c.in)
			continue
		}
		require.NoError(t, err, c.in)
		require.Equal(t, c.want, got, c.in)
	}
	require.Equal(t, "WARN", LevelName(14))
	require.Equal(t, "FATAL", LevelName(24))
	require.Equal(t, "UNSPECIFIED", LevelName(0))
	require.Equal(t, SeverityWarn, Severity(&otlplogs.LogRecord{SeverityText: "warning"}))
	require.Equal(t, SeverityInfo, Severity(&otlplogs.LogRecord{}))
	require.Equal(t, int32(18), Severity(&otlplogs.LogRecord{SeverityNumber: 18, SeverityText: "info"}))
}

func TestOptionsValidate(t *testing.T) {
	require.NoError(t, DefaultOptions().Validate())
	bad := DefaultOptions()
	bad.MinLevelDropped = "loud"
	require.ErrorContains(t, bad.Validate(), "logs-min-level-dropped")
	bad = DefaultOptions()
	bad.ShardDuration = 30 * 24 * time.Hour
	require.ErrorContains(t, bad.Validate(), "exceeds logs.retention")
}
