package alerting

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMetricRulesAlerting(t *testing.T) {
	groups, err := ParseRules([]byte(`
groups:
  - name: payments
    rules:
      - alert: PaymentSlow
        expr: {kind: metric, name: payment.duration, matchers: {service.name: payment, route: /pay}, op: ">", threshold: 500}
      - alert: AnyQueueDeep
        expr: {kind: metric, name: queue.depth, op: ">", threshold: 100}
      - alert: NoRegion
        expr: {kind: metric, name: cache.misses, matchers: {region: ""}, op: ">", threshold: 1}
      - alert: BankP99
        expr: {kind: metric, name: "http.server.request.duration:p99", matchers: {service.name: bank-api}, op: ">", threshold: 2}
      - alert: CheckoutP99
        expr: {kind: red, service: checkout, signal: p99, op: ">", threshold: 500}
`))
	require.NoError(t, err)
	m := NewMetricRules(groups)
	require.Equal(t, 4, m.Len(), "red rules are not metric rules")
	for _, c := range []struct {
		metric string
		labels map[string]string
		want   bool
	}{
		{"payment.duration", map[string]string{"service.name": "payment", "route": "/pay", "extra": "x"}, true},
		{"payment.duration", map[string]string{"service.name": "payment", "route": "/refund"}, false},
		{"payment.duration", map[string]string{"service.name": "payment"}, false},
		{"queue.depth", nil, true},
		{"queue.depth", map[string]string{"queue": "a"}, true},
		{"cache.misses", map[string]string{"host": "a"}, true},
		{"cache.misses", map[string]string{"region": "eu"}, false},
		{"checkout", map[string]string{"service.name": "checkout"}, false},
		{"unknown", nil, false},
		// A rule over a function of a metric watches the metric itself.
		{"http.server.request.duration", map[string]string{"service.name": "bank-api"}, true},
		{"http.server.request.duration:p99", map[string]string{"service.name": "bank-api"}, false},
	} {
		require.Equal(t, c.want, m.Alerting(c.metric, c.labels), "%s %v", c.metric, c.labels)
	}
}

func TestSplitMetricFunc(t *testing.T) {
	for in, want := range map[string][2]string{
		"a":            {"a", ""},
		"a:p99":        {"a", "p99"},
		"a:rate":       {"a", "rate"},
		"a:unknown":    {"a:unknown", ""},
		":p99":         {":p99", ""},
		"ns:a.b:count": {"ns:a.b", "count"},
	} {
		m, fn := SplitMetricFunc(in)
		require.Equal(t, want, [2]string{m, fn}, in)
	}
}
