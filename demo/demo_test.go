package demo

import (
	"context"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/trace"
	collectorlogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	collectormetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// receiver is a minimal OTLP trace and log receiver that keeps every
// request.
type receiver struct {
	collectortracepb.UnimplementedTraceServiceServer
	mu      sync.Mutex
	reqs    []*collectortracepb.ExportTraceServiceRequest
	logs    logReceiver
	metrics metricReceiver
}

// metricReceiver is the receiver's MetricsService.
type metricReceiver struct {
	collectormetricspb.UnimplementedMetricsServiceServer
	mu   sync.Mutex
	reqs []*collectormetricspb.ExportMetricsServiceRequest
}

func (r *metricReceiver) Export(_ context.Context, req *collectormetricspb.ExportMetricsServiceRequest) (*collectormetricspb.ExportMetricsServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, proto.CloneOf(req))
	return &collectormetricspb.ExportMetricsServiceResponse{}, nil
}

// logReceiver is the receiver's LogsService; a type of its own because
// both services name their method Export.
type logReceiver struct {
	collectorlogspb.UnimplementedLogsServiceServer
	mu   sync.Mutex
	reqs []*collectorlogspb.ExportLogsServiceRequest
}

func (r *logReceiver) Export(_ context.Context, req *collectorlogspb.ExportLogsServiceRequest) (*collectorlogspb.ExportLogsServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, proto.CloneOf(req))
	return &collectorlogspb.ExportLogsServiceResponse{}, nil
}

func (r *receiver) Export(_ context.Context, req *collectortracepb.ExportTraceServiceRequest) (*collectortracepb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, proto.CloneOf(req))
	return &collectortracepb.ExportTraceServiceResponse{}, nil
}

func startReceiver(t *testing.T) (*receiver, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r := &receiver{}
	gs := grpc.NewServer()
	collectortracepb.RegisterTraceServiceServer(gs, r)
	collectorlogspb.RegisterLogsServiceServer(gs, &r.logs)
	collectormetricspb.RegisterMetricsServiceServer(gs, &r.metrics)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return r, lis.Addr().String()
}

// rspan is a received span with its resource's attributes.
type rspan struct {
	*tracepb.Span
	res map[string]string
}

func (s rspan) service() string { return s.res["service.name"] }

func (s rspan) attr(k string) string { return attrOf(s.Attributes, k) }

func attrOf(kvs []*commonpb.KeyValue, k string) string {
	for _, kv := range kvs {
		if kv.Key == k {
			switch v := kv.Value.Value.(type) {
			case *commonpb.AnyValue_StringValue:
				return v.StringValue
			case *commonpb.AnyValue_IntValue:
				return strconv.FormatInt(v.IntValue, 10)
			}
		}
	}
	return ""
}

// rlog is a received log record with its resource's attributes and scope.
type rlog struct {
	*logspb.LogRecord
	res   map[string]string
	scope string
}

func (l rlog) attr(k string) string { return attrOf(l.Attributes, k) }
func (l rlog) body() string         { return l.Body.GetStringValue() }

func (s rspan) mid() int64 { return int64(s.StartTimeUnixNano/2 + s.EndTimeUnixNano/2) }

type spanKey struct {
	trace string
	span  string
}

func (r *receiver) spans() []rspan {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []rspan
	for _, req := range r.reqs {
		for _, rs := range req.ResourceSpans {
			res := map[string]string{}
			for _, kv := range rs.Resource.Attributes {
				res[kv.Key] = kv.Value.GetStringValue()
			}
			for _, ss := range rs.ScopeSpans {
				for _, sp := range ss.Spans {
					out = append(out, rspan{Span: sp, res: res})
				}
			}
		}
	}
	return out
}

func (r *receiver) logRecords() []rlog {
	r.logs.mu.Lock()
	defer r.logs.mu.Unlock()
	var out []rlog
	for _, req := range r.logs.reqs {
		for _, rl := range req.ResourceLogs {
			res := map[string]string{}
			for _, kv := range rl.Resource.Attributes {
				res[kv.Key] = kv.Value.GetStringValue()
			}
			for _, sl := range rl.ScopeLogs {
				for _, lr := range sl.LogRecords {
					out = append(out, rlog{LogRecord: lr, res: res, scope: sl.Scope.GetName()})
				}
			}
		}
	}
	return out
}

func runDemo(t *testing.T, cfg Config) []rspan {
	t.Helper()
	spans, _ := runDemoWithLogs(t, cfg)
	return spans
}

