// Package demo generates realistic trace traffic for `make run`: the order
// path of a noodle-shop chain, ten services on ten hosts, recorded through
// the real OpenTelemetry Go SDK and exported over OTLP gRPC, so that
// everything Threadline shows in its UI has something to show.
//
// Every service instance has its own TracerProvider and resource
// (service.name, service.version, service.instance.id, host.name,
// deployment.environment), as separate processes would; context passes
// between them in-process. Each order is planned first and then emitted
// with explicit timestamps (trace.WithTimestamp), dated so that it ends now:
// the demo never sleeps for a span's duration, so a ten-second bank call
// costs nothing. The traffic has what an on-call engineer meets: CLIENT and
// SERVER span pairs with HTTP semantic-convention attributes, database
// spans, a Kafka producer with consumers that continue the trace or link to
// it, overlapping calls, span events, a slow external bank with a heavy
// tail and timeouts, declined payments and sold-out bowls recorded as
// errors with exception events, and a host whose clock runs ahead (Skew) so
// the clock-skew repair has work to do.
//
// The services also log, through log/slog bridged to an OpenTelemetry
// LoggerProvider per instance (otelslog), exported over the same OTLP
// connection: DEBUG detail, INFO milestones, WARN for slow or retried bank
// calls and ERROR lines carrying the exception of every failure. Each line
// is logged while its span is current, so it carries the trace and span
// IDs, and is dated in the span's simulated time, so it sorts inside its
// span. A few lines without trace context (the kitchen's fryer readings
// every few seconds, an occasional warning) exercise Threadline's policy
// for traceless logs.
//
// Every instance also exports http.server.request.duration, recorded for
// each SERVER span while it is current, so the histogram carries exemplars
// naming real traces; the example alert rules watch the bank's, so
// `make run` shows exemplar traces kept for that reason.
package demo

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// shutdownTimeout bounds the final flush, which runs after ctx has ended.
const shutdownTimeout = 10 * time.Second

// Run sends orders at cfg.Rate until cfg.Duration or cfg.Orders is reached
// or ctx ends, then flushes every exporter. Export failures while running
// are the SDK's to retry and report (through the otel error handler); Run
// returns an error only for bad settings or a failed final flush.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("validate demo config: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	seed := cfg.Seed
	for seed == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		seed = binary.LittleEndian.Uint64(b[:])
	}

	conn, err := grpc.NewClient(cfg.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial OTLP endpoint %s: %w", cfg.Endpoint, err)
	}
	defer func() { _ = conn.Close() }()

	topo, err := newTopology(ctx, &cfg, conn, newSeededIDs(seed))
	if err != nil {
		return fmt.Errorf("start demo services: %w", err)
	}
	logger.Info("demo traffic started", "endpoint", cfg.Endpoint, "rate", cfg.Rate, "seed", seed,
		"services", len(topo.services), "instances", len(topo.all), "skewed_host", "bankgw-1", "skew", cfg.Skew)

	st := stats{byStatus: map[int]int{}}
	runErr := generate(ctx, &cfg, topo, seed, &st)

	flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	flushErr := topo.shutdown(flushCtx)
	logger.Info("demo traffic stopped", "orders", st.orders, "spans", st.spans, "traces", st.traces,
		"logs", st.logs, "traceless_logs", st.traceless, "by_status", fmt.Sprint(st.byStatus))
	if flushErr != nil {
		return errors.Join(runErr, fmt.Errorf("flush demo traces and logs: %w", flushErr))
	}
	return runErr
}

// stats counts what the demo emitted, for its final log line and tests.
type stats struct {
	orders, spans, traces int
	logs, traceless       int
	byStatus              map[int]int
}

// generate plans and emits orders with Poisson arrivals at cfg.Rate, and
// the traceless background lines between them.
func generate(ctx context.Context, cfg *Config, topo *topology, seed uint64, st *stats) error {
	sim := &shop{rng: mrand.New(mrand.NewPCG(seed, seed^0xd0b0)), topo: topo}
	// The background lines have their own random source: they depend on
	// wall-clock time, and must not shift the orders a seed reproduces.
	bg := &background{rng: mrand.New(mrand.NewPCG(seed, seed^0xf17e)), topo: topo}
	start := time.Now()
	next := start
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for cfg.Orders == 0 || st.orders < cfg.Orders {
		if cfg.Duration > 0 && next.Sub(start) >= cfg.Duration {
			return nil
		}
		for {
			now := time.Now()
			if !bg.next.After(now) {
				bg.emit(ctx, now, st)
			}
			if !next.After(now) {
				break
			}
			wake := next
			if bg.next.Before(wake) {
				wake = bg.next
			}
			timer.Reset(wake.Sub(now))
			select {
			case <-ctx.Done():
				return nil
			case <-timer.C:
			}
		}
		if ctx.Err() != nil {
			return nil
		}

		root, _ := sim.placeOrder()
		// Date the order so that its last span ends now: a trace the
		// collector receives is one that has just finished.
		base := time.Now().Add(-root.extent())
		em := emitter{base: base, stats: st}
		em.emit(context.WithoutCancel(ctx), root)
		st.orders++
		st.traces++
		st.byStatus[statusOf(root)]++

		gap := -math.Log(1-sim.rng.Float64()) / cfg.Rate
		next = next.Add(time.Duration(gap * float64(time.Second)))
	}
	return nil
}

func statusOf(root *step) int {
	for _, a := range root.attrs {
		if a.Key == "http.response.status_code" {
			return int(a.Value.AsInt64())
		}
	}
	return 0
}

// emitter turns a planned order into SDK spans.
type emitter struct {
	base  time.Time
	stats *stats
}

