package alerting

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// BenchmarkEvaluate measures one evaluation of 100 RED rules against a
// scripted source (the engine's own cost, without network fan-out), with
// every tenth rule flipping state each round so events are written too.
func BenchmarkEvaluate(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("groups:\n  - name: g\n    query_delay: 0s\n    rules:\n")
	for i := range 100 {
		fmt.Fprintf(&sb, "      - alert: R%d\n        expr: {kind: red, service: s%d, signal: error_rate, op: \">\", threshold: 0.1}\n", i, i)
	}
	groups, err := ParseRules([]byte(sb.String()))
	if err != nil {
		b.Fatal(err)
	}
	st, err := OpenStore(b.TempDir(), nil, nil, DefaultStoreOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	clock := &fakeClock{now: time.Now()}
	round := 0
	src := &scriptRED{fn: func(service string, _ time.Time) (Point, error) {
		if strings.HasSuffix(service, "0") && round%2 == 0 {
			return Point{Count: 10, Errors: 5}, nil
		}
		return Point{Count: 10}, nil
	}}
	eng, err := NewEngine(groups, src, nil, st, nil, nil, clock.Now)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		round++
		src.calls = src.calls[:0]
		eng.Evaluate(ctx)
		clock.Advance(time.Hour) // beyond flap_window: no flapping
	}
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "rules/s")
}