func runDemoWithLogs(t *testing.T, cfg Config) ([]rspan, []rlog) {
	t.Helper()
	r, addr := startReceiver(t)
	cfg.Endpoint = addr
	require.NoError(t, Run(t.Context(), cfg))
	return r.spans(), r.logRecords()
}

// TestRequestDurationExemplars: every service exports
// http.server.request.duration, and its exemplars name SERVER spans the
// demo sent, so a rule over the metric can pin those traces.
func TestRequestDurationExemplars(t *testing.T) {
	r, addr := startReceiver(t)
	cfg := DefaultConfig()
	cfg.Endpoint, cfg.Rate, cfg.Orders, cfg.Seed = addr, 5000, 100, 7
	require.NoError(t, Run(t.Context(), cfg))
	server := map[string]bool{}
	for _, s := range r.spans() {
		if s.Kind == tracepb.Span_SPAN_KIND_SERVER {
			server[string(s.TraceId)+string(s.SpanId)] = true
		}
	}
	services := map[string]bool{}
	exemplars := 0
	r.metrics.mu.Lock()
	defer r.metrics.mu.Unlock()
	for _, req := range r.metrics.reqs {
		for _, rm := range req.GetResourceMetrics() {
			for _, sm := range rm.GetScopeMetrics() {
				for _, m := range sm.GetMetrics() {
					if m.GetName() != "http.server.request.duration" {
						continue
					}
					for _, a := range rm.GetResource().GetAttributes() {
						if a.GetKey() == "service.name" {
							services[a.GetValue().GetStringValue()] = true
						}
					}
					for _, dp := range m.GetHistogram().GetDataPoints() {
						for _, ex := range dp.GetExemplars() {
							require.True(t, server[string(ex.GetTraceId())+string(ex.GetSpanId())], "an exemplar names a SERVER span the demo sent")
							exemplars++
						}
					}
				}
			}
		}
	}
	require.True(t, services["bank-api"], "the bank exports its request durations")
	require.GreaterOrEqual(t, len(services), 8)
	require.Positive(t, exemplars)
}

