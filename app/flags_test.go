package app

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/threadline/threadline/alerting"
)

// Bleve starts its analysis workers at package init, for the process.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/blevesearch/bleve_index_api.AnalysisWorker"))
}

func TestParseFlagsEnvironment(t *testing.T) {
	n := 0
	f := func(env map[string]string, args []string, wantDir string, wantWait time.Duration, wantErr string) {
		t.Helper()
		n++
		t.Run(fmt.Sprint(n), func(t *testing.T) { // each case gets its own environment
			for k, v := range env {
				t.Setenv(k, v)
			}
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			dir := fs.String("data-dir", "./data", "data")
			wait := fs.Duration("store.retention", time.Hour, "retention")
			err := ParseFlags(fs, args, EnvPrefix)
			if wantErr != "" {
				require.ErrorContains(t, err, wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, wantDir, *dir)
			require.Equal(t, wantWait, *wait)
		})
	}
	f(nil, nil, "./data", time.Hour, "")
	f(map[string]string{"THREADLINE_DATA_DIR": "/env", "THREADLINE_STORE_RETENTION": "2h"}, nil, "/env", 2*time.Hour, "")
	f(map[string]string{"THREADLINE_DATA_DIR": "/env"}, []string{"--data-dir", "/flag"}, "/flag", time.Hour, "") // the command line wins
	f(map[string]string{"THREADLINE_STORE_RETENTION": "soon"}, nil, "", 0, "$THREADLINE_STORE_RETENTION")
	f(nil, []string{"--nope"}, "", 0, "flag provided but not defined")
}

func TestHelpNamesEnvironmentVariables(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	cfg := DefaultAllInOneConfig()
	cfg.RegisterFlags(fs)
	require.ErrorIs(t, ParseFlags(fs, []string{"--help"}, EnvPrefix), flag.ErrHelp)
	for _, v := range []string{"$THREADLINE_DATA_DIR", "$THREADLINE_OTLP_GRPC_ADDR", "$THREADLINE_KAFKA_BROKERS", "$THREADLINE_DECISION_WAIT", "$THREADLINE_SAMPLING_BASELINE", "$THREADLINE_HTTP_ADDR"} {
		require.Contains(t, out.String(), v)
	}
}

func TestLoggingConfig(t *testing.T) {
	for _, tc := range []struct{ level, format, err string }{
		{"info", "text", ""}, {"debug", "json", ""}, {"loud", "text", "log level"}, {"info", "xml", "log format"},
	} {
		c := LoggingConfig{Level: tc.level, Format: tc.format}
		var buf bytes.Buffer
		l, err := c.Logger(&buf)
		if tc.err != "" {
			require.ErrorContains(t, err, tc.err)
			continue
		}
		require.NoError(t, err)
		l.Info("hello")
		require.Contains(t, buf.String(), "hello")
	}
}

// TestExampleAlertRulesLoad keeps the rules `make run` loads valid.
func TestExampleAlertRulesLoad(t *testing.T) {
	groups, err := alerting.LoadRules("../examples/alert-rules.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, groups)
}

// TestPprofOptIn: the profiler is served only with THREADLINE_PPROF=1, and
// then the execution trace too (an incident's "who waits on whom").
func TestPprofOptIn(t *testing.T) {
	get := func(mux *http.ServeMux, path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec
	}
	off := http.NewServeMux()
	t.Setenv("THREADLINE_PPROF", "")
	registerPprof(off)
	require.Equal(t, http.StatusNotFound, get(off, "/debug/pprof/trace?seconds=0.05").Code)
	require.Equal(t, http.StatusNotFound, get(off, "/debug/pprof/heap").Code)

	on := http.NewServeMux()
	t.Setenv("THREADLINE_PPROF", "1")
	registerPprof(on)
	rec := get(on, "/debug/pprof/trace?seconds=0.05")
	require.Equal(t, http.StatusOK, rec.Code)
	require.True(t, bytes.HasPrefix(rec.Body.Bytes(), []byte("go 1.")), "an execution trace starts with its version header")
	require.Equal(t, http.StatusOK, get(on, "/debug/pprof/heap").Code)
	require.Equal(t, http.StatusOK, get(on, "/debug/pprof/symbol").Code)
	require.Equal(t, http.StatusNotFound, get(on, "/debug/pprof/cmdline").Code, "flags may carry secrets")
}
