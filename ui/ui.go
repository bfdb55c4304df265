// Package ui serves Threadline's web UI: search, the trace waterfall, span
// details with their log lines, metric → traces and the service map.
//
// The UI is plain ES modules and CSS embedded with go:embed, so `go build`
// alone yields a working UI and the build is reproducible without npm. Assets
// are served under /static/<version>/ where version is a hash of their
// content: they can be cached for a year, and a new build changes every URL.
// index.html is answered for the app's own paths (/, /search, /trace/…,
// /map, /metrics-view) so deep links are shareable; it is revalidated by ETag.
//
// Everything the UI renders from span data is untrusted. The scripts build
// the DOM with textContent, and every response carries a Content-Security-
// Policy without 'unsafe-inline' for scripts, so injected markup cannot run.
package ui

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"mime"
	"net/http"
	"path"
	"sort"
	"strings"
)

//go:embed assets
var assetFS embed.FS

// Config holds the UI's settings.
type Config struct {
	// FrameAncestors is the CSP frame-ancestors source list: who may embed the
	// UI in a frame (Grafana panels, iframes with ?embed=1). Space-separated
	// sources such as 'self' https://grafana.example.com, or 'none'.
	// Default 'self'.
	FrameAncestors string
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{FrameAncestors: "'self'"}
}

// RegisterFlags binds the settings to fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.FrameAncestors, "ui-frame-ancestors", c.FrameAncestors,
		"CSP frame-ancestors sources allowed to embed the UI (e.g. \"'self' https://grafana.example.com\"), or 'none'.")
}

// Validate rejects a frame-ancestors list that would break or widen the CSP
// header: separators that start a new directive, quotes around anything but
// the keywords, or 'none' combined with other sources.
func (c Config) Validate() error {
	if strings.ContainsAny(c.FrameAncestors, "\r\n\x00") {
		return fmt.Errorf("ui-frame-ancestors must be one line, got %q", c.FrameAncestors)
	}
	srcs := strings.Fields(c.FrameAncestors)
	if len(srcs) == 0 {
		return errors.New("ui-frame-ancestors must not be empty; use 'none' to forbid embedding")
	}
	for _, s := range srcs {
		switch {
		case s == "'none'" && len(srcs) > 1:
			return fmt.Errorf("ui-frame-ancestors: 'none' cannot be combined with other sources, got %q", c.FrameAncestors)
		case s == "'self'" || s == "'none'":
		case strings.ContainsAny(s, ";,'\"\\") || hasControl(s):
			return fmt.Errorf("ui-frame-ancestors: source %q is not a host or scheme source (quote only 'self' or 'none')", s)
		}
	}
	return nil
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

// asset is one embedded file, ready to serve.
type asset struct {
	body        []byte
	contentType string
	etag        string
}

// UI serves the embedded web UI.
type UI struct {
	logger  *slog.Logger
	csp     string
	version string
	index   asset
	assets  map[string]asset
}

// appPaths are the client-side routes answered with index.html: exact
// paths, and prefixes ending in "/".
var appPaths = []string{"/", "/search", "/map", "/metrics-view", "/trace/"}

// New loads the embedded assets. An invalid cfg (Validate was not called)
// falls back to the default frame-ancestors, logged, rather than sending a
// broken CSP.
func New(cfg Config, logger *slog.Logger) *UI {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		logger.Error("invalid UI config; using the default frame-ancestors", "err", err)
		cfg.FrameAncestors = DefaultConfig().FrameAncestors
	}
	u := &UI{logger: logger, assets: map[string]asset{}}
	u.csp = strings.Join([]string{
		"default-src 'self'",
		"script-src 'self'",
		"style-src 'self'",
		"img-src 'self' data:",
		"connect-src 'self'",
		"font-src 'self'",
		"object-src 'none'",
		"base-uri 'none'",
		"form-action 'self'",
		"frame-ancestors " + strings.Join(strings.Fields(cfg.FrameAncestors), " "),
	}, "; ")

	sub, err := fs.Sub(assetFS, "assets")
	if err != nil {
		panic(fmt.Sprintf("ui assets: %v", err)) // embedded at build time; cannot fail
	}
	var names []string
	_ = fs.WalkDir(sub, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, p)
		}
		return nil
	})
	sort.Strings(names)
	h := sha256.New()
	files := map[string][]byte{}
	for _, n := range names {
		b, err := fs.ReadFile(sub, n)
		if err != nil {
			panic(fmt.Sprintf("ui asset %s: %v", n, err))
		}
		files[n] = b
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(b))
		h.Write(b)
	}
	u.version = hex.EncodeToString(h.Sum(nil))[:12]
	for n, b := range files {
		if n == "index.html" {
			continue
		}
		u.assets[n] = newAsset(n, b, u.version)
	}
	idx := strings.ReplaceAll(string(files["index.html"]), "{{VERSION}}", u.version)
	u.index = newAsset("index.html", []byte(idx), u.version)
	return u
}