func TestRunProducesRealisticTraces(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Rate, cfg.Orders, cfg.Seed, cfg.Skew = 5000, 200, 42, 150*time.Millisecond
	began := time.Now()
	spans := runDemo(t, cfg)
	require.Greater(t, len(spans), 200*20, "an order is a few dozen spans")

	byID := map[spanKey]rspan{}
	services := map[string]map[string]bool{}
	for _, s := range spans {
		byID[spanKey{string(s.TraceId), string(s.SpanId)}] = s
		for _, k := range []string{"service.name", "service.version", "service.instance.id", "host.name", "deployment.environment"} {
			require.NotEmpty(t, s.res[k], "resource attribute %s", k)
		}
		if services[s.service()] == nil {
			services[s.service()] = map[string]bool{}
		}
		services[s.service()][s.res["service.instance.id"]] = true

		// Timestamps are near now, however long the simulated calls.
		require.Greater(t, s.StartTimeUnixNano, uint64(began.Add(-30*time.Second).UnixNano()), s.Name)
		require.Less(t, s.EndTimeUnixNano, uint64(time.Now().Add(cfg.Skew+time.Second).UnixNano()), s.Name)
		require.LessOrEqual(t, s.StartTimeUnixNano, s.EndTimeUnixNano, s.Name)
	}
	require.GreaterOrEqual(t, len(services), 6)
	require.Len(t, services, 10)
	require.Len(t, services[svcOrder], 3, "order runs on three hosts")
	require.Len(t, services[svcStorefront], 2)

	var pairs, bankPairs, errs, declined, outOfStock, consumers, linkedRoots int
	for _, s := range spans {
		var parent rspan
		hasParent := len(s.ParentSpanId) > 0
		if hasParent {
			var ok bool
			parent, ok = byID[spanKey{string(s.TraceId), string(s.ParentSpanId)}]
			require.True(t, ok, "parent of %s %q is in the same trace", s.service(), s.Name)
		}
		if s.Status.GetCode() == tracepb.Status_STATUS_CODE_ERROR {
			errs++
		}
		for _, ev := range s.Events {
			if ev.Name != "exception" {
				continue
			}
			typ := rspan{Span: &tracepb.Span{Attributes: ev.Attributes}}.attr("exception.type")
			require.NotEmpty(t, typ)
			switch {
			case strings.HasSuffix(typ, "paymentDeclinedError"):
				declined++
			case strings.HasSuffix(typ, "outOfStockError"):
				outOfStock++
			}
			require.Equal(t, tracepb.Status_STATUS_CODE_ERROR, s.Status.GetCode(), "a span with an exception failed")
		}

		switch s.Kind {
		case tracepb.Span_SPAN_KIND_SERVER:
			if !hasParent {
				require.Equal(t, svcStorefront, s.service(), "only the storefront receives calls from outside")
				continue
			}
			pairs++
			require.Equal(t, tracepb.Span_SPAN_KIND_CLIENT, parent.Kind, "SERVER %q has a CLIENT parent", s.Name)
			require.NotEqual(t, parent.service(), s.service())
			require.Equal(t, parent.attr("url.path"), s.attr("url.path"))
			require.Equal(t, parent.attr("http.request.method"), s.attr("http.request.method"))
			require.Equal(t, parent.attr("server.address"), s.attr("server.address"))
			require.NotEmpty(t, s.attr("http.response.status_code"))
			if s.service() == svcBank {
				// The bank's clock runs ahead: its span sits Skew after the
				// middle of the client span, give or take network asymmetry.
				// (A client that timed out ended early; skip it.)
				if parent.attr("http.response.status_code") != "" {
					bankPairs++
					require.InDelta(t, cfg.Skew.Nanoseconds(), s.mid()-parent.mid(), float64(20*time.Millisecond))
					require.Greater(t, s.EndTimeUnixNano, parent.EndTimeUnixNano, "skewed server ends after its client")
				}
			} else {
				require.GreaterOrEqual(t, s.StartTimeUnixNano, parent.StartTimeUnixNano, "%s inside its client", s.Name)
				require.LessOrEqual(t, s.EndTimeUnixNano, parent.EndTimeUnixNano, "%s inside its client", s.Name)
			}
		case tracepb.Span_SPAN_KIND_CONSUMER:
			consumers++
			require.Equal(t, "kafka", s.attr("messaging.system"))
			require.Equal(t, "orders.placed", s.attr("messaging.destination.name"))
			require.Len(t, s.Links, 1)
			prod, ok := byID[spanKey{string(s.Links[0].TraceId), string(s.Links[0].SpanId)}]
			require.True(t, ok, "consumer links to a received span")
			require.Equal(t, tracepb.Span_SPAN_KIND_PRODUCER, prod.Kind)
			require.Equal(t, prod.attr("messaging.message.id"), s.attr("messaging.message.id"))
			if hasParent {
				require.Equal(t, prod.SpanId, s.ParentSpanId, "kitchen continues the producer's trace")
			} else {
				linkedRoots++
				require.NotEqual(t, prod.TraceId, s.TraceId, "notification starts its own trace")
			}
		case tracepb.Span_SPAN_KIND_CLIENT:
			if s.attr("db.system") != "" {
				require.NotEmpty(t, s.attr("db.query.text"))
			}
		}
	}
	require.Greater(t, pairs, 200*5)
	require.Positive(t, bankPairs)
	require.Positive(t, errs)
	require.Positive(t, declined, "some payments are declined")
	require.Positive(t, outOfStock, "some bowls are sold out")
	require.Positive(t, consumers)
	require.Positive(t, linkedRoots)
}

func TestRunIsReproducible(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Rate, cfg.Orders, cfg.Seed = 5000, 50, 7
	// ids lists the spans, and the log lines with trace context, in a form
	// free of wall-clock time: a line is placed by its offset into its span.
	ids := func() []string {
		spans, logs := runDemoWithLogs(t, cfg)
		starts := map[spanKey]uint64{}
		var out []string
		for _, s := range spans {
			starts[spanKey{string(s.TraceId), string(s.SpanId)}] = s.StartTimeUnixNano
			out = append(out, string(s.TraceId)+string(s.SpanId)+s.Name+strconv.FormatUint(s.EndTimeUnixNano-s.StartTimeUnixNano, 10))
		}
		for _, l := range logs {
			if len(l.TraceId) == 0 {
				continue // background lines follow the wall clock
			}
			var attrs []string
			for _, kv := range l.Attributes {
				attrs = append(attrs, kv.Key+"="+attrOf(l.Attributes, kv.Key))
			}
			out = append(out, "log"+string(l.TraceId)+string(l.SpanId)+l.SeverityText+l.body()+strings.Join(attrs, ",")+
				strconv.FormatUint(l.TimeUnixNano-starts[spanKey{string(l.TraceId), string(l.SpanId)}], 10))
		}
		sort.Strings(out)
		return out
	}
	first, second := ids(), ids()
	require.NotEmpty(t, first)
	require.True(t, slices.ContainsFunc(first, func(s string) bool { return strings.HasPrefix(s, "log") }))
	require.Equal(t, first, second)

	cfg.Seed = 8
	require.NotEqual(t, first, ids())
}

