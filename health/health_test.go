package health

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestReadyzFailsOnLocalOnly(t *testing.T) {
	f := func(localErr, depErr error, wantCode int, wantStatus string) {
		t.Helper()
		h := New("v1.2.3")
		h.AddLocal("store", func(context.Context) error { return localErr })
		h.AddDependency("kafka", func(context.Context) error { return depErr })
		mux := http.NewServeMux()
		h.Register(mux)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		require.Equal(t, wantCode, rec.Code)
		var body struct {
			Status       string                 `json:"status"`
			Version      string                 `json:"version"`
			Checks       map[string]checkResult `json:"checks"`
			Dependencies map[string]checkResult `json:"dependencies"`
		}
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body))
		require.Equal(t, wantStatus, body.Status)
		require.Equal(t, "v1.2.3", body.Version)
		if depErr != nil {
			require.Equal(t, "fail", body.Dependencies["kafka"].Status)
			require.Equal(t, depErr.Error(), body.Dependencies["kafka"].Error)
		}
	}
	f(nil, nil, http.StatusOK, "ready")
	f(nil, errors.New("kafka down"), http.StatusOK, "ready") // fail open on dependencies
	f(errors.New("disk full"), nil, http.StatusServiceUnavailable, "not ready")
}

func TestHealthzAndMetrics(t *testing.T) {
	h := New("dev")
	mux := http.NewServeMux()
	h.Register(mux)
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	require.Contains(t, rec.Body.String(), `"status":"ok"`)
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	require.Contains(t, rec.Body.String(), `threadline_build_info{version="dev"} 1`)
	require.Contains(t, rec.Body.String(), "go_goroutines")
}
