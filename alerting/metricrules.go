package alerting

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
			m.byName[r.Expr.Name] = append(m.byName[r.Expr.Name], r.Expr.Matchers)
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
