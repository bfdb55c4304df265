package demo

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/bridges/otelslog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/metric"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
)

// Service names. bank-api is the card network's gateway: external to the
// shop, but instrumented, so its spans arrive from a host we do not own.
const (
	svcStorefront   = "storefront"
	svcOrder        = "order"
	svcMember       = "member"
	svcInventory    = "inventory"
	svcPricing      = "pricing"
	svcPayment      = "payment"
	svcBank         = "bank-api"
	svcLoyalty      = "loyalty"
	svcKitchen      = "kitchen"
	svcNotification = "notification"
)

// host is a machine the services run on. skew is how far its clock is off.
type host struct {
	name string
	ip   string
	skew time.Duration
}

// instance is one running copy of a service: its own TracerProvider,
// LoggerProvider and resource, as a separate process would have.
type instance struct {
	service  string
	host     *host
	address  string // server.address other services call it at
	port     int
	provider *sdktrace.TracerProvider
	loggers  *sdklog.LoggerProvider
	meters   *sdkmetric.MeterProvider
	// serverDuration is http.server.request.duration, recorded for every
	// SERVER span while the span is current, so the SDK attaches the span
	// as an exemplar (its default trace-based filter).
	serverDuration metric.Float64Histogram
	// log is the service's slog handler, bridged to loggers: the demo
	// calls Handle itself with records dated in simulated time, which
	// slog.Logger's methods (always time.Now) cannot do.
	log slog.Handler
}

// clock converts a true time into what this instance's host clock reads.
func (i *instance) clock(t time.Time) time.Time { return t.Add(i.host.skew) }

// topology is the shop: every service's instances.
type topology struct {
	services map[string][]*instance
	all      []*instance
}

// pick returns a random instance of svc, as a load balancer would.
func (t *topology) pick(rng *rand.Rand, svc string) *instance {
	is := t.services[svc]
	return is[rng.IntN(len(is))]
}

// serviceSpec describes one service: where it runs and what it reports.
type serviceSpec struct {
	name    string
	version string
	hosts   []string
	address string
	port    int
}

// shopServices is the order path of a noodle-shop chain. Several services
// share application hosts, as they would on VMs or Kubernetes nodes.
var shopServices = []serviceSpec{
	{svcStorefront, "3.8.2", []string{"edge-1", "edge-2"}, "www.ramen-ya.example", 443},
	{svcOrder, "2.14.0", []string{"app-1", "app-2", "app-3"}, "order.shop.internal", 8080},
	{svcMember, "1.9.4", []string{"app-1", "app-2"}, "member.shop.internal", 8080},
	{svcInventory, "4.1.0", []string{"app-2"}, "inventory.shop.internal", 8080},
	{svcPricing, "1.22.7", []string{"app-3"}, "pricing.shop.internal", 8080},
	{svcPayment, "5.0.3", []string{"pay-1", "pay-2"}, "payment.shop.internal", 8443},
	{svcBank, "2024.11", []string{"bankgw-1"}, "api.kuroneko-bank.example", 443},
	{svcLoyalty, "0.9.1", []string{"app-1"}, "loyalty.shop.internal", 8080},
	{svcKitchen, "3.3.0", []string{"kitchen-1", "kitchen-2"}, "kitchen.shop.internal", 8080},
	{svcNotification, "1.4.2", []string{"app-3"}, "notification.shop.internal", 8080},
}

var shopHosts = map[string]string{
	"edge-1": "10.0.1.11", "edge-2": "10.0.1.12",
	"app-1": "10.0.2.21", "app-2": "10.0.2.22", "app-3": "10.0.2.23",
	"pay-1": "10.0.3.31", "pay-2": "10.0.3.32",
	"bankgw-1":  "203.0.113.40",
	"kitchen-1": "10.0.4.41", "kitchen-2": "10.0.4.42",
}

