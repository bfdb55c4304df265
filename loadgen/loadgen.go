// Package loadgen is Threadline's benchmark driver: it sends OTLP traces over
// gRPC to a collector as fast as the collector acknowledges them (or at a set
// rate) and reports what the collector accepted.
//
// A general-purpose generator such as telemetrygen builds and marshals every
// span as it sends, and saturates a CPU core long before a fast collector
// does, so the benchmark would measure the client. This one pre-encodes a
// pool of ExportTraceServiceRequests of a stated shape once, then replays the
// raw bytes through a pass-through gRPC codec. Per send it only copies the
// template and overwrites the trace IDs (and optionally the timestamps) at
// byte offsets recorded while encoding, so every trace ID in a run is unique
// and reproducible from a seed, at the cost of a memcpy. The report includes
// the client's own CPU time, so a benchmark on a shared machine can subtract
// it.
package loadgen

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// exportMethod is the full gRPC method name of OTLP trace export.
const exportMethod = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

// Report is the result of a run, printed as JSON by cmd/loadgen.
type Report struct {
	Endpoint        string `json:"endpoint"`
	Concurrency     int    `json:"concurrency"`
	Connections     int    `json:"connections"`
	SpansPerRequest int    `json:"spans_per_request"`
	SpansPerTrace   int    `json:"spans_per_trace"`
	Attrs           int    `json:"attrs"`
	Resources       int    `json:"resources"`
	// RequestBytes is the mean encoded size of the pooled requests.
	RequestBytes int `json:"request_bytes"`

	// TraceIDSeed reproduces the run's trace IDs: trace n is TraceID(seed, n).
	TraceIDSeed uint64 `json:"trace_id_seed"`
	// Traces is the number of distinct trace IDs sent.
	Traces int64 `json:"traces"`
	// FirstTraceID and LastTraceID are the IDs of trace 0 and of the highest
	// numbered trace sent, in hex.
	FirstTraceID string `json:"first_trace_id"`
	LastTraceID  string `json:"last_trace_id"`

	// Requests counts Export calls made; RequestsFailed those that returned
	// an error.
	Requests       int64 `json:"requests"`
	RequestsFailed int64 `json:"requests_failed"`
	// SpansSent counts spans in every Export call made, SpansAcked those the
	// server accepted: in successful calls, minus partial-success rejections.
	SpansSent     int64 `json:"spans_sent"`
	SpansAcked    int64 `json:"spans_acked"`
	SpansRejected int64 `json:"spans_rejected"`
	// Errors counts failed calls by gRPC status code name.
	Errors map[string]int64 `json:"errors"`
	// BytesAcked is the encoded size of the successful Export calls.
	BytesAcked int64 `json:"bytes_acked"`

	DurationSeconds float64 `json:"duration_seconds"`
	// SpansPerSecond and MBPerSecond are acknowledged spans and bytes per
	// second of the run.
	SpansPerSecond float64 `json:"spans_per_second"`
	MBPerSecond    float64 `json:"mb_per_second"`
	// ClientCPUSeconds is user+system CPU the load generator used while
	// sending (pool encoding excluded); ClientCPUCores is that per second.
	ClientCPUSeconds float64 `json:"client_cpu_seconds"`
	ClientCPUCores   float64 `json:"client_cpu_cores"`
	// EncodeSeconds is the time spent pre-encoding the pool.
	EncodeSeconds float64 `json:"encode_seconds"`
	// LatencyMS are the latencies of successful Export calls in
	// milliseconds; failures are often fast and would flatter them.
	LatencyMS Latency `json:"latency_ms"`
}

