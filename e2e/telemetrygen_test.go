package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func telemetrygenPath(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(filepath.Dir(file)), ".tools", "bin", "telemetrygen")
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("telemetrygen missing at %s: `make tools` installs it", p)
		}
		t.Skipf("telemetrygen not installed (run `make tools`): %v", err)
	}
	return p
}

// TestTelemetrygenExactCount sends a few thousand multi-span traces with the
// OpenTelemetry Collector's load generator; exactly those come back, once each.
// The rate is capped because telemetrygen's SDK drops spans when its batch
// queue overflows, which would make the sent count unknowable.
func TestTelemetrygenExactCount(t *testing.T) {
	tg := telemetrygenPath(t)
	a := startAllInOne(t, testConfig(t.TempDir()))
	const workers, perWorker, children = 4, 750, 4
	cmd := exec.Command(tg, "traces", "--otlp-endpoint", a.otlpGRPC, "--otlp-insecure",
		"--workers", "4", "--traces", "750", "--child-spans", "4", "--rate", "500", "--service", "tg-e2e")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))

	const wantTraces = workers * perWorker
	var res struct {
		Traces []struct {
			TraceID         string `json:"traceID"`
			RootServiceName string `json:"rootServiceName"`
		} `json:"traces"`
	}
	require.Eventually(t, func() bool {
		res.Traces = nil
		return getJSON(t, a.query+`/api/search?tags=service.name%3D%22tg-e2e%22&limit=100000`, &res) == 200 && len(res.Traces) >= wantTraces
	}, 60*time.Second, 250*time.Millisecond, "search never found %d traces", wantTraces)
	require.Len(t, res.Traces, wantTraces)
	seen := map[string]bool{}
	for _, tr := range res.Traces {
		require.False(t, seen[tr.TraceID], "trace %s listed twice", tr.TraceID)
		seen[tr.TraceID] = true
		require.Equal(t, "tg-e2e", tr.RootServiceName)
	}
	// Every trace holds exactly its 1 + children spans.
	for id := range seen {
		td := getTrace(t, a.query, id)
		require.NotNil(t, td)
		require.Equal(t, 1+children, countSpans(td), "trace %s", id)
	}
}