// newTopology starts a TracerProvider and a LoggerProvider per service
// instance, all exporting over conn. The bank's host clock is off by cfg.Skew.
func newTopology(ctx context.Context, cfg *Config, conn *grpc.ClientConn, ids sdktrace.IDGenerator) (*topology, error) {
	hosts := map[string]*host{}
	for name, ip := range shopHosts {
		hosts[name] = &host{name: name, ip: ip}
	}
	hosts["bankgw-1"].skew = cfg.Skew

	t := &topology{services: map[string][]*instance{}}
	for _, spec := range shopServices {
		for _, hn := range spec.hosts {
			inst := &instance{service: spec.name, host: hosts[hn], address: spec.address, port: spec.port}
			if err := startProviders(ctx, cfg, conn, ids, spec, inst); err != nil {
				return nil, errors.Join(fmt.Errorf("start %s on %s: %w", spec.name, hn, err), t.shutdown(ctx))
			}
			t.services[spec.name] = append(t.services[spec.name], inst)
			t.all = append(t.all, inst)
		}
	}
	return t, nil
}

// batchTimeout is shorter than the SDK's 5 s default so that traces and
// their logs show up in the UI about a second after the order.
const batchTimeout = time.Second

// logScope is the instrumentation scope of the services' log lines: the
// application's own logger, bridged from log/slog.
const logScope = scopeApp

// startProviders gives inst its TracerProvider and LoggerProvider, with one
// resource, both exporting over the shared conn.
func startProviders(ctx context.Context, cfg *Config, conn *grpc.ClientConn, ids sdktrace.IDGenerator, spec serviceSpec, inst *instance) error {
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(
			attribute.String("service.name", spec.name),
			attribute.String("service.namespace", "noodle-shop"),
			attribute.String("service.version", spec.version),
			attribute.String("service.instance.id", instanceID(spec.name, inst.host.name)),
			attribute.String("host.name", inst.host.name),
			attribute.String("host.ip", inst.host.ip),
			// deployment.environment is the name most tools still key on;
			// semantic conventions 1.27 renamed it deployment.environment.name.
			attribute.String("deployment.environment", cfg.Environment),
			attribute.String("deployment.environment.name", cfg.Environment),
		),
	)
	if err != nil {
		return fmt.Errorf("build resource: %w", err)
	}
	spans, err := otlptracegrpc.New(ctx, otlptracegrpc.WithGRPCConn(conn))
	if err != nil {
		return fmt.Errorf("create OTLP trace exporter: %w", err)
	}
	logs, err := otlploggrpc.New(ctx, otlploggrpc.WithGRPCConn(conn))
	if err != nil {
		return errors.Join(fmt.Errorf("create OTLP log exporter: %w", err), spans.Shutdown(ctx))
	}
	inst.provider = sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithIDGenerator(ids),
		sdktrace.WithSampler(sdktrace.AlwaysSample()),
		// Dropping (the default) rather than blocking when the queue is
		// full keeps the demo responsive to SIGINT while the collector is
		// down; the larger queue rides out a collector restart.
		sdktrace.WithBatcher(spans, sdktrace.WithBatchTimeout(batchTimeout), sdktrace.WithMaxQueueSize(16384)),
	)
	// The log queue keeps the SDK's default size (2048; it too drops rather
	// than blocks): the SDK preallocates it as a ring of 600-byte records,
	// and a larger one made starting twenty instances take half a second.
	// The busiest instance logs about ten lines a second at the default
	// rate, so 2048 still rides out minutes without a collector.
	inst.loggers = sdklog.NewLoggerProvider(
		sdklog.WithResource(res),
		sdklog.WithProcessor(sdklog.NewBatchProcessor(logs, sdklog.WithExportInterval(batchTimeout))),
	)
	inst.log = otelslog.NewHandler(logScope, otelslog.WithLoggerProvider(inst.loggers), otelslog.WithVersion(spec.version))
	metrics, err := otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithGRPCConn(conn))
	if err != nil {
		return errors.Join(fmt.Errorf("create OTLP metric exporter: %w", err), inst.provider.Shutdown(ctx), inst.loggers.Shutdown(ctx))
	}
	inst.meters = sdkmetric.NewMeterProvider(
		sdkmetric.WithResource(res),
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(metrics, sdkmetric.WithInterval(metricInterval))),
	)
	inst.serverDuration, err = inst.meters.Meter(metricScope).Float64Histogram("http.server.request.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of HTTP server requests."),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10))
	if err != nil {
		return errors.Join(fmt.Errorf("create request-duration histogram: %w", err), inst.provider.Shutdown(ctx), inst.loggers.Shutdown(ctx), inst.meters.Shutdown(ctx))
	}
	return nil
}