// Latency summarises Export call latencies.
type Latency struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Run sends load as cfg says until the span total or duration is reached or
// ctx ends, and reports the outcome. Failed Export calls are counted, not
// returned: only a configuration or setup failure is an error.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("validate config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	seed := cfg.TraceIDSeed
	for seed == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		seed = binary.LittleEndian.Uint64(b[:])
	}

	encodeStart := time.Now()
	pool, err := buildPool(&cfg, seed, encodeStart)
	if err != nil {
		return nil, fmt.Errorf("build request pool: %w", err)
	}
	encodeTime := time.Since(encodeStart)
	var poolBytes int
	for _, t := range pool {
		poolBytes += len(t.buf)
	}
	logger.Info("request pool encoded", "requests", len(pool), "mean_bytes", poolBytes/len(pool), "took", encodeTime)

	nconn := cmp.Or(cfg.Connections, cfg.Concurrency)
	conns := make([]*grpc.ClientConn, 0, nconn)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range nconn {
		c, err := grpc.NewClient(cfg.Endpoint,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})),
		)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", cfg.Endpoint, err)
		}
		conns = append(conns, c)
	}
	// Connect before the clock starts, so connection setup is not measured.
	// A server that is not up yet shows as Unavailable errors in the report.
	waitReady(ctx, conns, cfg.Timeout)

	r := &runner{cfg: &cfg, pool: pool, seed: seed, tpr: uint64(cfg.tracesPerRequest())}
	r.maxSlots = math.MaxUint64
	switch {
	case cfg.TotalSpans > 0:
		r.maxSlots = uint64((cfg.TotalSpans + int64(cfg.SpansPerRequest) - 1) / int64(cfg.SpansPerRequest))
	case cfg.Duration > 0 && cfg.Rate > 0:
		// A paced run sends a known number of requests; bounding it by count
		// rather than by the deadline leaves no gaps in the trace numbering.
		r.maxSlots = uint64(max(1, math.Round(cfg.Duration.Seconds()*cfg.Rate/float64(cfg.SpansPerRequest))))
	}
	if cfg.Rate > 0 {
		r.interval = time.Duration(float64(time.Second) * float64(cfg.SpansPerRequest) / cfg.Rate)
	}

	cpuStart := processCPU()
	r.start = time.Now()
	if cfg.Duration > 0 && cfg.Rate == 0 {
		r.deadline = r.start.Add(cfg.Duration)
	}
	workers := make([]*worker, cfg.Concurrency)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{r: r, conn: conns[i%len(conns)], errs: map[codes.Code]int64{}}
		workers[i] = w
		wg.Go(func() { w.run(ctx) })
	}
	stopProgress := r.logProgress(logger)
	wg.Wait()
	elapsed := time.Since(r.start)
	cpu := processCPU() - cpuStart
	stopProgress()

	rep := &Report{
		Endpoint:         cfg.Endpoint,
		Concurrency:      cfg.Concurrency,
		Connections:      nconn,
		SpansPerRequest:  cfg.SpansPerRequest,
		SpansPerTrace:    cfg.SpansPerTrace,
		Attrs:            cfg.Attrs,
		Resources:        cfg.Resources,
		RequestBytes:     poolBytes / len(pool),
		TraceIDSeed:      seed,
		FirstTraceID:     TraceID(seed, 0).String(),
		Errors:           map[string]int64{},
		DurationSeconds:  elapsed.Seconds(),
		ClientCPUSeconds: cpu.Seconds(),
		EncodeSeconds:    encodeTime.Seconds(),
	}
	var hist histogram
	for _, w := range workers {
		rep.Requests += w.requests
		rep.RequestsFailed += w.failed
		rep.SpansSent += w.spansSent
		rep.SpansAcked += w.spansAcked
		rep.SpansRejected += w.spansRejected
		rep.BytesAcked += w.bytesAcked
		rep.Traces += w.requests * int64(r.tpr)
		for c, n := range w.errs {
			rep.Errors[c.String()] += n
		}
		hist.merge(&w.hist)
	}
	if rep.Requests > 0 {
		rep.LastTraceID = TraceID(seed, (r.maxSent.Load())*r.tpr-1).String()
	}
	if s := elapsed.Seconds(); s > 0 {
		rep.SpansPerSecond = float64(rep.SpansAcked) / s
		rep.MBPerSecond = float64(rep.BytesAcked) / s / 1e6
		rep.ClientCPUCores = cpu.Seconds() / s
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	rep.LatencyMS = Latency{P50: ms(hist.quantile(0.5)), P90: ms(hist.quantile(0.9)), P99: ms(hist.quantile(0.99)), Max: ms(hist.max)}
	return rep, nil
}

