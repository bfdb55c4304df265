package ui

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/threadline/threadline/alerting"
	"github.com/threadline/threadline/index"
	"github.com/threadline/threadline/logstore"
	logsrpc "github.com/threadline/threadline/proto/logs/v1"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/query"
	"github.com/threadline/threadline/readapi"
	"github.com/threadline/threadline/red"
	"github.com/threadline/threadline/span"
)

// The browser tests drive a real headless Chromium against the real stack:
// Badger index.Store, red.Store and logstore.Store → readapi gRPC server →
// query.API (with an alerting.Store behind its Alertmanager webhook) + UI
// over HTTP. Nothing is faked.

const xssPayload = `<img src=x onerror="window.__pwned=1">`

var (
	errTraceID = mustID("0af7651916cd43dd8448eb211c80319c")
	okTraceID  = mustID("4bf92f3577b34da6a3ce929d0e0e4736")
	bigTraceID = mustID("00000000000000000000000000010000")
	// The browser's clock is now; the fixtures sit a few minutes back so
	// the UI's default "last 1h" search finds them.
	base = time.Now().Add(-10 * time.Minute).Truncate(time.Second)
)

func mustID(s string) span.TraceID {
	id, err := span.ParseTraceID(s)
	if err != nil {
		panic(err)
	}
	return id
}

func sidN(n int) []byte {
	return []byte{0x5a, 0, 0, 0, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
}

func sidHex(n int) string { return fmt.Sprintf("%x", sidN(n)) }

func sattr(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func iattr(k string, v int64) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v}}}
}

type fixSpan struct {
	id, parent int
	service    string
	name       string
	from, to   time.Duration
	kind       tracepb.Span_SpanKind
	err        string
	attrs      []*commonpb.KeyValue
}

func buildTrace(id span.TraceID, at time.Time, specs []fixSpan) index.KeptTrace {
	resources := map[string]*span.Resource{}
	scope := &span.Scope{Scope: &commonpb.InstrumentationScope{Name: "noodle-shop", Version: "1.0"}}
	kt := index.KeptTrace{Trace: span.Trace{ID: id}}
	for i, f := range specs {
		res, ok := resources[f.service]
		if !ok {
			res = &span.Resource{Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{
				sattr("service.name", f.service), sattr("host.name", f.service+"-1")}}}
			resources[f.service] = res
		}
		sp := &tracepb.Span{
			TraceId: id[:], SpanId: sidN(f.id), Name: f.name, Kind: f.kind,
			StartTimeUnixNano: uint64(at.Add(f.from).UnixNano()), EndTimeUnixNano: uint64(at.Add(f.to).UnixNano()),
			Attributes: append([]*commonpb.KeyValue{iattr("threadline.logical_time", int64(i+1))}, f.attrs...),
		}
		if f.parent != 0 {
			sp.ParentSpanId = sidN(f.parent)
		}
		if f.err != "" {
			sp.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: f.err}
			sp.Events = []*tracepb.Span_Event{{Name: "exception", TimeUnixNano: sp.EndTimeUnixNano,
				Attributes: []*commonpb.KeyValue{sattr("exception.message", f.err)}}}
		}
		kt.Trace.Spans = append(kt.Trace.Spans, span.Span{Span: sp, Resource: res, Scope: scope})
	}
	return kt
}

