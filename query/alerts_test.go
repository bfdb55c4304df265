package query

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/threadline/threadline/alerting"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
)

// alertStore opens a real alert store; the fixtures are dated 2026-01-01,
// so retention is long enough to keep them.
func alertStore(t *testing.T) *alerting.Store {
	t.Helper()
	st, err := alerting.OpenStore(t.TempDir(), nil, nil, alerting.StoreOptions{Retention: 10 * 365 * 24 * time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, st.Close()) })
	return st
}

func alertEnv(t *testing.T, readers []readerpb.ReaderClient, st *alerting.Store) *env {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := DefaultConfig()
	cfg.ReaderTimeout = 2 * time.Second
	api := New(cfg, readers, slog.New(slog.DiscardHandler), reg, WithAlerts(st, reg))
	api.now = func() time.Time { return t0.Add(time.Hour) }
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	return &env{srv: srv, api: api, reg: reg}
}

func post(t *testing.T, e *env, path string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := http.Post(e.srv.URL+path, "application/json", bytes.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

// amPayload is an Alertmanager version 4 notification of two alerts: one
// labelled with the service (job) and route, one only with a label that
// names a span attribute (db_system → db.system).
func amPayload() []byte {
	return fmt.Appendf(nil, `{
  "version": "4",
  "groupKey": "{}:{alertname=~\".*\"}",
  "truncatedAlerts": 0,
  "status": "firing",
  "receiver": "threadline",
  "groupLabels": {},
  "commonLabels": {"severity": "page"},
  "commonAnnotations": {},
  "externalURL": "http://alertmanager:9093",
  "alerts": [
    {"status": "firing",
     "labels": {"alertname": "PayFailing", "job": "checkout", "route": "POST /pay", "severity": "page", "instance": "web-1:8080"},
     "annotations": {"summary": "payments fail"},
     "startsAt": %q, "endsAt": "0001-01-01T00:00:00Z",
     "generatorURL": "http://prometheus:9090/graph?g0.expr=x", "fingerprint": "aaaa000011112222"},
    {"status": "resolved",
     "labels": {"alertname": "DbSlow", "db_system": "postgres", "severity": "page"},
     "annotations": {},
     "startsAt": %q, "endsAt": %q,
     "generatorURL": "http://prometheus:9090/graph?g0.expr=y", "fingerprint": "bbbb000011112222"}
  ]
}`, t0.Add(time.Minute).Format(time.RFC3339Nano), t0.Add(-time.Minute).Format(time.RFC3339Nano), t0.Add(2*time.Minute).Format(time.RFC3339Nano))
}

type alertsBody struct {
	Alerts []struct {
		ID          string            `json:"id"`
		Name        string            `json:"name"`
		State       string            `json:"state"`
		T           int64             `json:"t"`
		Value       *float64          `json:"value"`
		Labels      map[string]string `json:"labels"`
		TraceIDs    []string          `json:"traceIDs"`
		Suppressed  bool              `json:"suppressed"`
		GroupID     string            `json:"groupID"`
		Source      string            `json:"source"`
		LinkNote    string            `json:"linkNote"`
		Annotations map[string]string `json:"annotations"`
	} `json:"alerts"`
}

func TestAlertmanagerWebhookLinksTraces(t *testing.T) {
	s0, s1 := fixture()
	e := alertEnv(t, startReaders(t, s0, s1), alertStore(t))

	code, body := post(t, e, "/api/v1/alertmanager", amPayload())
	require.Equal(t, http.StatusOK, code, string(body))

	code, _, body = e.grafana(t, fmt.Sprintf("/api/v1/alerts?start=%d&end=%d", t0.Add(-10*time.Minute).Unix(), t0.Add(time.Hour).Unix()), browserAccept)
	require.Equal(t, http.StatusOK, code, string(body))
	var got alertsBody
	require.NoError(t, json.Unmarshal(body, &got), string(body))
	require.Len(t, got.Alerts, 2)
	byName := map[string]int{}
	for i, a := range got.Alerts {
		byName[a.Name] = i
		require.Equal(t, "alertmanager", a.Source)
		require.False(t, a.Suppressed)
		require.Nil(t, a.Value)
		require.NotEmpty(t, a.GroupID)
	}
	pay := got.Alerts[byName["PayFailing"]]
	require.Equal(t, "firing", pay.State)
	require.Equal(t, t0.Add(time.Minute).Unix(), pay.T)
	require.Equal(t, "checkout", pay.Labels["job"])
	require.Equal(t, []string{traceAHex}, pay.TraceIDs, "the error trace of checkout POST /pay")
	require.Contains(t, pay.LinkNote, `service "checkout" operation "POST /pay"`)
	db := got.Alerts[byName["DbSlow"]]
	require.Equal(t, "resolved", db.State)
	require.Equal(t, t0.Add(2*time.Minute).Unix(), db.T)
	require.Equal(t, []string{traceAHex}, db.TraceIDs, "db_system matched the span attribute db.system")
	require.Contains(t, db.LinkNote, `db.system="postgres"`)
	require.Equal(t, pay.GroupID, db.GroupID)

	code, _, body = e.grafana(t, "/api/v1/alerts/"+pay.ID+"/traces", browserAccept)
	require.Equal(t, http.StatusOK, code, string(body))
	var traces struct {
		Alert struct {
			ID string `json:"id"`
		} `json:"alert"`
		Traces []struct {
			TraceID         string   `json:"traceID"`
			Found           bool     `json:"found"`
			RootServiceName string   `json:"rootServiceName"`
			RootTraceName   string   `json:"rootTraceName"`
			DurationMs      float64  `json:"durationMs"`
			Error           bool     `json:"error"`
			SpanCount       int      `json:"spanCount"`
			KeptReasons     []string `json:"keptReasons"`
		} `json:"traces"`
	}
	require.NoError(t, json.Unmarshal(body, &traces))
	require.Equal(t, pay.ID, traces.Alert.ID)
	require.Len(t, traces.Traces, 1)
	tr := traces.Traces[0]
	require.Equal(t, traceAHex, tr.TraceID)
	require.True(t, tr.Found)
	require.Equal(t, "checkout", tr.RootServiceName)
	require.Equal(t, "POST /pay", tr.RootTraceName)
	require.InDelta(t, 250, tr.DurationMs, 1e-9)
	require.True(t, tr.Error)
	require.Equal(t, 4, tr.SpanCount, "merged across both indexers")
	require.Equal(t, []string{"alert", "error", "latency_topn"}, tr.KeptReasons, "the alert keeps the trace with reason alert too")

	// Re-sending the notification (repeat_interval) stores nothing new.
	code, _ = post(t, e, "/api/v1/alertmanager", amPayload())
	require.Equal(t, http.StatusOK, code)
	_, _, body = e.grafana(t, fmt.Sprintf("/api/v1/alerts?start=%d&end=%d", t0.Add(-10*time.Minute).Unix(), t0.Add(time.Hour).Unix()), browserAccept)
	require.NoError(t, json.Unmarshal(body, &got))
	require.Len(t, got.Alerts, 2)
}

func TestAlertRoutesErrors(t *testing.T) {
	s0, s1 := fixture()
	e := alertEnv(t, startReaders(t, s0, s1), alertStore(t))
	cases := []struct {
		name   string
		do     func() (int, []byte)
		status int
		msg    string
	}{
		{"malformed json", func() (int, []byte) { return post(t, e, "/api/v1/alertmanager", []byte(`{"alerts":[`)) }, 400, "invalid Alertmanager webhook"},
		{"bad status", func() (int, []byte) {
			return post(t, e, "/api/v1/alertmanager", []byte(`{"version":"4","alerts":[{"status":"weird","startsAt":"2026-01-01T00:00:00Z"}]}`))
		}, 400, "status"},
		{"too large", func() (int, []byte) {
			big := `{"version":"4","receiver":"` + strings.Repeat("x", maxWebhookBytes) + `","alerts":[]}`
			return post(t, e, "/api/v1/alertmanager", []byte(big))
		}, 413, "exceeds"},
		{"webhook GET", func() (int, []byte) { c, _, b := e.grafana(t, "/api/v1/alertmanager", ""); return c, b }, 405, ""},
		{"alerts POST", func() (int, []byte) { return post(t, e, "/api/v1/alerts", []byte(`{}`)) }, 405, ""},
		{"bad id", func() (int, []byte) { c, _, b := e.grafana(t, "/api/v1/alerts/xyz/traces", ""); return c, b }, 400, "16 hex digits"},
		{"unknown id", func() (int, []byte) {
			c, _, b := e.grafana(t, "/api/v1/alerts/0123456789abcdef/traces", "")
			return c, b
		}, 404, "not found"},
		{"bad start", func() (int, []byte) { c, _, b := e.grafana(t, "/api/v1/alerts?start=yesterday", ""); return c, b }, 400, "invalid start"},
		{"reversed range", func() (int, []byte) { c, _, b := e.grafana(t, "/api/v1/alerts?start=200&end=100", ""); return c, b }, 400, "before start"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := tc.do()
			require.Equal(t, tc.status, code, string(body))
			require.Contains(t, string(body), tc.msg)
		})
	}
}

func TestAlertRoutesDisabled(t *testing.T) {
	e := splitEnv(t)
	code, body := post(t, e, "/api/v1/alertmanager", amPayload())
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, string(body), "--alert-data-dir")
	for _, p := range []string{"/api/v1/alerts", "/api/v1/alerts/0123456789abcdef/traces"} {
		code, _, _ := e.grafana(t, p, browserAccept)
		require.Equal(t, http.StatusServiceUnavailable, code, p)
	}
}