// waitReady connects every connection and waits, up to timeout in all, for
// them to become ready.
func waitReady(ctx context.Context, conns []*grpc.ClientConn, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, c := range conns {
		c.Connect()
		for s := c.GetState(); s != connectivity.Ready; s = c.GetState() {
			if !c.WaitForStateChange(ctx, s) {
				return
			}
		}
	}
}

// runner is the state the workers share.
type runner struct {
	cfg      *Config
	pool     []*template
	seed     uint64
	tpr      uint64 // traces per request
	maxSlots uint64 // requests to send at most
	interval time.Duration
	start    time.Time
	deadline time.Time // zero when the run is not bounded by time

	// next is the next request slot to claim; slot n carries traces
	// n*tpr … (n+1)*tpr-1 and is paced to start + n*interval.
	next atomic.Uint64
	// maxSent is one past the highest slot sent.
	maxSent atomic.Uint64
	// Totals for progress lines; the report sums the workers' own counters.
	sent, acked, failed atomic.Int64
}

// claim returns the next slot to send, or false when the run is over.
func (r *runner) claim(ctx context.Context) (uint64, bool) {
	if ctx.Err() != nil || (!r.deadline.IsZero() && !time.Now().Before(r.deadline)) {
		return 0, false
	}
	n := r.next.Add(1) - 1
	if n >= r.maxSlots {
		return 0, false
	}
	if r.interval > 0 {
		wait := time.Until(r.start.Add(time.Duration(n) * r.interval))
		if wait > 0 {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				return 0, false
			}
		}
	}
	for {
		m := r.maxSent.Load()
		if n+1 <= m || r.maxSent.CompareAndSwap(m, n+1) {
			break
		}
	}
	return n, true
}

// logProgress logs throughput every cfg.Progress until the returned stop is
// called.
func (r *runner) logProgress(logger *slog.Logger) (stop func()) {
	if r.cfg.Progress <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(r.cfg.Progress)
		defer t.Stop()
		var lastAcked int64
		last := r.start
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				acked := r.acked.Load()
				logger.Info("progress",
					"spans_sent", r.sent.Load(), "spans_acked", acked, "requests_failed", r.failed.Load(),
					"spans_per_second", math.Round(float64(acked-lastAcked)/now.Sub(last).Seconds()))
				lastAcked, last = acked, now
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// worker sends one request at a time on its connection.
type worker struct {
	r    *runner
	conn *grpc.ClientConn
	req  rawMessage
	resp rawMessage
	hist histogram

	requests, failed                     int64
	spansSent, spansAcked, spansRejected int64
	bytesAcked                           int64
	errs                                 map[codes.Code]int64
}

func (w *worker) run(ctx context.Context) {
	r := w.r
	for {
		n, ok := r.claim(ctx)
		if !ok {
			return
		}
		t := r.pool[n%uint64(len(r.pool))]
		var shift uint64
		if r.cfg.FreshTimestamps {
			shift = uint64(time.Now().UnixNano()) - t.encodedAt
		}
		w.req.b = t.render(w.req.b, r.seed, n*r.tpr, shift)

		callCtx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
		began := time.Now()
		err := w.conn.Invoke(callCtx, exportMethod, &w.req, &w.resp)
		took := time.Since(began)
		cancel()

		w.requests++
		w.spansSent += int64(t.spans)
		r.sent.Add(int64(t.spans))
		if err == nil {
			rejected, perr := rejectedSpans(w.resp.b)
			if perr != nil {
				err = status.Errorf(codes.Internal, "decode export response: %v", perr)
			} else {
				rejected = min(rejected, int64(t.spans))
				w.spansRejected += rejected
				w.spansAcked += int64(t.spans) - rejected
				w.bytesAcked += int64(len(t.buf))
				w.hist.record(took)
				r.acked.Add(int64(t.spans) - rejected)
				continue
			}
		}
		w.failed++
		r.failed.Add(1)
		w.errs[status.Code(err)]++
		// A failed call may leave gRPC still holding the request bytes (a
		// deadline can fire before every frame is written), so the next
		// render must not overwrite them.
		w.req.b = nil
		if r.cfg.ErrorBackoff > 0 {
			sleep(ctx, r.cfg.ErrorBackoff)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
