package ui

import (
	"flag"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// Bleve (linked through the log store) starts its analysis workers at
// package init, for the whole process.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/blevesearch/bleve_index_api.AnalysisWorker"))
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		in string
		ok bool
	}{
		{"'self'", true},
		{"'none'", true},
		{"'self' https://grafana.example.com", true},
		{"https://*.example.com:3000 http://localhost:3000", true},
		{"", false},
		{"   ", false},
		{"'none' 'self'", false},
		{"'self'; script-src *", false},
		{"https://a.example, https://b.example", false},
		{"'unsafe-inline'", false},
		{"\"self\"", false},
		{"https://a.example\r\nX-Injected: 1", false},
	}
	for _, tc := range cases {
		err := Config{FrameAncestors: tc.in}.Validate()
		if tc.ok {
			require.NoError(t, err, tc.in)
		} else {
			require.Error(t, err, tc.in)
		}
	}
	require.NoError(t, DefaultConfig().Validate())

	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	cfg := DefaultConfig()
	cfg.RegisterFlags(fs)
	require.NoError(t, fs.Parse([]string{"--ui-frame-ancestors", "'self' https://grafana.local"}))
	require.Equal(t, "'self' https://grafana.local", cfg.FrameAncestors)
}

func newServer(t *testing.T, cfg Config) (*UI, *httptest.Server) {
	t.Helper()
	u := New(cfg, nil)
	mux := http.NewServeMux()
	// Stand-in for the query API, registered without a method as it is.
	mux.HandleFunc("/api/v1/search", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "api says no", http.StatusMethodNotAllowed)
			return
		}
		_, _ = io.WriteString(w, `{"traces":[]}`)
	})
	u.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return u, srv
}

func get(t *testing.T, method, url string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

func TestRoutes(t *testing.T) {
	u, srv := newServer(t, Config{FrameAncestors: "'self' https://grafana.example.com"})
	v := u.Version()
	require.Len(t, v, 12)
	cases := []struct {
		method, path string
		status       int
		index        bool   // body is index.html
		cache        string // Cache-Control prefix
		ctype        string
	}{
		{"GET", "/", 200, true, "no-cache", "text/html"},
		{"GET", "/search?service=a&range=1h", 200, true, "no-cache", "text/html"},
		{"GET", "/trace/0af7651916cd43dd8448eb211c80319c", 200, true, "no-cache", "text/html"},
		{"GET", "/trace/0af7651916cd43dd8448eb211c80319c?span=000000000000a001&embed=1", 200, true, "no-cache", "text/html"},
		{"GET", "/map", 200, true, "no-cache", "text/html"},
		{"GET", "/metrics-view?service=x", 200, true, "no-cache", "text/html"},
		{"HEAD", "/search", 200, false, "no-cache", "text/html"},
		{"GET", "/static/" + v + "/app.js", 200, false, "public, max-age=31536000, immutable", "text/javascript"},
		{"GET", "/static/" + v + "/style.css", 200, false, "public, max-age=31536000, immutable", "text/css"},
		{"GET", "/static/000000000000/app.js", 200, false, "no-cache", "text/javascript"},
		{"GET", "/static/" + v + "/nope.js", 404, false, "", ""},
		{"GET", "/static/" + v + "/../ui.go", 404, false, "", ""},
		{"GET", "/static/app.js", 404, false, "", ""},
		{"GET", "/api/v1/traces/0af7651916cd43dd8448eb211c80319c/logs", 404, false, "", ""},
		{"GET", "/api/v1/metrics/red", 404, false, "", ""},
		{"GET", "/api/nothing", 404, false, "", ""},
		{"GET", "/favicon.ico", 404, false, "", ""},
		{"GET", "/searchx", 404, false, "", ""},
		{"POST", "/search", 405, false, "", ""},
		{"GET", "/api/v1/search", 200, false, "", ""},
		// The API answers its own 405, not the UI's catch-all.
		{"POST", "/api/v1/search", 405, false, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			resp, body := get(t, tc.method, srv.URL+tc.path, nil)
			require.Equal(t, tc.status, resp.StatusCode, body)
			if tc.path == "/api/v1/search" {
				if tc.method == "POST" {
					require.Contains(t, body, "api says no")
				}
				return
			}
			// Security headers on every UI response, errors included.
			csp := resp.Header.Get("Content-Security-Policy")
			require.Contains(t, csp, "script-src 'self'")
			require.Contains(t, csp, "frame-ancestors 'self' https://grafana.example.com")
			require.NotContains(t, csp, "unsafe-inline")
			require.NotContains(t, csp, "unsafe-eval")
			require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
			require.Equal(t, "no-referrer", resp.Header.Get("Referrer-Policy"))
			require.Equal(t, tc.index, strings.Contains(body, "<!doctype html>"), body)
			if tc.index {
				require.Contains(t, body, "/static/"+v+"/app.js")
				require.NotContains(t, body, "{{VERSION}}")
			}
			if tc.cache != "" {
				require.Equal(t, tc.cache, resp.Header.Get("Cache-Control"))
				require.NotEmpty(t, resp.Header.Get("ETag"))
			}
			if tc.ctype != "" {
				require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), tc.ctype), resp.Header.Get("Content-Type"))
			}
		})
	}
}