func TestTraceLinkerExplainOrder(t *testing.T) {
	// One error trace (5 ms) and ok traces of 10 ms, 300 ms and 50 ms of
	// api "GET /x", split over two indexers, plus another operation.
	var sh0, sh1 shard
	add := func(sh *shard, trs []*span.Trace) {
		for _, tr := range trs {
			sh.spans = append(sh.spans, tr.Spans...)
		}
	}
	errTr := redTraces(1, 1, "api", "GET /x", time.Second, 5*time.Millisecond, 1)
	fast := redTraces(2, 1, "api", "GET /x", 2*time.Second, 10*time.Millisecond, 0)
	slow := redTraces(3, 1, "api", "GET /x", 3*time.Second, 300*time.Millisecond, 0)
	mid := redTraces(4, 1, "api", "GET /x", 4*time.Second, 50*time.Millisecond, 0)
	other := redTraces(5, 1, "api", "GET /y", 5*time.Second, time.Second, 1)
	add(&sh0, errTr)
	add(&sh0, slow)
	add(&sh1, fast)
	add(&sh1, mid)
	add(&sh1, other)
	e := alertEnv(t, startReaders(t, sh0, sh1), alertStore(t))

	refs, err := e.api.TraceLinker().Explain(context.Background(), "api", "GET /x", t0, t0.Add(time.Minute), 3)
	require.NoError(t, err)
	var ids []span.TraceID
	for _, r := range refs {
		ids = append(ids, r.ID)
	}
	require.Equal(t, []span.TraceID{errTr[0].ID, slow[0].ID, mid[0].ID}, ids, "errors first, then slowest, at most limit")
	require.True(t, refs[0].Error)
	require.False(t, refs[1].Error)
	require.Equal(t, 300*time.Millisecond, refs[1].Duration)

	// Outside the time range: nothing.
	refs, err = e.api.TraceLinker().Explain(context.Background(), "api", "GET /x", t0.Add(time.Hour), t0.Add(2*time.Hour), 3)
	require.NoError(t, err)
	require.Empty(t, refs)

	// Every indexer down: an error, not an empty answer.
	dead := alertEnv(t, []readerpb.ReaderClient{deadReader(t)}, alertStore(t))
	_, err = dead.api.TraceLinker().Explain(context.Background(), "api", "", t0, t0.Add(time.Minute), 3)
	require.Error(t, err)
}