func TestRunEmitsCorrelatedLogs(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Rate, cfg.Orders, cfg.Seed = 5000, 200, 42
	spans, logs := runDemoWithLogs(t, cfg)
	require.Greater(t, len(logs), 200*10, "an order logs a dozen lines or so")

	byID := map[spanKey]rspan{}
	rootStatus := map[string]string{} // trace → storefront's HTTP status
	orderIDs := map[string]string{}   // trace → order.id of the order service's span
	for _, s := range spans {
		byID[spanKey{string(s.TraceId), string(s.SpanId)}] = s
		if len(s.ParentSpanId) == 0 && s.service() == svcStorefront {
			rootStatus[string(s.TraceId)] = s.attr("http.response.status_code")
		}
		if s.service() == svcOrder && s.Kind == tracepb.Span_SPAN_KIND_SERVER {
			orderIDs[string(s.TraceId)] = s.attr("order.id")
		}
	}
	require.Len(t, rootStatus, 200)

	levels := map[string]int{}
	errorTraces := map[string]bool{}
	var accepted, traceless, fryer, slowOrRetry int
	for _, l := range logs {
		require.NotEmpty(t, l.body())
		require.NotEmpty(t, l.res["service.instance.id"], "logs carry their instance's resource")
		require.Equal(t, logScope, l.scope)
		require.NotZero(t, l.TimeUnixNano)
		levels[l.SeverityText]++
		if len(l.TraceId) == 0 {
			traceless++
			require.Empty(t, l.SpanId)
			if strings.HasPrefix(l.body(), "fryer temperature ") {
				fryer++
				require.Equal(t, svcKitchen, l.res["service.name"])
				require.NotEmpty(t, l.attr("temperature_c"))
			}
			continue
		}

		s, ok := byID[spanKey{string(l.TraceId), string(l.SpanId)}]
		require.True(t, ok, "line %q belongs to a received span", l.body())
		require.Equal(t, s.res["service.instance.id"], l.res["service.instance.id"], "%q is logged by its span's instance", l.body())
		require.GreaterOrEqual(t, l.TimeUnixNano, s.StartTimeUnixNano, "%q sorts inside %s %q", l.body(), s.service(), s.Name)
		require.LessOrEqual(t, l.TimeUnixNano, s.EndTimeUnixNano, "%q sorts inside %s %q", l.body(), s.service(), s.Name)

		switch {
		case l.SeverityNumber >= logspb.SeverityNumber_SEVERITY_NUMBER_ERROR:
			errorTraces[string(l.TraceId)] = true
			require.NotEmpty(t, l.attr("exception.message"))
			require.Contains(t, l.attr("exception.type"), ".")
			require.Equal(t, tracepb.Status_STATUS_CODE_ERROR, s.Status.GetCode(), "ERROR %q is logged in a failed span", l.body())
		case l.body() == "order accepted":
			accepted++
			require.Equal(t, orderIDs[string(l.TraceId)], l.attr("order.id"))
			require.NotEmpty(t, l.attr("shop"))
			require.NotEmpty(t, l.attr("amount"))
		case strings.HasPrefix(l.body(), "slow bank response") || strings.HasPrefix(l.body(), "bank unavailable, retrying"):
			slowOrRetry++
			require.Equal(t, "WARN", l.SeverityText)
			require.NotEmpty(t, l.attr("attempt"))
		}
	}

	var ok, failed int
	for tid, status := range rootStatus {
		if status == "201" {
			ok++
			continue
		}
		failed++
		require.True(t, errorTraces[tid], "failed order (HTTP %s) has an ERROR line", status)
	}
	require.Positive(t, failed)
	require.Equal(t, ok, accepted, "one \"order accepted\" per successful order")
	require.Positive(t, slowOrRetry, "slow bank answers are warned about")
	for _, lvl := range []string{"DEBUG", "INFO", "WARN", "ERROR"} {
		require.Positive(t, levels[lvl], lvl)
	}
	require.Positive(t, fryer, "background fryer readings without trace context")
	require.GreaterOrEqual(t, traceless, fryer)
}