func TestETag(t *testing.T) {
	u, srv := newServer(t, DefaultConfig())
	for _, path := range []string{"/", "/static/" + u.Version() + "/trace.js"} {
		resp, body := get(t, "GET", srv.URL+path, nil)
		require.Equal(t, 200, resp.StatusCode)
		require.NotEmpty(t, body)
		etag := resp.Header.Get("ETag")
		require.True(t, strings.HasPrefix(etag, `"`+u.Version()+"-"), etag)

		resp, body = get(t, "GET", srv.URL+path, map[string]string{"If-None-Match": etag})
		require.Equal(t, http.StatusNotModified, resp.StatusCode)
		require.Empty(t, body)
		resp, _ = get(t, "GET", srv.URL+path, map[string]string{"If-None-Match": `W/"x", ` + etag})
		require.Equal(t, http.StatusNotModified, resp.StatusCode)
		resp, _ = get(t, "GET", srv.URL+path, map[string]string{"If-None-Match": `"stale"`})
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
}

func TestInvalidConfigFallsBack(t *testing.T) {
	_, srv := newServer(t, Config{FrameAncestors: "*; script-src *"})
	resp, _ := get(t, "GET", srv.URL+"/", nil)
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'self'")
	require.NotContains(t, resp.Header.Get("Content-Security-Policy"), "script-src *")
}

func TestWrapAddsHeaders(t *testing.T) {
	u := New(DefaultConfig(), nil)
	h := u.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "{}") }))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/search", nil))
	require.Equal(t, "nosniff", rec.Header().Get("X-Content-Type-Options"))
	require.Contains(t, rec.Header().Get("Content-Security-Policy"), "frame-ancestors 'self'")
}

// TestAssetsHygiene keeps the rules the CSP relies on, and the escaping
// discipline, true of the source: no inline script or handlers in HTML, and
// no HTML-parsing sinks in the scripts.
func TestAssetsHygiene(t *testing.T) {
	sub, err := fs.Sub(assetFS, "assets")
	require.NoError(t, err)
	idx, err := fs.ReadFile(sub, "index.html")
	require.NoError(t, err)
	for _, m := range regexp.MustCompile(`<script[^>]*>`).FindAllString(string(idx), -1) {
		require.Contains(t, m, "src=", "inline script in index.html: %s", m)
	}
	require.NotRegexp(t, `(?i)\son[a-z]+\s*=`, string(idx))
	sinks := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function`)
	entries, err := fs.ReadDir(sub, ".")
	require.NoError(t, err)
	n := 0
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".js") {
			continue
		}
		n++
		b, err := fs.ReadFile(sub, e.Name())
		require.NoError(t, err)
		for _, m := range sinks.FindAllStringIndex(string(b), -1) {
			line := string(b[max(0, m[0]-60):min(len(b), m[1]+20)])
			// dom.js names the sinks only to refuse them.
			require.Contains(t, line, "k === '", "%s uses an HTML sink: %s", e.Name(), line)
		}
	}
	require.GreaterOrEqual(t, n, 5)
}