// errSpans is the noodle-shop order from CONTEXT.md: the customer waited
// three minutes, 2 min 55 s of it on the bank API behind payment.
var errSpans = []fixSpan{
	{1, 0, "order", "POST /orders", 0, 180 * time.Second, tracepb.Span_SPAN_KIND_SERVER, "", nil},
	{2, 1, "member", "GetMember", 200 * time.Millisecond, 500 * time.Millisecond, tracepb.Span_SPAN_KIND_CLIENT, "", nil},
	{3, 1, "inventory", "Reserve", 600 * time.Millisecond, 1200 * time.Millisecond, tracepb.Span_SPAN_KIND_CLIENT, "", nil},
	{4, 1, "payment", "Charge", 1500 * time.Millisecond, 178 * time.Second, tracepb.Span_SPAN_KIND_CLIENT, "", nil},
	{5, 4, "payment", "Charge", 1700 * time.Millisecond, 177800 * time.Millisecond, tracepb.Span_SPAN_KIND_SERVER, "",
		[]*commonpb.KeyValue{iattr("threadline.clock_skew_ns", int64(2*time.Second))}},
	{6, 5, "bank-api", "POST /authorize", 2 * time.Second, 177 * time.Second, tracepb.Span_SPAN_KIND_CLIENT, "bank API timeout",
		[]*commonpb.KeyValue{sattr("peer.service", "bank")}},
	{9, 1, "loyalty", "AddPoints", 1600 * time.Millisecond, 3 * time.Second, tracepb.Span_SPAN_KIND_CLIENT, "", nil},
	{7, 1, "kitchen", "Cook", 178100 * time.Millisecond, 179500 * time.Millisecond, tracepb.Span_SPAN_KIND_INTERNAL, "", nil},
	{8, 1, "notification", xssPayload, 179500 * time.Millisecond, 179900 * time.Millisecond, tracepb.Span_SPAN_KIND_PRODUCER, "",
		[]*commonpb.KeyValue{sattr("note", xssPayload)}},
}

// bigSpans is a 10,000-span trace: a root, 99 children with 100 children each.
func bigSpans() []fixSpan {
	out := []fixSpan{{1, 0, "batch", "run", 0, 100 * time.Second, tracepb.Span_SPAN_KIND_SERVER, "", nil}}
	n := 2
	for c := range 99 {
		cid := n
		n++
		from := time.Duration(c) * time.Second
		out = append(out, fixSpan{cid, 1, "worker", fmt.Sprintf("chunk %d", c), from, from + 900*time.Millisecond, tracepb.Span_SPAN_KIND_INTERNAL, "", nil})
		for g := range 100 {
			gf := from + time.Duration(g)*8*time.Millisecond
			out = append(out, fixSpan{n, cid, "db", fmt.Sprintf("row %d.%d", c, g), gf, gf + 5*time.Millisecond, tracepb.Span_SPAN_KIND_CLIENT, "", nil})
			n++
		}
	}
	return out
}

// logLine is one fixture log line of the error trace.
type logLine struct {
	at      time.Duration
	sev     logspb.SeverityNumber
	level   string
	body    string
	span    int
	service string
}

// errLogs are the error trace's log lines, written out of time order: the
// store and the UI put them in order.
var errLogs = []logLine{
	{170 * time.Second, logspb.SeverityNumber_SEVERITY_NUMBER_ERROR, "ERROR", "authorize timed out after 175s", 6, "bank-api"},
	{100 * time.Millisecond, logspb.SeverityNumber_SEVERITY_NUMBER_INFO, "INFO", "order received", 1, "order"},
	{3 * time.Second, logspb.SeverityNumber_SEVERITY_NUMBER_DEBUG, "DEBUG", "calling bank " + xssPayload, 6, "bank-api"},
	{400 * time.Millisecond, logspb.SeverityNumber_SEVERITY_NUMBER_WARN, "WARN", "member cache miss", 2, "member"},
}

func logRecords(id span.TraceID, at time.Time, lines []logLine) []logstore.Record {
	scope := &commonpb.InstrumentationScope{Name: "noodle-shop", Version: "1.0"}
	out := make([]logstore.Record, 0, len(lines))
	for _, l := range lines {
		out = append(out, logstore.Record{
			Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{sattr("service.name", l.service), sattr("host.name", l.service+"-1")}},
			Scope:    scope,
			Log: &logspb.LogRecord{
				TimeUnixNano: uint64(at.Add(l.at).UnixNano()), SeverityNumber: l.sev, SeverityText: l.level,
				Body:    &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: l.body}},
				TraceId: id[:], SpanId: sidN(l.span),
			},
		})
	}
	return out
}

