// Package health serves what every Threadline binary exposes to its operators:
// /healthz (liveness: the process answers), /readyz (local health: the store is
// writable, the consumer owns partitions…) and /metrics (Prometheus).
//
// Dependency checks (Kafka reachable) are reported by /readyz but never fail
// it: a shared dependency's blip must not take the whole fleet out of rotation
// at once (fail open). Every answer carries the running version so stale
// "zombie" nodes stand out.
package health

import (
	"context"
	"encoding/json"
	"net/http"
	"runtime/debug"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check returns nil when healthy.
type Check func(ctx context.Context) error

// Health holds the checks of one process.
type Health struct {
	version string
	started time.Time
	reg     *prometheus.Registry

	mu    sync.Mutex
	local map[string]Check
	deps  map[string]Check
}

// New returns a Health with a fresh Prometheus registry that already carries
// the Go runtime and process collectors.
func New(version string) *Health {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "threadline_build_info",
		Help:        "Always 1; the version label tells what runs.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	info.Set(1)
	reg.MustRegister(info)
	return &Health{version: version, started: time.Now(), reg: reg, local: map[string]Check{}, deps: map[string]Check{}}
}

// Registry is where the process registers its metrics.
func (h *Health) Registry() *prometheus.Registry { return h.reg }

// AddLocal adds a readiness check whose failure makes /readyz answer 503.
func (h *Health) AddLocal(name string, c Check) {
	h.mu.Lock()
	h.local[name] = c
	h.mu.Unlock()
}

// AddDependency adds a check that /readyz reports but that never fails it.
func (h *Health) AddDependency(name string, c Check) {
	h.mu.Lock()
	h.deps[name] = c
	h.mu.Unlock()
}

// Register mounts /healthz, /readyz and /metrics on mux.
func (h *Health) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", h.healthz)
	mux.HandleFunc("GET /readyz", h.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(h.reg, promhttp.HandlerOpts{EnableOpenMetrics: true, Registry: h.reg}))
}

type checkResult struct {
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
}

func (h *Health) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "version": h.version, "uptime": time.Since(h.started).Round(time.Second).String()})
}

func (h *Health) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	h.mu.Lock()
	local, deps := copyChecks(h.local), copyChecks(h.deps)
	h.mu.Unlock()
	localRes, ok := run(ctx, local)
	depRes, _ := run(ctx, deps)
	status, code := "ready", http.StatusOK
	if !ok {
		status, code = "not ready", http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]any{"status": status, "version": h.version, "checks": localRes, "dependencies": depRes})
}

func copyChecks(m map[string]Check) map[string]Check {
	out := make(map[string]Check, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// run runs checks concurrently so one slow dependency does not delay the answer
// beyond the shared deadline.
func run(ctx context.Context, checks map[string]Check) (map[string]checkResult, bool) {
	names := make([]string, 0, len(checks))
	for n := range checks {
		names = append(names, n)
	}
	sort.Strings(names)
	res := make([]checkResult, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := checks[n](ctx); err != nil {
				res[i] = checkResult{Status: "fail", Error: err.Error()}
				return
			}
			res[i] = checkResult{Status: "ok"}
		}()
	}
	wg.Wait()
	out := make(map[string]checkResult, len(names))
	ok := true
	for i, n := range names {
		out[n] = res[i]
		ok = ok && res[i].Status == "ok"
	}
	return out, ok
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Version is the module version stamped by the Go toolchain, or "dev".
func Version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