// TestRulerOverMergedRED runs the ruler over the real RED path: two
// indexers' RED stores behind the read API, merged by this package.
func TestRulerOverMergedRED(t *testing.T) {
	e, errTrace, slowTrace := redEnv(t)
	groups, err := alerting.ParseRules([]byte(`
groups:
  - name: frontend
    interval: 10s
    query_delay: 0s
    rules:
      - alert: FrontendErrors
        expr: {kind: red, service: frontend, operation: "GET /", signal: error_rate, op: ">", threshold: 0.01}
      # Indexer B alone has p99 = 10s; merged, p99 is about 1ms: must not fire.
      - alert: FrontendSlow
        expr: {kind: red, service: frontend, signal: p99, op: ">", threshold: 1000}
`))
	require.NoError(t, err)
	st := alertStore(t)
	now := t0.Add(time.Minute)
	// No linker: these RED-only indexers (readapi without a span store)
	// serve no trace search.
	eng, err := alerting.NewEngine(groups, e.api.REDSource(), nil, st, nil, nil, func() time.Time { return now })
	require.NoError(t, err)
	eng.Evaluate(context.Background())

	evs, err := st.Events(context.Background(), t0, now.Add(time.Second))
	require.NoError(t, err)
	require.Len(t, evs, 1)
	ev := evs[0]
	require.Equal(t, "FrontendErrors", ev.Name)
	require.Equal(t, alerting.StateFiring, ev.State)
	require.InDelta(t, 0.02, *ev.Value, 1e-9, "2 errors in 100 spans over both indexers")
	// The exemplar traces of the merged step link the alert.
	require.Equal(t, []string{errTrace.String(), slowTrace.String()}, ev.TraceIDs)
	for _, rs := range eng.Rules() {
		require.Equal(t, alerting.HealthOK, rs.Health, rs.Alert)
		if rs.Alert == "FrontendSlow" {
			require.Equal(t, "inactive", rs.State)
			require.Less(t, rs.Value, 1000.0)
		}
	}

	// The alert is served by the API.
	e2 := alertEnv(t, nil, st)
	code, _, body := e2.grafana(t, fmt.Sprintf("/api/v1/alerts?start=%d&end=%d", t0.Unix(), now.Unix()), browserAccept)
	require.Equal(t, http.StatusOK, code, string(body))
	var got alertsBody
	require.NoError(t, json.Unmarshal(body, &got))
	require.Len(t, got.Alerts, 1)
	require.Equal(t, "rule", got.Alerts[0].Source)
	require.Equal(t, ev.ID, got.Alerts[0].GroupID)
	require.InDelta(t, 0.02, *got.Alerts[0].Value, 1e-9)
}
