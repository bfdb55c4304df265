package alerting

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// attrLinker is a linker that can also narrow by labels matching attributes.
type attrLinker struct {
	recLinker
	mu    sync.Mutex
	attrs []map[string]string
}

func (l *attrLinker) ExplainAttributes(_ context.Context, service, operation string, labels map[string]string, start, end time.Time, limit int) ([]TraceRef, map[string]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.attrs = append(l.attrs, labels)
	// Only http_method is a span attribute (http.method) in this fixture.
	if v, ok := labels["http_method"]; ok {
		return []TraceRef{{ID: tid(7)}}, map[string]string{"http.method": v}, nil
	}
	return nil, nil, nil
}

// recentPayload is the sample with its times moved into the store's
// retention.
func recentPayload(t *testing.T, base time.Time) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/alertmanager_webhook.json")
	require.NoError(t, err)
	day := base.UTC().Format("2006-01-02")
	return bytes.ReplaceAll(b, []byte("2026-01-01"), []byte(day))
}

func TestDecodeWebhookSample(t *testing.T) {
	f, err := os.Open("testdata/alertmanager_webhook.json")
	require.NoError(t, err)
	defer f.Close()
	w, err := DecodeWebhook(f)
	require.NoError(t, err)
	require.Equal(t, "4", w.Version)
	require.Equal(t, "threadline", w.Receiver)
	require.Equal(t, "firing", w.Status)
	require.Equal(t, `{}/{severity="page"}:{alertname="HighLatency"}`, w.GroupKey)
	require.Equal(t, map[string]string{"alertname": "HighLatency"}, w.GroupLabels)
	require.Equal(t, "checkout", w.CommonLabels["job"])
	require.Equal(t, "http://alertmanager.example.org:9093", w.ExternalURL)
	require.Len(t, w.Alerts, 2)
	a := w.Alerts[0]
	require.Equal(t, "firing", a.Status)
	require.Equal(t, "1a30ba71cca2921f", a.Fingerprint)
	require.Equal(t, time.Date(2026, 1, 1, 0, 10, 0, 123e6, time.UTC), a.StartsAt.UTC())
	require.True(t, a.EndsAt.IsZero() || a.EndsAt.Year() == 1)
	require.Contains(t, a.GeneratorURL, "prometheus.example.org")
	require.Equal(t, time.Date(2026, 1, 1, 0, 8, 30, 0, time.UTC), w.Alerts[1].EndsAt.UTC())
}

func TestDecodeWebhookBad(t *testing.T) {
	cases := map[string]string{
		"not json":       `alerts: []`,
		"truncated":      `{"version":"4","alerts":[`,
		"wrong version":  `{"version":"3","alerts":[]}`,
		"bad status":     `{"version":"4","alerts":[{"status":"pending","startsAt":"2026-01-01T00:00:00Z"}]}`,
		"no startsAt":    `{"version":"4","alerts":[{"status":"firing"}]}`,
		"bad time":       `{"version":"4","alerts":[{"status":"firing","startsAt":"yesterday"}]}`,
		"trailing":       `{"version":"4","alerts":[]} {}`,
		"alerts not arr": `{"version":"4","alerts":{}}`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeWebhook(strings.NewReader(body))
			require.ErrorIs(t, err, ErrBadWebhook)
		})
	}
}

func FuzzDecodeWebhook(f *testing.F) {
	sample, err := os.ReadFile("testdata/alertmanager_webhook.json")
	require.NoError(f, err)
	f.Add(sample)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"alerts":[{"status":"resolved","startsAt":"2026-01-01T00:00:00Z","endsAt":"2026-01-01T00:00:01Z"}]}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		w, err := DecodeWebhook(bytes.NewReader(b))
		if err != nil {
			return
		}
		for _, a := range w.Alerts {
			require.False(t, a.StartsAt.IsZero())
			require.Contains(t, []string{"firing", "resolved"}, a.Status)
		}
	})
}