func newAsset(name string, body []byte, version string) asset {
	ct := mime.TypeByExtension(path.Ext(name))
	switch path.Ext(name) {
	case ".js":
		// Some systems map .js to text/plain; module scripts need a JS type.
		ct = "text/javascript; charset=utf-8"
	case ".css":
		ct = "text/css; charset=utf-8"
	case ".html":
		ct = "text/html; charset=utf-8"
	}
	if ct == "" {
		ct = "application/octet-stream"
	}
	sum := sha256.Sum256(body)
	return asset{body: body, contentType: ct, etag: `"` + version + "-" + hex.EncodeToString(sum[:8]) + `"`}
}

// Version is the content hash in the asset URLs.
func (u *UI) Version() string { return u.version }

// Register mounts the UI on mux at "/" (a catch-all: more specific patterns
// such as the API's win) and "/static/".
func (u *UI) Register(mux *http.ServeMux) {
	mux.Handle("/", u)
}

// ServeHTTP answers static assets, index.html for the app's paths, and 404
// for anything else: never index.html for /api/, so an API path that does
// not exist (yet) is a clean 404 the UI can recognise.
func (u *UI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.securityHeaders(w.Header())
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	p := r.URL.Path
	switch {
	case p == "/api" || strings.HasPrefix(p, "/api/"):
		http.Error(w, "not found", http.StatusNotFound)
	case strings.HasPrefix(p, "/static/"):
		u.serveStatic(w, r, strings.TrimPrefix(p, "/static/"))
	case isAppPath(p):
		w.Header().Set("Cache-Control", "no-cache")
		serveAsset(w, r, u.index)
	default:
		http.Error(w, "not found", http.StatusNotFound)
	}
}

func isAppPath(p string) bool {
	for _, a := range appPaths {
		if p == a || (strings.HasSuffix(a, "/") && a != "/" && strings.HasPrefix(p, a)) {
			return true
		}
	}
	return false
}

// serveStatic serves /static/<version>/<name>. The current version is
// immutable for a year; another version (a page loaded before a deploy) gets
// today's file uncached, which beats a broken page.
func (u *UI) serveStatic(w http.ResponseWriter, r *http.Request, rest string) {
	ver, name, ok := strings.Cut(rest, "/")
	a, found := u.assets[name]
	if !ok || !found {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if ver == u.version {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	serveAsset(w, r, a)
}

func serveAsset(w http.ResponseWriter, r *http.Request, a asset) {
	h := w.Header()
	h.Set("ETag", a.etag)
	h.Set("Content-Type", a.contentType)
	if etagMatches(r.Header.Get("If-None-Match"), a.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Length", fmt.Sprint(len(a.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(a.body)
	}
}

func etagMatches(header, etag string) bool {
	for part := range strings.SplitSeq(header, ",") {
		part = strings.TrimPrefix(strings.TrimSpace(part), "W/")
		if part == etag || part == "*" {
			return true
		}
	}
	return false
}

// Wrap adds the UI's security headers to every response of next, for a
// server that wants them on its API answers too (an API response opened
// directly in a browser is then under the same CSP).
func (u *UI) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.securityHeaders(w.Header())
		next.ServeHTTP(w, r)
	})
}

func (u *UI) securityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", u.csp)
	h.Set("X-Content-Type-Options", "nosniff")
	// Trace IDs sit in our URLs; never hand them to another origin.
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
}