func TestRunStopsOnContextAndFlushes(t *testing.T) {
	r, addr := startReceiver(t)
	cfg := DefaultConfig()
	cfg.Endpoint, cfg.Rate = addr, 200
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	began := time.Now()
	require.NoError(t, Run(ctx, cfg))
	require.Less(t, time.Since(began), 5*time.Second)
	require.NotEmpty(t, r.spans(), "spans buffered at shutdown were flushed")
}

func TestRunDuration(t *testing.T) {
	r, addr := startReceiver(t)
	cfg := DefaultConfig()
	cfg.Endpoint, cfg.Rate, cfg.Duration = addr, 100, 200*time.Millisecond
	began := time.Now()
	require.NoError(t, Run(t.Context(), cfg))
	require.Less(t, time.Since(began), 5*time.Second)
	require.NotEmpty(t, r.spans())
}

// TestTrafficShape plans many orders without emitting them and checks the
// advertised proportions and latency tail.
func TestTrafficShape(t *testing.T) {
	topo := planningTopology()
	sim := &shop{rng: rand.New(rand.NewPCG(1, 2)), topo: topo}
	const n = 4000
	status := map[int]int{}
	var walk func(s *step)
	walk = func(s *step) {
		if s.start > s.end {
			t.Fatalf("%s ends before it starts", s.name)
		}
		for _, c := range s.children {
			if c.kind != trace.SpanKindConsumer && c.start < s.start { // consumers run after their producer
				t.Fatalf("%s starts before its parent %s", c.name, s.name)
			}
			walk(c)
		}
	}
	for range n {
		root, _ := sim.placeOrder()
		walk(root)
		status[statusOf(root)]++
	}
	frac := func(code int) float64 { return float64(status[code]) / n }
	require.InDelta(t, 0.02, frac(402), 0.01, "declined payments")
	require.InDelta(t, 0.01, frac(409), 0.006, "sold out")
	require.Positive(t, status[504]+status[502], "bank timeouts and failures")
	require.Greater(t, frac(201), 0.94)

	// The bank's latency, sampled directly: more calls than orders above.
	bank := make([]time.Duration, 40_000)
	for i := range bank {
		srv := &step{inst: topo.services[svcBank][0]}
		sim.charge(srv, order{yen: 1000})
		bank[i] = srv.end - srv.start
	}
	slices.Sort(bank)
	p99 := bank[len(bank)*99/100]
	require.Greater(t, p99, time.Second, "bank p99 is seconds")
	require.Less(t, p99, 6*time.Second)
	require.Greater(t, bank[len(bank)-1], 10*time.Second, "rarely beyond ten seconds")
	require.Less(t, bank[len(bank)/2], 300*time.Millisecond, "bank median")
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"zero rate", func(c *Config) { c.Rate = 0 }, "rate must be above 0"},
		{"no endpoint", func(c *Config) { c.Endpoint = "" }, "endpoint must be set"},
		{"huge skew", func(c *Config) { c.Skew = -2 * time.Minute }, "skew must be within"},
		{"negative orders", func(c *Config) { c.Orders = -1 }, "orders must not be negative"},
		{"negative duration", func(c *Config) { c.Duration = -time.Second }, "duration must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.mutate(&cfg)
			err := cfg.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

// BenchmarkPlaceOrder measures planning alone: the demo's own cost per
// order before the SDK records it.
func BenchmarkPlaceOrder(b *testing.B) {
	topo := planningTopology()
	sim := &shop{rng: rand.New(rand.NewPCG(1, 2)), topo: topo}
	b.ReportAllocs()
	var spans int
	var count func(*step)
	count = func(s *step) {
		spans++
		for _, c := range s.children {
			count(c)
		}
	}
	for b.Loop() {
		root, _ := sim.placeOrder()
		count(root)
	}
	b.ReportMetric(float64(spans)/b.Elapsed().Seconds(), "spans/s")
}

// planningTopology is the shop without TracerProviders: enough to plan
// orders, which never touches the SDK.
func planningTopology() *topology {
	topo := &topology{services: map[string][]*instance{}}
	for _, spec := range shopServices {
		for _, h := range spec.hosts {
			topo.services[spec.name] = append(topo.services[spec.name],
				&instance{service: spec.name, host: &host{name: h, ip: shopHosts[h]}, address: spec.address, port: spec.port})
		}
	}
	return topo
}
