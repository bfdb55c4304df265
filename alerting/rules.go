// Package alerting is Threadline's ruler: alert rules over span-derived RED
// metrics (and, once a source is wired, over received OTLP metrics), an
// Alertmanager webhook receiver for alerts fired elsewhere, and a small Badger
// store of the resulting alert events, each linked to the traces that explain
// it.
//
// Rules are evaluated over RED metrics merged across every indexer: one
// indexer sees only the traces of its Kafka partitions, so a p99 or an error
// rate computed there would be wrong. The engine therefore runs beside the
// query service's fan-out (like Loki's ruler), on one replica.
//
// Alert hygiene follows what on-call engineers ask for: an alert that fires
// and resolves again and again within minutes is marked flapping and held
// firing (its resolve/fire notifications suppressed) until it has stayed
// resolved for a while, but never longer than an absolute cap; fire events of
// one rule group that arrive together are given one group ID and a summary, so
// a burst reads as one notification.
//
// The package holds logic and storage only; HTTP lives in package query.
package alerting

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Expression kinds.
const (
	// KindRED is a rule over span-derived RED metrics of one service (and
	// optionally one operation), merged across indexers.
	KindRED = "red"
	// KindMetric is a rule over received OTLP metrics, by name and exact
	// attribute matchers. It needs a MetricSource (see WithMetricSource).
	KindMetric = "metric"
)

// RED signals.
const (
	SignalP99       = "p99"
	SignalP90       = "p90"
	SignalP50       = "p50"
	SignalErrorRate = "error_rate"
	SignalRate      = "rate"
)

// Defaults of a group's settings.
const (
	DefaultInterval           = 30 * time.Second
	DefaultWindow             = time.Minute
	DefaultQueryDelay         = 15 * time.Second
	DefaultFlapWindow         = 10 * time.Minute
	DefaultFlapThreshold      = 3
	DefaultFlapMaxSuppression = time.Hour
	DefaultGroupWait          = 30 * time.Second
)

// Group is a named set of rules evaluated together every Interval.
type Group struct {
	Name string
	// Interval between evaluations. Default 30s.
	Interval time.Duration
	// QueryDelay shifts every evaluation window into the past: RED metrics
	// of a trace are written only after the indexer has decided the trace
	// (decision wait, default 5s) and flushed them (1s), so the newest
	// seconds are incomplete and would read as a traffic drop. Default 15s.
	QueryDelay time.Duration
	// FlapWindow: an alert that fires more than FlapThreshold times within
	// FlapWindow is flapping; a flapping alert is released once it has
	// stayed resolved for FlapWindow. Default 10m.
	FlapWindow time.Duration
	// FlapThreshold is the number of fires within FlapWindow above which an
	// alert is flapping. Default 3.
	FlapThreshold int
	// FlapMaxSuppression is the absolute cap on how long a flapping alert's
	// notifications are suppressed. Default 1h.
	FlapMaxSuppression time.Duration
	// GroupWait: fire events of this group within GroupWait of the first
	// share its group ID and summary. Default 30s.
	GroupWait time.Duration
	Rules     []Rule
}

// Rule is one alerting rule.
type Rule struct {
	// Alert is the alert's name.
	Alert string
	Expr  Expr
	// For is how long the condition must hold before the alert fires.
	For         time.Duration
	Labels      map[string]string
	Annotations map[string]string
	// Line is the rule's line in its file (0 when not loaded from a file).
	Line int
}

// Expr is a rule's condition.
type Expr struct {
	// Kind is KindRED or KindMetric.
	Kind string
	// Service and Operation select RED series (Kind red). An empty
	// Operation sums every operation of the service.
	Service   string
	Operation string
	// Signal is one of p99, p90, p50, error_rate, rate (Kind red).
	Signal string
	// Name and Matchers select received metric points (Kind metric);
	// matchers are exact attribute values.
	Name     string
	Matchers map[string]string
	// Op is ">" or "<".
	Op string
	// Threshold is in milliseconds for latencies, a ratio (0..1) for
	// error_rate, per second for rate, and the metric's unit for metrics.
	Threshold float64
	// Window is the range each evaluation reads, ending QueryDelay before
	// the evaluation time. Default 1m.
	Window time.Duration
}

// Holds reports whether value satisfies the condition.
func (e Expr) Holds(value float64) bool {
	if math.IsNaN(value) {
		return false
	}
	if e.Op == "<" {
		return value < e.Threshold
	}
	return value > e.Threshold
}

