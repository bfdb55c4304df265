package query

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// fuzzPath is the path of paths a fuzz input picks, its %s (if any) the
// input's value, escaped.
func fuzzPath(paths []string, which uint8, value string) string {
	return strings.Replace(paths[int(which)%len(paths)], "%s", url.PathEscape(value), 1)
}

// FuzzTraceAPIs sends arbitrary path values and query strings to the trace
// endpoints (Tempo, Jaeger, native) in front of two real indexer readers:
// whatever a client sends, the answer is 2xx or 4xx with a body in the
// content type it declares, never 5xx, since the readers are healthy.
func FuzzTraceAPIs(f *testing.F) {
	s0, s1 := fixture()
	e := newEnv(f, startReadersTB(f, s0, s1))
	paths := []string{
		"/api/v2/traces/%s", "/api/traces/%s", "/api/v1/traces/%s", "/api/search", "/api/search/tags",
		"/api/v2/search/tags", "/api/search/tag/%s/values", "/api/v2/search/tag/%s/values", "/api/traces",
		"/api/services", "/api/services/%s/operations", "/api/operations", "/api/dependencies", "/api/v1/search",
	}
	f.Add(uint8(0), traceAHex, "", false)
	f.Add(uint8(1), traceAHex, "raw=true", true)
	f.Add(uint8(3), "", `tags=service.name%3D"checkout"&minDuration=10ms&limit=5&start=0&end=9999999999`, false)
	f.Add(uint8(3), "", `q={ .http.method = "POST" && duration > 1ms }`, true)
	f.Add(uint8(6), "service.name", "limit=3", false)
	f.Add(uint8(7), "resource.service.name", "q={}", false)
	f.Add(uint8(8), "", "service=checkout&operation=POST%20%2Fpay&minDuration=1ms&limit=20&tags=%7B%22http.method%22%3A%22POST%22%7D", false)
	f.Add(uint8(10), "checkout", "spanKind=server", false)
	f.Add(uint8(12), "", "endTs=1&lookback=3600000", false)
	f.Add(uint8(13), "", "service=checkout&error=true", true)
	f.Fuzz(func(t *testing.T, which uint8, value, query string, protobuf bool) {
		u := e.srv.URL + fuzzPath(paths, which, value) + "?" + query
		if _, err := url.Parse(u); err != nil {
			return // not a URL a client can send
		}
		req, err := http.NewRequest(http.MethodGet, u, nil)
		if err != nil {
			return
		}
		if protobuf {
			req.Header.Set("Accept", "application/protobuf")
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Less(t, resp.StatusCode, 500, "%s: %s", u, body)
		require.NotEmpty(t, resp.Header.Get("Content-Type"), u)
	})
}

// FuzzLogAPIs does the same for the log endpoints (native and Loki) in front
// of two real log stores.
func FuzzLogAPIs(f *testing.F) {
	h := newLogsEnv(f).api.Handler()
	paths := []string{
		"/api/v1/traces/%s/logs", "/api/v1/logs/search", "/api/v1/logs/levels", "/loki/api/v1/query_range",
		"/loki/api/v1/query", "/loki/api/v1/labels", "/loki/api/v1/label/%s/values", "/loki/api/v1/series",
	}
	f.Add(uint8(0), traceAHex, "level=warn")
	f.Add(uint8(1), "", "q=card&service=payments&limit=10")
	f.Add(uint8(3), "", `query={service_name="payments"} |= "card"&limit=5&direction=forward&start=0&end=9999999999`)
	f.Add(uint8(4), "", `query=sum(count_over_time({service_name="payments"}[5m]))`)
	f.Add(uint8(6), "service_name", "start=0")
	f.Add(uint8(7), "", `match[]={service_name="checkout"}`)
	f.Fuzz(func(t *testing.T, which uint8, value, query string) {
		u, err := url.Parse(fuzzPath(paths, which, value) + "?" + query)
		if err != nil {
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, &http.Request{Method: http.MethodGet, URL: u, Header: http.Header{}})
		require.Less(t, rec.Code, 500, "%s: %s", u, rec.Body)
		require.NotEmpty(t, rec.Header().Get("Content-Type"), u)
	})
}