// amPayload is an Alertmanager (version 4) notification of a firing latency
// alert on service order, started at startsAt.
func amPayload(startsAt time.Time) []byte {
	return fmt.Appendf(nil, `{
  "version": "4",
  "groupKey": "{}:{alertname=\"OrderLatencyHigh\"}",
  "truncatedAlerts": 0,
  "status": "firing",
  "receiver": "threadline",
  "groupLabels": {"alertname": "OrderLatencyHigh"},
  "commonLabels": {"alertname": "OrderLatencyHigh", "service": "order", "severity": "page"},
  "commonAnnotations": {},
  "externalURL": "http://alertmanager:9093",
  "alerts": [
    {"status": "firing",
     "labels": {"alertname": "OrderLatencyHigh", "service": "order", "severity": "page"},
     "annotations": {"summary": "order p99 above 10s"},
     "startsAt": %q, "endsAt": "0001-01-01T00:00:00Z",
     "generatorURL": "http://prometheus:9090/graph?g0.expr=x", "fingerprint": "0badc0ffee000001"}
  ]
}`, startsAt.Format(time.RFC3339Nano))
}

// startStack runs the query stack the product runs: the span index, the RED
// store and the log store behind the indexer's read gRPC API, and the query
// API with an alert store, fed the way the indexer and Alertmanager feed
// them: traces written, observed into RED and linked; log lines written;
// an alert received through the webhook.
func startStack(t *testing.T, traces []index.KeptTrace, logs []logstore.Record, alertAt time.Time) string {
	t.Helper()
	ctx := context.Background()
	logger := slog.New(slog.DiscardHandler)
	st, err := index.Open(t.TempDir(), logger, nil, index.DefaultOptions())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	require.NoError(t, st.WriteTraces(ctx, traces))

	rs, err := red.Open(t.TempDir(), logger, nil, red.DefaultOptions())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, rs.Close()) })
	for i := range traces {
		rs.Observe(&traces[i].Trace)
	}
	// The indexer links a trace once the sampler kept it.
	for _, kt := range traces {
		rs.Link(kt.Trace.ID, kt.Reasons)
	}
	require.NoError(t, rs.Flush(ctx))

	ls, err := logstore.Open(t.TempDir(), logger, nil, logstore.DefaultOptions())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, ls.Close()) })
	require.NoError(t, ls.Write(ctx, logs))

	as, err := alerting.OpenStore(t.TempDir(), logger, nil, alerting.DefaultStoreOptions())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, as.Close()) })

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gs := grpc.NewServer()
	readerpb.RegisterReaderServer(gs, readapi.New(st, logger, readapi.WithRED(rs)))
	logsrpc.RegisterLogReaderServer(gs, readapi.NewLogs(ls, ls.Policy(), logger))
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(); gs.Stop(); <-done })

	api := query.New(query.DefaultConfig(), []readerpb.ReaderClient{readerpb.NewReaderClient(conn)}, logger, nil,
		query.WithLogReaders([]logsrpc.LogReaderClient{logsrpc.NewLogReaderClient(conn)}),
		query.WithAlerts(as, nil))
	mux := http.NewServeMux()
	api.Register(mux)
	New(DefaultConfig(), logger).Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	resp, err := http.Post(srv.URL+"/api/v1/alertmanager", "application/json", bytes.NewReader(amPayload(alertAt)))
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	return srv.URL
}

// getJSON decodes a GET of the stack's API.
func getJSON(t *testing.T, url string, out any) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.NoError(t, json.Unmarshal(body, out), string(body))
}

func chromiumPath() string {
	if p := os.Getenv("THREADLINE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

type browser struct {
	t    *testing.T
	ctx  context.Context
	base string
	dir  string
}

func newBrowser(t *testing.T, baseURL string) *browser {
	t.Helper()
	path := chromiumPath()
	if path == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium not found; install it (apt-get install -y chromium) or set THREADLINE_CHROMIUM")
		}
		t.Skip("chromium not found; set THREADLINE_CHROMIUM or install chromium to run the browser tests")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 720),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() { cancelT(); cancelB(); cancelA() })
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(1280, 720)))
	dir := os.Getenv("THREADLINE_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	return &browser{t: t, ctx: ctx, base: baseURL, dir: dir}
}