// String renders the expression for logs and event annotations.
func (e Expr) String() string {
	if e.Kind == KindMetric {
		return fmt.Sprintf("%s%s %s %g", e.Name, matcherString(e.Matchers), e.Op, e.Threshold)
	}
	target := e.Service
	if e.Operation != "" {
		target += "/" + e.Operation
	}
	unit := ""
	switch e.Signal {
	case SignalP50, SignalP90, SignalP99:
		unit = "ms"
	case SignalRate:
		unit = "/s"
	}
	return fmt.Sprintf("%s(%s) %s %g%s", e.Signal, target, e.Op, e.Threshold, unit)
}

func matcherString(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	keys := sortedKeys(m)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%q", k, m[k]))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// File shapes as written in YAML. Durations are strings so "0s" can be told
// from "not set".
type fileYAML struct {
	Groups []groupYAML `yaml:"groups"`
}

type groupYAML struct {
	Name               string     `yaml:"name"`
	Interval           string     `yaml:"interval"`
	QueryDelay         string     `yaml:"query_delay"`
	FlapWindow         string     `yaml:"flap_window"`
	FlapThreshold      *int       `yaml:"flap_threshold"`
	FlapMaxSuppression string     `yaml:"flap_max_suppression"`
	GroupWait          string     `yaml:"group_wait"`
	Rules              []ruleYAML `yaml:"rules"`
}

type ruleYAML struct {
	Alert       string            `yaml:"alert"`
	Expr        exprYAML          `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type exprYAML struct {
	Kind      string            `yaml:"kind"`
	Service   string            `yaml:"service"`
	Operation string            `yaml:"operation"`
	Signal    string            `yaml:"signal"`
	Name      string            `yaml:"name"`
	Matchers  map[string]string `yaml:"matchers"`
	Op        string            `yaml:"op"`
	Threshold *float64          `yaml:"threshold"`
	Window    string            `yaml:"window"`
}

// labelNameRE is Prometheus's label name syntax; labels are forwarded to
// tools that enforce it.
var labelNameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// LoadRules reads and validates a rules file.
func LoadRules(path string) ([]Group, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load alert rules: %w", err)
	}
	groups, err := ParseRules(b)
	if err != nil {
		return nil, fmt.Errorf("load alert rules %s: %w", path, err)
	}
	return groups, nil
}

// ParseRules decodes and validates rules YAML. Errors name the line.
func ParseRules(data []byte) ([]Group, error) {
	// Strict decode first: unknown fields and type errors come with yaml.v3's
	// line numbers. An empty file is an empty rule set.
	var f fileYAML
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("decode: %w", err)
	}
	// Then a node tree for the line of each group and rule, for the
	// semantic errors below.
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root)
	groupNodes, ruleNodes := lineIndex(&root)

	var errs []error
	seenGroup := map[string]bool{}
	out := make([]Group, 0, len(f.Groups))
	for gi, gy := range f.Groups {
		gline := at(groupNodes, gi)
		gerr := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("line %d: group %q: %s", gline, gy.Name, fmt.Sprintf(format, args...)))
		}
		g := Group{Name: gy.Name, FlapThreshold: DefaultFlapThreshold}
		if gy.Name == "" {
			gerr("name is required")
		} else if seenGroup[gy.Name] {
			gerr("duplicate group name")
		}
		seenGroup[gy.Name] = true
		for _, d := range []struct {
			name string
			raw  string
			dst  *time.Duration
			def  time.Duration
			zero bool // zero allowed
		}{
			{"interval", gy.Interval, &g.Interval, DefaultInterval, false},
			{"query_delay", gy.QueryDelay, &g.QueryDelay, DefaultQueryDelay, true},
			{"flap_window", gy.FlapWindow, &g.FlapWindow, DefaultFlapWindow, false},
			{"flap_max_suppression", gy.FlapMaxSuppression, &g.FlapMaxSuppression, DefaultFlapMaxSuppression, false},
			{"group_wait", gy.GroupWait, &g.GroupWait, DefaultGroupWait, true},
		} {
			v, err := parseDuration(d.raw, d.def, d.zero)
			if err != nil {
				gerr("%s: %v", d.name, err)
			}
			*d.dst = v
		}
		if g.Interval > 0 && g.Interval < time.Second {
			gerr("interval %s is below 1s", g.Interval)
		}
		if gy.FlapThreshold != nil {
			g.FlapThreshold = *gy.FlapThreshold
			if g.FlapThreshold < 1 {
				gerr("flap_threshold must be at least 1, got %d", g.FlapThreshold)
			}
		}
		if g.FlapMaxSuppression > 0 && g.FlapWindow > 0 && g.FlapMaxSuppression < g.FlapWindow {
			gerr("flap_max_suppression (%s) is shorter than flap_window (%s)", g.FlapMaxSuppression, g.FlapWindow)
		}
		seenRule := map[string]bool{}
		for ri, ry := range gy.Rules {
			line := at(ruleNodes[gi], ri)
			r, rerrs := buildRule(ry, line)
			for _, e := range rerrs {
				errs = append(errs, fmt.Errorf("line %d: group %q: rule %q: %w", line, gy.Name, ry.Alert, e))
			}
			key := r.Alert + "\x00" + labelKey(r.Labels)
			if r.Alert != "" && seenRule[key] {
				errs = append(errs, fmt.Errorf("line %d: group %q: rule %q: duplicate alert with the same labels", line, gy.Name, ry.Alert))
			}
			seenRule[key] = true
			g.Rules = append(g.Rules, r)
		}
		out = append(out, g)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func buildRule(ry ruleYAML, line int) (Rule, []error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	r := Rule{Alert: ry.Alert, Labels: ry.Labels, Annotations: ry.Annotations, Line: line}
	if r.Alert == "" {
		bad("alert (the alert name) is required")
	} else if !labelNameRE.MatchString(r.Alert) {
		bad("alert name %q must match %s", r.Alert, labelNameRE)
	}
	var err error
	if r.For, err = parseDuration(ry.For, 0, true); err != nil {
		bad("for: %v", err)
	}
	for k := range r.Labels {
		if !labelNameRE.MatchString(k) {
			bad("label name %q must match %s", k, labelNameRE)
		}
	}
	ey := ry.Expr
	e := Expr{Kind: ey.Kind, Service: ey.Service, Operation: ey.Operation, Signal: ey.Signal,
		Name: ey.Name, Matchers: ey.Matchers, Op: ey.Op}
	if e.Window, err = parseDuration(ey.Window, DefaultWindow, false); err != nil {
		bad("expr.window: %v", err)
	}
	switch e.Kind {
	case KindRED:
		if e.Service == "" {
			bad("expr.service is required for kind red")
		}
		switch e.Signal {
		case SignalP99, SignalP90, SignalP50, SignalErrorRate, SignalRate:
		case "":
			bad("expr.signal is required for kind red: one of p99, p90, p50, error_rate, rate")
		default:
			bad("expr.signal %q is not one of p99, p90, p50, error_rate, rate", e.Signal)
		}
		if e.Name != "" || len(e.Matchers) > 0 {
			bad("expr.name and expr.matchers belong to kind metric, not red")
		}
	case KindMetric:
		if e.Name == "" {
			bad("expr.name (the metric name) is required for kind metric")
		}
		if e.Service != "" || e.Operation != "" || e.Signal != "" {
			bad("expr.service, expr.operation and expr.signal belong to kind red; use matchers for kind metric")
		}
	case "":
		bad("expr.kind is required: red or metric")
	default:
		bad("expr.kind %q is not red or metric", e.Kind)
	}
	switch e.Op {
	case ">", "<":
	case "":
		bad(`expr.op is required: ">" or "<"`)
	default:
		bad(`expr.op %q is not ">" or "<"`, e.Op)
	}
	if ey.Threshold == nil {
		bad("expr.threshold is required")
	} else {
		e.Threshold = *ey.Threshold
		if math.IsNaN(e.Threshold) || math.IsInf(e.Threshold, 0) {
			bad("expr.threshold must be a finite number")
		}
		if e.Kind == KindRED && e.Signal == SignalErrorRate && (e.Threshold < 0 || e.Threshold > 1) {
			bad("expr.threshold %g for error_rate must be a ratio between 0 and 1", e.Threshold)
		}
	}
	r.Expr = e
	return r, errs
}

func parseDuration(raw string, def time.Duration, zeroOK bool) (time.Duration, error) {
	if raw == "" {
		return def, nil
	}
	d, err := time.ParseDuration(raw)
	if err != nil {
		return def, fmt.Errorf("invalid duration %q (want e.g. 30s, 1m)", raw)
	}
	if d < 0 || (d == 0 && !zeroOK) {
		return def, fmt.Errorf("duration %q must be positive", raw)
	}
	return d, nil
}

// lineIndex returns the line of each group mapping and, per group, of each
// rule mapping, read from the node tree. Missing entries read as line 0.
func lineIndex(root *yaml.Node) (groups []int, rules [][]int) {
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return nil, nil
	}
	doc := root.Content[0]
	gseq := mapValue(doc, "groups")
	if gseq == nil || gseq.Kind != yaml.SequenceNode {
		return nil, nil
	}
	for _, g := range gseq.Content {
		groups = append(groups, g.Line)
		var lines []int
		if rseq := mapValue(g, "rules"); rseq != nil && rseq.Kind == yaml.SequenceNode {
			for _, r := range rseq.Content {
				lines = append(lines, r.Line)
			}
		}
		rules = append(rules, lines)
	}
	return groups, rules
}

func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func at(lines []int, i int) int {
	if i < len(lines) {
		return lines[i]
	}
	return 0
}