func TestReceiverLinksAndStores(t *testing.T) {
	now := time.Now().UTC().Truncate(24 * time.Hour).Add(time.Hour)
	st := openTestStore(t)
	linker := &attrLinker{recLinker: recLinker{refs: []TraceRef{{ID: tid(1), Error: true}, {ID: tid(2)}}}}
	recv, err := NewReceiver(linker, st, nil, nil, func() time.Time { return now })
	require.NoError(t, err)

	w, err := DecodeWebhook(bytes.NewReader(recentPayload(t, now)))
	require.NoError(t, err)
	evs, err := recv.Receive(context.Background(), w)
	require.NoError(t, err)
	require.Len(t, evs, 2)

	day := now.Truncate(24 * time.Hour)
	fire, res := evs[0], evs[1]
	require.Equal(t, "HighLatency", fire.Name)
	require.Equal(t, StateFiring, fire.State)
	require.Equal(t, SourceAlertmanager, fire.Source)
	require.Equal(t, day.Add(10*time.Minute+123*time.Millisecond), fire.Time.UTC())
	require.Nil(t, fire.Value)
	// job → service, route → operation; instance and severity are no attribute filters.
	require.Len(t, linker.explains, 1)
	require.True(t, strings.HasPrefix(linker.explains[0], "checkout/POST /pay "), linker.explains[0])
	require.Equal(t, "checkout/POST /pay "+day.Add(5*time.Minute+123*time.Millisecond).Sub(t0).String()+".."+now.Sub(t0).String(), linker.explains[0], "startsAt-5m .. now")
	require.Equal(t, []string{tid(1).String(), tid(2).String()}, fire.TraceIDs)
	require.Contains(t, fire.LinkNote, `service "checkout" operation "POST /pay"`)
	require.Equal(t, "threadline", fire.Group)

	require.Equal(t, StateResolved, res.State)
	require.Equal(t, day.Add(8*time.Minute+30*time.Second), res.Time.UTC())
	require.Equal(t, []string{tid(7).String()}, res.TraceIDs, "http_method matched a span attribute")
	require.Contains(t, res.LinkNote, `http.method="GET"`)
	require.Equal(t, map[string]string{"http_method": "GET"}, linker.attrs[len(linker.attrs)-1])

	require.NotEmpty(t, fire.GroupID)
	require.Equal(t, fire.GroupID, res.GroupID, "Alertmanager's group becomes one group")
	require.Equal(t, 2, fire.Summary.Count)
	require.Equal(t, []string{"checkout"}, fire.Summary.Services)
	require.Contains(t, linker.reasons, PinReason)

	// Stored and readable by time and ID.
	stored, err := st.Events(context.Background(), day, day.Add(time.Hour))
	require.NoError(t, err)
	require.Len(t, stored, 2)
	require.Equal(t, res.ID, stored[0].ID, "oldest first")
	got, found, err := st.Event(context.Background(), fire.ID)
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, fire.TraceIDs, got.TraceIDs)

	// Alertmanager re-sends the group every repeat_interval: same events,
	// no new trace search.
	searches := len(linker.explains) + len(linker.attrs)
	evs2, err := recv.Receive(context.Background(), w)
	require.NoError(t, err)
	require.Equal(t, evs[0].ID, evs2[0].ID)
	require.Equal(t, fire.TraceIDs, evs2[0].TraceIDs)
	require.Equal(t, searches, len(linker.explains)+len(linker.attrs))
	stored, err = st.Events(context.Background(), day, day.Add(time.Hour))
	require.NoError(t, err)
	require.Len(t, stored, 2)
}

func TestReceiverNoServiceLabel(t *testing.T) {
	now := time.Now()
	st := openTestStore(t)
	linker := &recLinker{refs: []TraceRef{{ID: tid(1)}}}
	recv, err := NewReceiver(linker, st, nil, nil, func() time.Time { return now })
	require.NoError(t, err)
	evs, err := recv.Receive(context.Background(), Webhook{Version: "4", Alerts: []WebhookAlert{{
		Status: "firing", Labels: map[string]string{"alertname": "DiskFull", "instance": "db-1"}, StartsAt: now.Add(-time.Minute),
	}}})
	require.NoError(t, err)
	require.Empty(t, evs[0].TraceIDs)
	require.Contains(t, evs[0].LinkNote, "no label names a service")
	require.Empty(t, linker.explains, "an unrelated alert must not link arbitrary traces")
	require.Empty(t, evs[0].GroupID)
}
