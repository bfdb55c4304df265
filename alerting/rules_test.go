package alerting

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLoadRulesGood(t *testing.T) {
	groups, err := LoadRules("testdata/rules_good.yaml")
	require.NoError(t, err)
	require.Len(t, groups, 2)

	g := groups[0]
	require.Equal(t, "checkout", g.Name)
	require.Equal(t, 15*time.Second, g.Interval)
	require.Equal(t, time.Duration(0), g.QueryDelay)
	require.Equal(t, 5*time.Minute, g.FlapWindow)
	require.Equal(t, 2, g.FlapThreshold)
	require.Equal(t, 30*time.Minute, g.FlapMaxSuppression)
	require.Equal(t, time.Minute, g.GroupWait)
	require.Len(t, g.Rules, 2)
	r := g.Rules[0]
	require.Equal(t, "CheckoutSlow", r.Alert)
	require.Equal(t, Expr{Kind: KindRED, Service: "checkout", Operation: "POST /pay", Signal: SignalP99,
		Op: ">", Threshold: 500, Window: 2 * time.Minute}, r.Expr)
	require.Equal(t, time.Minute, r.For)
	require.Equal(t, map[string]string{"severity": "page"}, r.Labels)
	require.Equal(t, "checkout p99 above 500ms", r.Annotations["summary"])
	require.Equal(t, 10, r.Line)
	require.Equal(t, "p99(checkout/POST /pay) > 500ms", r.Expr.String())
	require.Equal(t, DefaultWindow, g.Rules[1].Expr.Window)

	d := groups[1]
	require.Equal(t, DefaultInterval, d.Interval)
	require.Equal(t, DefaultQueryDelay, d.QueryDelay)
	require.Equal(t, DefaultFlapWindow, d.FlapWindow)
	require.Equal(t, DefaultFlapThreshold, d.FlapThreshold)
	require.Equal(t, DefaultFlapMaxSuppression, d.FlapMaxSuppression)
	require.Equal(t, DefaultGroupWait, d.GroupWait)
	m := d.Rules[1]
	require.Equal(t, KindMetric, m.Expr.Kind)
	require.Equal(t, "queue_depth", m.Expr.Name)
	require.Equal(t, map[string]string{"service.name": "worker", "queue": "orders"}, m.Expr.Matchers)
	require.Equal(t, `queue_depth{queue="orders",service.name="worker"} > 1000`, m.Expr.String())
}

func TestParseRulesEmpty(t *testing.T) {
	groups, err := ParseRules(nil)
	require.NoError(t, err)
	require.Empty(t, groups)
}

func TestParseRulesBad(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"syntax", "groups: [\n  {name: x\n", []string{"decode", "line"}},
		{"unknown field", "groups:\n  - name: g\n    rulez: []\n", []string{"line 3", "rulez"}},
		{"wrong type", "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: {kind: red, service: s, signal: p99, op: '>', threshold: fast}\n", []string{"line 5"}},
		{"no group name", "groups:\n  - rules: []\n", []string{"line 2", "name is required"}},
		{"duplicate group", "groups:\n  - name: g\n  - name: g\n", []string{"line 3", "duplicate group"}},
		{"bad interval", "groups:\n  - name: g\n    interval: soon\n", []string{"line 2", "interval", "soon"}},
		{"flap threshold", "groups:\n  - name: g\n    flap_threshold: 0\n", []string{"flap_threshold must be at least 1"}},
		{"max below window", "groups:\n  - name: g\n    flap_window: 1h\n    flap_max_suppression: 10m\n", []string{"shorter than flap_window"}},
		{"missing kind", "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: {service: s, op: '>', threshold: 1}\n", []string{"line 4", `rule "A"`, "expr.kind is required"}},
		{"bad signal", "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: {kind: red, service: s, signal: p95, op: '>', threshold: 1}\n", []string{"line 4", `signal "p95"`}},
		{"no service", "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: {kind: red, signal: p99, op: '>', threshold: 1}\n", []string{"expr.service is required"}},
		{"bad op", "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: {kind: red, service: s, signal: p99, op: '>=', threshold: 1}\n", []string{`expr.op ">="`}},
		{"no threshold", "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: {kind: red, service: s, signal: p99, op: '>'}\n", []string{"expr.threshold is required"}},
		{"error rate ratio", "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: {kind: red, service: s, signal: error_rate, op: '>', threshold: 5}\n", []string{"ratio between 0 and 1"}},
		{"metric without name", "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: {kind: metric, op: '>', threshold: 1}\n", []string{"expr.name (the metric name) is required"}},
		{"metric with service", "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: {kind: metric, name: m, service: s, op: '>', threshold: 1}\n", []string{"belong to kind red"}},
		{"bad alert name", "groups:\n  - name: g\n    rules:\n      - alert: 'high latency'\n        expr: {kind: red, service: s, signal: p99, op: '>', threshold: 1}\n", []string{"must match"}},
		{"bad for", "groups:\n  - name: g\n    rules:\n      - alert: A\n        for: -1m\n        expr: {kind: red, service: s, signal: p99, op: '>', threshold: 1}\n", []string{"for:", "must be positive"}},
		{"bad label", "groups:\n  - name: g\n    rules:\n      - alert: A\n        labels: {bad-name: x}\n        expr: {kind: red, service: s, signal: p99, op: '>', threshold: 1}\n", []string{`label name "bad-name"`}},
		{"duplicate rule", "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: {kind: red, service: s, signal: p99, op: '>', threshold: 1}\n      - alert: A\n        expr: {kind: red, service: s, signal: p50, op: '>', threshold: 1}\n", []string{"line 6", "duplicate alert"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRules([]byte(tc.yaml))
			require.Error(t, err)
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestLoadRulesFileErrors(t *testing.T) {
	_, err := LoadRules(filepath.Join(t.TempDir(), "missing.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)

	p := filepath.Join(t.TempDir(), "bad.yaml")
	require.NoError(t, os.WriteFile(p, []byte("groups:\n  - name: g\n    rules:\n      - alert: A\n"), 0o600))
	_, err = LoadRules(p)
	require.ErrorContains(t, err, p)
	require.ErrorContains(t, err, "line 4")
}

func TestConfigValidate(t *testing.T) {
	c := DefaultConfig()
	require.NoError(t, c.Validate())
	c.RulesFile = "rules.yaml"
	require.ErrorContains(t, c.Validate(), "--alert-data-dir")
	c.DataDir, c.Retention = "/tmp/x", 0
	require.ErrorContains(t, c.Validate(), "alert-retention")
}
