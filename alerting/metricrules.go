package alerting

import "strings"

// MetricFuncs are the functions a kind-metric rule's name may end in
// ("latency:p99"), with the quantile each one takes (0 for none).
var MetricFuncs = map[string]float64{"rate": 0, "count": 0, "avg": 0, "p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}

// SplitMetricFunc splits a rule's metric name into the received metric's
// name and the function applied to it ("" for none).
func SplitMetricFunc(name string) (metric, fn string) {
	if i := strings.LastIndexByte(name, ':'); i > 0 {
		if _, ok := MetricFuncs[name[i+1:]]; ok {
			return name[:i], name[i+1:]
		}
	}
	return name, ""
}

// MetricRules answers, from loaded rules, whether a received metric series is
// an alerting metric: some rule of kind metric evaluates it (its name, and
// every matcher equal to the series' label). The indexer asks it for each
// exemplar, to keep the traces behind the metrics that page people. It is
// read-only after construction and safe for concurrent use.
type MetricRules struct {
	byName map[string][]map[string]string
}

// NewMetricRules indexes the kind-metric rules of groups by metric name.
func NewMetricRules(groups []Group) *MetricRules {
	m := &MetricRules{byName: map[string][]map[string]string{}}
	for _, g := range groups {
		for _, r := range g.Rules {
			if r.Expr.Kind != KindMetric {
				continue
			}
			// Exemplars name the received metric, not the rule's function of it.
			name, _ := SplitMetricFunc(r.Expr.Name)
			m.byName[name] = append(m.byName[name], r.Expr.Matchers)
		}
	}
	return m
}

// Alerting reports whether some rule evaluates the series metric{labels}.
// Matching is the metric store's: a matcher equals the label's value, and a
// missing label reads as "" (so a matcher on "" selects series without it).
func (m *MetricRules) Alerting(metric string, labels map[string]string) bool {
	for _, matchers := range m.byName[metric] {
		ok := true
		for k, want := range matchers {
			if labels[k] != want {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// Len is the number of kind-metric rules indexed.
func (m *MetricRules) Len() int {
	n := 0
	for _, ms := range m.byName {
		n += len(ms)
	}
	return n
}