// metricInterval is how often each instance exports its metrics: the
// SDK's default is a minute; ten seconds makes exemplar links show soon.
const metricInterval = 10 * time.Second

// metricScope is the instrumentation scope of the request-duration metric.
const metricScope = "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

// instanceID is a stable, pod-like ID for a service on a host.
func instanceID(service, hostName string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(service + "@" + hostName))
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	v := h.Sum64()
	id := make([]byte, 0, 16)
	id = fmt.Appendf(id, "%s-%08x-", service, uint32(v>>32))
	for range 5 {
		id = append(id, alphabet[v%uint64(len(alphabet))])
		v /= uint64(len(alphabet))
	}
	return string(id)
}

// shutdown flushes and stops every provider. They flush in parallel so
// that one slow export does not use up the others' share of ctx.
func (t *topology) shutdown(ctx context.Context) error {
	errs := make([]error, 3*len(t.all))
	var wg sync.WaitGroup
	for i, inst := range t.all {
		wg.Go(func() {
			if err := inst.provider.Shutdown(ctx); err != nil {
				errs[3*i] = fmt.Errorf("flush traces of %s on %s: %w", inst.service, inst.host.name, err)
			}
		})
		wg.Go(func() {
			if err := inst.loggers.Shutdown(ctx); err != nil {
				errs[3*i+1] = fmt.Errorf("flush logs of %s on %s: %w", inst.service, inst.host.name, err)
			}
		})
		wg.Go(func() {
			if inst.meters == nil {
				return // its start failed before the meter provider
			}
			if err := inst.meters.Shutdown(ctx); err != nil {
				errs[3*i+2] = fmt.Errorf("flush metrics of %s on %s: %w", inst.service, inst.host.name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// seededIDs generates trace and span IDs from a seeded PRNG, so a run with a
// given seed reproduces its IDs. The demo emits from one goroutine, so the
// sequence of calls, and thus of IDs, is deterministic; the mutex only makes
// the generator safe to share between providers.
type seededIDs struct {
	mu  sync.Mutex
	rng *rand.Rand
}

var _ sdktrace.IDGenerator = (*seededIDs)(nil)

func newSeededIDs(seed uint64) *seededIDs {
	return &seededIDs{rng: rand.New(rand.NewPCG(seed, seed^0x5eed1d5))}
}

// NewIDs returns a new trace ID and root span ID.
func (g *seededIDs) NewIDs(context.Context) (trace.TraceID, trace.SpanID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var tid trace.TraceID
	for !tid.IsValid() {
		putUint64s(tid[:], g.rng.Uint64(), g.rng.Uint64())
	}
	return tid, g.spanID()
}

// NewSpanID returns a new span ID.
func (g *seededIDs) NewSpanID(context.Context, trace.TraceID) trace.SpanID {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.spanID()
}

func (g *seededIDs) spanID() trace.SpanID {
	var sid trace.SpanID
	for !sid.IsValid() {
		putUint64s(sid[:], g.rng.Uint64())
	}
	return sid
}

func putUint64s(dst []byte, vs ...uint64) {
	for i, v := range vs {
		for b := range 8 {
			dst[i*8+b] = byte(v >> (56 - 8*b))
		}
	}
}