func (b *browser) run(actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	require.NoError(b.t, chromedp.Do(b.ctx, actions...))
}

// eval runs js and decodes its JSON value into out.
func (b *browser) eval(js string, out any) {
	b.t.Helper()
	raw, err := chromedp.Run(b.ctx, chromedp.Evaluate[json.RawMessage](js))
	require.NoError(b.t, err, js)
	require.NoError(b.t, json.Unmarshal(raw, out), js)
}

// execJS runs js for its effect.
func execJS(js string) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := chromedp.Evaluate[json.RawMessage]("("+js+", null)")(ctx, t)
		return chromedp.Void{}, err
	}
}

func (b *browser) screenshot(name string) {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.CaptureScreenshot())
	require.NoError(b.t, err)
	require.NoError(b.t, os.WriteFile(filepath.Join(b.dir, name+".png"), png, 0o644))
}

// waitJS polls a boolean expression.
func (b *browser) waitJS(expr string) {
	b.t.Helper()
	_, err := chromedp.Run(b.ctx, chromedp.Poll[json.RawMessage](expr, chromedp.WithPollingTimeout(15*time.Second)))
	require.NoError(b.t, err, expr)
}

// waitCharts waits for the metric view to load and requires charts: the
// real RED API answered the UI's request.
func (b *browser) waitCharts() {
	b.t.Helper()
	b.waitJS(`!!document.getElementById('charts') && !!document.getElementById('charts').firstChild && !/Loading/.test(document.getElementById('charts').textContent)`)
	var charts string
	b.eval(`document.getElementById('charts').textContent`, &charts)
	require.NotContains(b.t, charts, "Metrics failed")
	require.NotContains(b.t, charts, "not available")
	b.waitJS(`!!document.querySelector('#charts .chart-svg')`)
}

type rowInfo struct {
	ID       string  `json:"id"`
	Index    int     `json:"index"`
	Depth    int     `json:"depth"`
	Left     float64 `json:"left"`
	Width    float64 `json:"width"`
	Selected bool    `json:"selected"`
	Error    bool    `json:"error"`
	Text     string  `json:"text"`
	CP       int     `json:"cp"`
}

const rowsJS = `[...document.querySelectorAll('.span-row')].map(r => {
  const cell = r.querySelector('.timeline-cell').getBoundingClientRect();
  const bar = r.querySelector('.bar').getBoundingClientRect();
  return {id: r.dataset.spanId, index: +r.dataset.index, depth: +r.dataset.depth,
    left: (bar.left - cell.left) / cell.width, width: bar.width / cell.width,
    selected: r.classList.contains('selected'), error: r.classList.contains('error'),
    text: r.querySelector('.name-cell').textContent, cp: r.querySelectorAll('.cp').length};
}).sort((a, b) => a.index - b.index)`

func TestBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("browser tests are not short")
	}
	okSpans := []fixSpan{
		{1, 0, "order", "GET /menu", 0, 120 * time.Millisecond, tracepb.Span_SPAN_KIND_SERVER, "", nil},
		{2, 1, "inventory", "List", 10 * time.Millisecond, 90 * time.Millisecond, tracepb.Span_SPAN_KIND_CLIENT, "", nil},
	}
	errTrace := buildTrace(errTraceID, base, errSpans)
	errTrace.Reasons = []string{"error", "latency_topn"}
	okTrace := buildTrace(okTraceID, base.Add(time.Minute), okSpans)
	okTrace.Reasons = []string{"baseline"}
	bigTrace := buildTrace(bigTraceID, base.Add(-time.Minute), bigSpans())
	bigTrace.Reasons = []string{"latency_topn"}
	alertAt := base.Add(3 * time.Minute)
	url := startStack(t, []index.KeptTrace{errTrace, okTrace, bigTrace}, logRecords(errTraceID, base, errLogs), alertAt)

	// What the real stores answer, before the browser looks at it.
	var alerts struct {
		Alerts []struct {
			Name, State string
			T           int64
			TraceIDs    []string
		}
	}
	getJSON(t, url+"/api/v1/alerts", &alerts)
	require.Len(t, alerts.Alerts, 1)
	require.Equal(t, "OrderLatencyHigh", alerts.Alerts[0].Name)
	require.Equal(t, "firing", alerts.Alerts[0].State)
	require.Equal(t, alertAt.Unix(), alerts.Alerts[0].T)
	require.Contains(t, alerts.Alerts[0].TraceIDs, errTraceID.String(), "the webhook linked the slow order trace")
	var redRes struct {
		Series []struct {
			T        int64
			Count    uint64
			P99      float64
			TraceIDs []string
		}
	}
	getJSON(t, fmt.Sprintf("%s/api/v1/metrics/red?service=order&start=%d&end=%d&step=60s", url, base.Add(-30*time.Minute).Unix(), time.Now().Unix()), &redRes)
	var slow, fast int
	for _, pt := range redRes.Series {
		switch {
		case slices.Contains(pt.TraceIDs, errTraceID.String()):
			slow++
			require.Equal(t, uint64(1), pt.Count)
			// The 3-minute order is above the histogram's last bound
			// (≈79 s), which RED reports for it.
			top := red.Bounds()[len(red.Bounds())-1]
			require.InDelta(t, float64(top)/float64(time.Millisecond), pt.P99, 0.01)
			require.NotContains(t, pt.TraceIDs, okTraceID.String())
		case slices.Contains(pt.TraceIDs, okTraceID.String()):
			fast++
			require.Less(t, pt.P99, 1000.0)
		default:
			require.Empty(t, pt.TraceIDs)
		}
	}
	require.Equal(t, 1, slow)
	require.Equal(t, 1, fast)

	b := newBrowser(t, url)
	start := time.Now()

	t.Run("search to waterfall to logs", func(t *testing.T) {
		b.t = t
		b.run(chromedp.Navigate(url+"/search?errorsOnly=true"),
			chromedp.WaitVisible(chromedp.CSS(`#results .result-row`)))
		var ids []string
		b.eval(`[...document.querySelectorAll('#results .result-row')].map(r => r.dataset.traceId)`, &ids)
		require.Equal(t, []string{errTraceID.String()}, ids)
		var checked bool
		b.eval(`document.getElementById('f-errors').checked`, &checked)
		require.True(t, checked, "URL state restores the form")
		var dots int
		b.eval(`document.querySelectorAll('#scatter circle.dot.error').length`, &dots)
		require.Equal(t, 1, dots)
		b.screenshot("search")

		// Open the trace from the list.
		b.run(chromedp.Click(chromedp.CSS(`#results .trace-link`)),
			chromedp.WaitVisible(chromedp.CSS(`.trace-view[data-ready="1"] .span-row`)))
		var path string
		b.eval(`location.pathname`, &path)
		require.Equal(t, "/trace/"+errTraceID.String(), path)

		var rows []rowInfo
		b.eval(rowsJS, &rows)
		require.Len(t, rows, len(errSpans))
		// Tree order: the root, then each child subtree in start order.
		wantOrder := []int{1, 2, 3, 4, 5, 6, 9, 7, 8}
		wantDepth := []int{0, 1, 1, 1, 2, 3, 1, 1, 1}
		byID := map[int]fixSpan{}
		for _, f := range errSpans {
			byID[f.id] = f
		}
		total := float64(180 * time.Second)
		for i, r := range rows {
			f := byID[wantOrder[i]]
			require.Equal(t, sidHex(f.id), r.ID, "row %d", i)
			require.Equal(t, wantDepth[i], r.Depth, "row %d", i)
			require.InDelta(t, float64(f.from)/total, r.Left, 0.004, "bar left of %s", f.name)
			if w := float64(f.to-f.from) / total; w > 0.01 {
				require.InDelta(t, w, r.Width, 0.004, "bar width of %s", f.name)
			}
			if i > 0 {
				require.GreaterOrEqual(t, r.Left, rows[0].Left)
			}
		}
		// The slow bank call is the widest non-root bar, marked as an error,
		// and on the critical path.
		require.True(t, rows[5].Error)
		require.Greater(t, rows[5].Width, 0.95)
		require.Positive(t, rows[5].CP)
		require.Contains(t, rows[5].Text, "bank-api")
		require.Contains(t, rows[4].Text, "skew +2.00 s", "skew offset badge")
		require.Positive(t, rows[1].CP, "the sequential member call is critical")
		require.Zero(t, rows[6].CP, "AddPoints runs beside the payment: not critical")

		// The XSS payload in a span name and attribute stays text.
		require.Contains(t, rows[8].Text, xssPayload)
		var imgs int
		b.eval(`document.querySelectorAll('img').length`, &imgs)
		require.Zero(t, imgs)
		b.screenshot("trace-error")

		// Select the bank span: details and its log lines.
		b.run(chromedp.Click(chromedp.CSS(`.span-row[data-span-id="`+sidHex(6)+`"] .op`)),
			chromedp.WaitVisible(chromedp.CSS(`#details-status`)))
		var details struct {
			Title, Status, Search string
			Logs                  []string
		}
		b.waitJS(`document.querySelectorAll('#log-lines .log-line').length === 2`)
		b.eval(`({title: document.getElementById('details-title').textContent,
			status: document.getElementById('details-status').textContent,
			search: location.search,
			logs: [...document.querySelectorAll('#log-lines .log-line .log-body')].map(e => e.textContent)})`, &details)
		require.Equal(t, "POST /authorize", details.Title)
		require.Equal(t, "ERROR", details.Status)
		require.Equal(t, "?span="+sidHex(6), details.Search)
		// Time order, and the payload in a log body is text too.
		require.Equal(t, []string{"calling bank " + xssPayload, "authorize timed out after 175s"}, details.Logs)
		var attrs string
		b.eval(`document.querySelector('#span-details table.attrs').textContent`, &attrs)
		require.Contains(t, attrs, "peer.service")
		b.screenshot("trace-error-selected")

		// Level filter.
		b.run(chromedp.SetValue(chromedp.CSS(`#log-level`), "17"),
			execJS(`document.getElementById('log-level').dispatchEvent(new Event('change'))`))
		b.waitJS(`document.querySelectorAll('#log-lines .log-line').length === 1`)

		// All spans' lines; a line jumps to its span.
		b.run(chromedp.SetValue(chromedp.CSS(`#log-level`), "0"),
			execJS(`document.getElementById('log-level').dispatchEvent(new Event('change'))`),
			chromedp.Click(chromedp.CSS(`#log-only-span`)))
		b.waitJS(`document.querySelectorAll('#log-lines .log-line').length === 4`)
		var bodies []string
		b.eval(`[...document.querySelectorAll('#log-lines .log-body')].map(e => e.textContent)`, &bodies)
		require.Equal(t, "order received", bodies[0])
		require.Equal(t, "member cache miss", bodies[1])
		b.run(chromedp.Click(chromedp.CSS(`#log-lines .log-line[data-span-id="` + sidHex(2) + `"]`)))
		b.waitJS(`document.querySelector('.span-row.selected') && document.querySelector('.span-row.selected').dataset.spanId === '` + sidHex(2) + `'`)
		b.waitJS(`document.getElementById('details-title').textContent === 'GetMember'`)

		// Keyboard: j moves down the tree, Enter collapses.
		b.run(chromedp.KeyEvent("j"))
		b.waitJS(`document.querySelector('.span-row.selected').dataset.spanId === '` + sidHex(3) + `'`)
		b.run(chromedp.KeyEvent("j"), chromedp.KeyEvent("\r"))
		b.waitJS(`document.querySelectorAll('.span-row').length === 7`)
		b.run(chromedp.KeyEvent("\r"))
		b.waitJS(`document.querySelectorAll('.span-row').length === 9`)

		var pwned bool
		b.eval(`window.__pwned === 1`, &pwned)
		require.False(t, pwned, "the payload ran")
	})

	t.Run("deep link, raw times and logical order", func(t *testing.T) {
		b.t = t
		b.run(chromedp.Navigate(url+"/trace/"+errTraceID.String()+"?span="+sidHex(5)+"&raw=1&theme=dark"),
			chromedp.WaitVisible(chromedp.CSS(`#details-skew`)))
		var got struct {
			Selected, Skew, Theme string
			Raw                   bool
		}
		b.eval(`({selected: document.querySelector('.span-row.selected').dataset.spanId,
			skew: document.getElementById('details-skew').textContent,
			theme: document.documentElement.dataset.theme,
			raw: document.getElementById('t-raw').checked})`, &got)
		require.Equal(t, sidHex(5), got.Selected)
		require.Contains(t, got.Skew, "+2.00 s")
		require.Contains(t, got.Skew, "NOT applied")
		require.Equal(t, "dark", got.Theme)
		require.True(t, got.Raw)
		var rows []rowInfo
		b.eval(rowsJS, &rows)
		// Raw: the payment server span is shifted back by its 2 s offset, to
		// 300 ms before the root: the skew the indexer repaired.
		require.Equal(t, sidHex(5), rows[4].ID)
		require.InDelta(t, 0, rows[4].Left, 0.001)
		require.InDelta(t, 0.3/180.3, rows[0].Left, 0.001)
		b.screenshot("trace-raw-dark")

		b.run(chromedp.SetValue(chromedp.CSS(`#t-order`), "logical"),
			execJS(`document.getElementById('t-order').dispatchEvent(new Event('change'))`))
		b.waitJS(`document.querySelectorAll('.span-row .logical').length === 9`)
		var search string
		b.eval(`location.search`, &search)
		require.Contains(t, search, "order=logical")
	})

	t.Run("embed mode", func(t *testing.T) {
		b.t = t
		b.run(chromedp.Navigate(url+"/trace/"+okTraceID.String()+"?embed=1"),
			chromedp.WaitVisible(chromedp.CSS(`.trace-view[data-ready="1"] .span-row`)))
		var got struct {
			NavHidden, BackHidden bool
			Rows                  int
			LogsNote              string
		}
		// The ok trace has no log lines: the logs API answers an empty list.
		b.waitJS(`/No log lines for this trace/.test(document.getElementById('log-lines').textContent)`)
		b.eval(`({navHidden: document.getElementById('nav').offsetParent === null,
			backHidden: document.querySelector('.back').offsetParent === null,
			rows: document.querySelectorAll('.span-row').length,
			logsNote: document.getElementById('log-lines').textContent})`, &got)
		require.True(t, got.NavHidden)
		require.True(t, got.BackHidden)
		require.Equal(t, 2, got.Rows)
		require.Equal(t, "No log lines for this trace.", got.LogsNote)
		var noStore bool
		b.eval(`!!document.getElementById('logs-none')`, &noStore)
		require.False(t, noStore, "a logs store answered: no 'no logs store yet' note")
		b.screenshot("trace-embed")

		// Navigation inside the embed keeps embed mode.
		b.run(chromedp.Navigate(url + "/metrics-view?embed=1"))
		b.waitCharts()
		var navHidden, unavailable bool
		b.eval(`document.getElementById('nav').offsetParent === null`, &navHidden)
		b.eval(`!!document.getElementById('metrics-unavailable')`, &unavailable)
		require.True(t, navHidden)
		require.False(t, unavailable)
	})

	t.Run("metric to traces", func(t *testing.T) {
		b.t = t
		b.run(chromedp.Navigate(url + "/metrics-view?service=order&range=1h"))
		b.waitCharts()
		var got struct {
			Charts, Alerts int
		}
		b.eval(`({charts: document.querySelectorAll('#charts figure').length,
			alerts: document.querySelectorAll('#charts .alert-mark.firing').length})`, &got)
		require.Equal(t, 3, got.Charts)
		require.Equal(t, 3, got.Alerts, "the firing alert is marked on every chart")
		// Two p99 points have traces behind them: the slow order and the
		// fast menu call. Click the spike (the highest point, smallest y):
		// the error trace behind it is listed, alone, and opens.
		var linked int
		b.eval(`document.querySelectorAll('#charts figure:nth-of-type(3) circle.pt.s2.has-traces').length`, &linked)
		require.Equal(t, 2, linked)
		b.run(execJS(`[...document.querySelectorAll('#charts figure:nth-of-type(3) circle.pt.s2.has-traces')]
			.sort((a, b) => a.cy.baseVal.value - b.cy.baseVal.value)[0]
			.dispatchEvent(new MouseEvent('click', {bubbles: true}))`))
		b.waitJS(`!!document.querySelector('#point-traces a')`)
		var listed []string
		b.eval(`[...document.querySelectorAll('#point-traces a')].map(a => a.textContent)`, &listed)
		require.Equal(t, []string{errTraceID.String()}, listed)
		b.screenshot("metrics")
		b.run(chromedp.Click(chromedp.CSS(`#point-traces a`)),
			chromedp.WaitVisible(chromedp.CSS(`.trace-view[data-ready="1"] .span-row`)))
		var path string
		b.eval(`location.pathname`, &path)
		require.Equal(t, "/trace/"+errTraceID.String(), path)
	})

	t.Run("service map", func(t *testing.T) {
		b.t = t
		b.run(chromedp.Navigate(url+"/map?range=1h"), chromedp.WaitVisible(chromedp.CSS(`#service-map svg`)))
		var nodes []string
		b.eval(`[...document.querySelectorAll('#service-map .node-label')].map(e => e.textContent)`, &nodes)
		require.Subset(t, nodes, []string{"order", "payment", "bank-api", "kitchen", "worker", "db"})
		b.screenshot("map")
	})

	t.Run("10k spans", func(t *testing.T) {
		b.t = t
		began := time.Now()
		b.run(chromedp.Navigate(url+"/trace/"+bigTraceID.String()),
			chromedp.WaitVisible(chromedp.CSS(`.trace-view[data-ready="1"] .span-row`)))
		loaded := time.Since(began)
		var n struct {
			DOMRows, Spans int
			Minimap        bool
		}
		b.eval(`({domRows: document.querySelectorAll('.span-row').length,
			spans: +document.querySelector('.trace-view').dataset.spanCount,
			minimap: document.querySelector('.minimap').offsetParent !== null})`, &n)
		require.Equal(t, 10000, n.Spans)
		require.Less(t, n.DOMRows, 100)
		require.True(t, n.Minimap)
		b.screenshot("trace-10k")

		// Scroll to the bottom: the last span in tree order is rendered.
		last := sidHex(10000)
		scrolled := time.Now()
		b.run(execJS(`(() => { const s = document.getElementById('rows-scroll'); s.scrollTop = s.scrollHeight; })()`))
		b.waitJS(`!!document.querySelector('.span-row[data-span-id="` + last + `"]')`)
		scrollTook := time.Since(scrolled)
		b.eval(`document.querySelectorAll('.span-row').length`, &n.DOMRows)
		require.Less(t, n.DOMRows, 100)
		b.screenshot("trace-10k-bottom")
		t.Logf("10k-span trace: load+first paint %v, scroll to bottom rendered in %v, %d rows in the DOM", loaded, scrollTook, n.DOMRows)

		// Collapse all shrinks the tree to the root and its 99 children.
		b.run(chromedp.Click(chromedp.CSS(`#t-collapse`)))
		b.waitJS(`document.getElementById('rows-spacer').offsetHeight === 100 * 26`)
	})
	t.Logf("browser flows took %v", time.Since(start))
}