// at converts a plan offset into the timestamp inst's host clock shows.
func (e *emitter) at(inst *instance, d time.Duration) time.Time {
	return inst.clock(e.base.Add(d))
}

func (e *emitter) emit(ctx context.Context, s *step) {
	opts := []trace.SpanStartOption{
		trace.WithSpanKind(s.kind),
		trace.WithTimestamp(e.at(s.inst, s.start)),
		trace.WithAttributes(s.attrs...),
	}
	if s.link != nil {
		opts = append(opts, trace.WithLinks(trace.Link{
			SpanContext: s.link.sc,
			Attributes:  []attribute.KeyValue{attribute.String("messaging.operation.type", "send")},
		}))
	}
	if s.newRoot {
		opts = append(opts, trace.WithNewRoot())
		e.stats.traces++
	}
	tracer := s.inst.provider.Tracer(s.scope)
	ctx, span := tracer.Start(ctx, s.name, opts...)
	s.sc = span.SpanContext()
	e.stats.spans++
	if s.kind == trace.SpanKindServer {
		s.inst.serverDuration.Record(ctx, (s.end - s.start).Seconds(), metric.WithAttributes(httpMetricAttrs(s.attrs)...))
	}

	for _, ev := range s.events {
		span.AddEvent(ev.name, trace.WithTimestamp(e.at(s.inst, ev.at)), trace.WithAttributes(ev.attrs...))
	}
	for _, l := range s.logs {
		// ctx holds span, so the bridge sets the record's trace and span
		// IDs; the record is dated on the span's host clock, like the span.
		if s.inst.log.Enabled(ctx, l.level) {
			r := slog.NewRecord(e.at(s.inst, l.at), l.level, l.msg, 0)
			r.AddAttrs(l.attrs...)
			_ = s.inst.log.Handle(ctx, r) // the bridge never fails; export errors go to otel's handler
			e.stats.logs++
		}
	}
	if s.err != nil {
		span.RecordError(s.err, trace.WithTimestamp(e.at(s.inst, s.errAt)))
	}
	if s.failed {
		span.SetStatus(codes.Error, s.statusMsg)
	}
	for _, c := range s.children {
		e.emit(ctx, c)
	}
	span.End(trace.WithTimestamp(e.at(s.inst, s.end)))
}

// httpMetricAttrs picks the request-duration metric's attributes out of a
// SERVER span's: low-cardinality ones only, as otelhttp does.
func httpMetricAttrs(attrs []attribute.KeyValue) []attribute.KeyValue {
	var out []attribute.KeyValue
	for _, a := range attrs {
		switch a.Key {
		case "http.request.method", "http.route", "http.response.status_code":
			out = append(out, a)
		}
	}
	return out
}

// background emits the log lines that belong to no request: every few
// seconds each kitchen instance reads its fryer's temperature (a WARN when
// it runs hot), and now and then some service warns about its own state.
type background struct {
	rng  *mrand.Rand
	topo *topology
	next time.Time // when to emit next; zero emits at once
}

// Fryer temperatures in °C: normal oil is about 175–180, above fryerLimit
// the kitchen is warned.
const (
	fryerNormal = 178
	fryerLimit  = 185
)

// backgroundWarnings are the occasional warnings; each names its service.
var backgroundWarnings = []struct {
	service, msg string
	attrs        []slog.Attr
}{
	{svcKitchen, "broth level low", []slog.Attr{slog.String("broth", "tonkotsu"), slog.Int("level_pct", 12)}},
	{svcOrder, "database connection pool nearly exhausted", []slog.Attr{slog.Int("db.client.connection.count", 46), slog.Int("db.client.connection.max", 50)}},
	{svcPayment, "TLS certificate of api.kuroneko-bank.example expires soon", []slog.Attr{slog.Int("days_left", 12)}},
	{svcNotification, "mail relay rate limit at 80%", []slog.Attr{slog.String("server.address", "api.mailrelay.example")}},
}

func (b *background) emit(ctx context.Context, now time.Time, st *stats) {
	// No span in ctx: these lines have no trace context.
	ctx = context.WithoutCancel(ctx)
	for i, inst := range b.topo.services[svcKitchen] {
		temp, level := fryerNormal-3+b.rng.IntN(7), slog.LevelInfo
		if b.chance(0.05) {
			temp, level = fryerLimit+1+b.rng.IntN(10), slog.LevelWarn
		}
		msg := fmt.Sprintf("fryer temperature %d°C", temp)
		if level == slog.LevelWarn {
			msg += fmt.Sprintf(", above limit %d°C", fryerLimit)
		}
		b.log(ctx, st, inst, now, level, msg, slog.Int("fryer", i+1), slog.Int("temperature_c", temp))
	}
	if b.chance(0.15) {
		w := backgroundWarnings[b.rng.IntN(len(backgroundWarnings))]
		inst := b.topo.pick(b.rng, w.service)
		b.log(ctx, st, inst, now, slog.LevelWarn, w.msg, w.attrs...)
	}
	b.next = now.Add(2*time.Second + time.Duration(b.rng.Int64N(int64(2*time.Second))))
}

func (b *background) chance(p float64) bool { return b.rng.Float64() < p }

// log emits a line at now as inst's host clock reads it.
func (b *background) log(ctx context.Context, st *stats, inst *instance, now time.Time, level slog.Level, msg string, attrs ...slog.Attr) {
	if !inst.log.Enabled(ctx, level) {
		return
	}
	r := slog.NewRecord(inst.clock(now), level, msg, 0)
	r.AddAttrs(attrs...)
	_ = inst.log.Handle(ctx, r)
	st.logs++
	st.traceless++
}
