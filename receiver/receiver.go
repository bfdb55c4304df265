// Package receiver is the collector's OTLP front door: the OTLP/gRPC (:4317)
// and OTLP/HTTP (:4318) trace and log receivers, implemented as the OTLP
// specification (https://opentelemetry.io/docs/specs/otlp/) describes them.
//
// Each Export request is validated and split by trace ID (span.SplitTraces,
// span.SplitLogs) and the batches are handed to a TracePublisher (or
// LogsPublisher) that returns only once Kafka acknowledged every record, so a
// client is told "success" only for spans and log records that are durable. Failures map to the spec's retryable answers: back-pressure is
// RESOURCE_EXHAUSTED with RetryInfo / HTTP 429, any other publish failure is
// UNAVAILABLE with RetryInfo / HTTP 503, both with a retry delay. Spans the
// splitter rejects (zero IDs and the like) are reported as partial success.
//
// The gRPC path never unmarshals requests into tracepb structs: a server codec
// hands the Export handler the raw request bytes, which is what keeps the
// collector's CPU cost per span low. The same raw-export plumbing is shared by
// every signal, so LogsService and MetricsService plug in beside TraceService.
//
// Memory is bounded by a cap on concurrent in-flight requests (checked before
// a request body is read; beyond it clients get an immediate retryable
// RESOURCE_EXHAUSTED / 429) times the maximum request size.
package receiver

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // OTLP exporters may gzip requests; registering the compressor accepts them.
	"google.golang.org/grpc/experimental"

	"github.com/threadline/threadline/span"
)

// Config configures the OTLP receivers.
type Config struct {
	// GRPCAddr is the OTLP/gRPC listen address; "" disables the listener
	// (GRPCServer can still be served elsewhere). Default "127.0.0.1:4317".
	GRPCAddr string
	// HTTPAddr is the OTLP/HTTP listen address; "" disables the listener
	// (HTTPHandler can still be mounted elsewhere). Default "127.0.0.1:4318".
	HTTPAddr string
	// MaxRequestBytes caps one request's size, compressed and decompressed
	// alike. Default 16 MiB.
	MaxRequestBytes int
	// MaxInflightRequests caps requests being processed at once across both
	// transports; beyond it requests are refused as retryable overload before
	// their body is read. Default 256.
	MaxInflightRequests int
	// RetryAfter is the delay suggested to clients on retryable failures
	// (gRPC RetryInfo, HTTP Retry-After, rounded up to whole seconds).
	// Default 1s.
	RetryAfter time.Duration
	// ShutdownTimeout bounds how long Run waits for in-flight requests after
	// its context is done before it closes the remaining connections.
	// Default 10s.
	ShutdownTimeout time.Duration
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		GRPCAddr:            "127.0.0.1:4317",
		HTTPAddr:            "127.0.0.1:4318",
		MaxRequestBytes:     16 << 20,
		MaxInflightRequests: 256,
		RetryAfter:          time.Second,
		ShutdownTimeout:     10 * time.Second,
	}
}

// RegisterFlags binds the config to fs, using the values already in c as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.GRPCAddr, "otlp-grpc-addr", c.GRPCAddr, `OTLP/gRPC listen address (host:port; "" disables it)`)
	fs.StringVar(&c.HTTPAddr, "otlp-http-addr", c.HTTPAddr, `OTLP/HTTP listen address (host:port; "" disables it)`)
	fs.IntVar(&c.MaxRequestBytes, "otlp-max-request-bytes", c.MaxRequestBytes, "largest accepted OTLP request in bytes, compressed or decompressed; larger ones get RESOURCE_EXHAUSTED / 413")
	fs.IntVar(&c.MaxInflightRequests, "otlp-max-inflight-requests", c.MaxInflightRequests, "OTLP requests processed at once; further requests get a retryable RESOURCE_EXHAUSTED / 429 so memory stays bounded")
	fs.DurationVar(&c.RetryAfter, "otlp-retry-after", c.RetryAfter, "retry delay suggested to OTLP clients on overload or Kafka failure (gRPC RetryInfo, HTTP Retry-After)")
	fs.DurationVar(&c.ShutdownTimeout, "otlp-shutdown-timeout", c.ShutdownTimeout, "how long shutdown waits for in-flight OTLP requests before closing connections")
}

// Validate rejects settings the receivers cannot run with.
func (c Config) Validate() error {
	if c.MaxRequestBytes <= 0 {
		return fmt.Errorf("otlp-max-request-bytes must be positive, got %d", c.MaxRequestBytes)
	}
	if c.MaxInflightRequests <= 0 {
		return fmt.Errorf("otlp-max-inflight-requests must be positive, got %d", c.MaxInflightRequests)
	}
	if c.RetryAfter <= 0 {
		return fmt.Errorf("otlp-retry-after must be positive, got %s", c.RetryAfter)
	}
	if c.ShutdownTimeout < 0 {
		return fmt.Errorf("otlp-shutdown-timeout must not be negative, got %s", c.ShutdownTimeout)
	}
	// Port 0 asks the kernel for any free port, so only fixed ports clash.
	if c.GRPCAddr != "" && c.GRPCAddr == c.HTTPAddr && !strings.HasSuffix(c.GRPCAddr, ":0") {
		return fmt.Errorf("otlp-grpc-addr and otlp-http-addr are both %q; gRPC and HTTP need separate ports", c.GRPCAddr)
	}
	return nil
}

// Receiver runs the OTLP/gRPC and OTLP/HTTP trace receivers.
type Receiver struct {
	cfg     Config
	pub     TracePublisher
	logger  *slog.Logger
	metrics *metrics
	limit   *inflightLimiter
	// splitters pools span.Splitters: each keeps its scratch space between
	// requests, which is most of what makes the split allocation-light.
	splitters sync.Pool
	// results pools *span.SplitResult, whose data buffers are reused when
	// pub implements dataReleaser (reuseData).
	results   sync.Pool
	reuseData bool
	// logsPub is set by WithLogs; nil leaves LogsService and /v1/logs
	// unregistered (gRPC answers Unimplemented, HTTP 404).
	logsPub      LogsPublisher
	logSplitters sync.Pool // *span.LogSplitter
	// metricsExp is set by WithMetrics (metricsexport.go); nil leaves
	// MetricsService and /v1/metrics unregistered.
	metricsExp *metricsExport

	grpcServer  *grpc.Server
	httpHandler http.Handler
	httpServer  *http.Server

	grpcLis, httpLis net.Listener
}

// Option enables an optional part of a Receiver, such as WithLogs.
type Option func(*Receiver) error

// New builds the receivers and binds their listeners, so address conflicts
// fail at startup and Addrs is valid before Run. Run (or Close, when Run is
// never called) releases the listeners. A nil logger discards logs; a nil reg
// leaves the metrics unregistered. Traces are always received; other signals
// are enabled by opts.
func New(cfg Config, pub TracePublisher, logger *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Receiver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("otlp receiver config: %w", err)
	}
	if pub == nil {
		return nil, errors.New("otlp receiver: nil TracePublisher")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := newMetrics()
	rel, ok := pub.(dataReleaser)
	r := &Receiver{
		reuseData: ok && rel.ReleasesData(),
		cfg:       cfg,
		pub:       pub,
		logger:    logger,
		metrics:   m,
		limit:     newInflightLimiter(cfg.MaxInflightRequests, m.inflight),
	}
	for _, opt := range opts {
		if err := opt(r); err != nil {
			return nil, fmt.Errorf("otlp receiver: %w", err)
		}
	}

	pool := &bufferPool{}
	r.grpcServer = grpc.NewServer(
		grpc.ForceServerCodecV2(rawCodec{pool: pool}),
		experimental.BufferPool(pool),
		// gRPC enforces this after decompression too and answers
		// RESOURCE_EXHAUSTED itself, as the spec expects.
		grpc.MaxRecvMsgSize(cfg.MaxRequestBytes),
	)
	registerRawExport(r.grpcServer, traceServiceName, &rawExportService{r: r, signal: signalTraces, export: r.exportTraces})

	mux := http.NewServeMux()
	mux.Handle("/v1/traces", r.httpExportHandler(signalTraces, span.TracesJSONToProto, r.exportTraces))
	if r.logsPub != nil {
		registerRawExport(r.grpcServer, logsServiceName, &rawExportService{r: r, signal: signalLogs, export: r.exportLogs})
		mux.Handle("/v1/logs", r.httpExportHandler(signalLogs, span.LogsJSONToProto, r.exportLogs))
	}
	r.mountMetrics(mux)
	r.httpHandler = mux
	r.httpServer = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}

	// Listen before registering metrics, so a port conflict (which a caller
	// may retry) leaves nothing registered.
	var err error
	if cfg.GRPCAddr != "" {
		if r.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
			return nil, fmt.Errorf("listen otlp grpc on %s: %w", cfg.GRPCAddr, err)
		}
	}
	if cfg.HTTPAddr != "" {
		if r.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			r.Close()
			return nil, fmt.Errorf("listen otlp http on %s: %w", cfg.HTTPAddr, err)
		}
	}
	if err := m.register(reg); err != nil {
		r.Close()
		return nil, fmt.Errorf("otlp receiver metrics: %w", err)
	}
	if err := r.registerMetricsExport(reg); err != nil {
		r.Close()
		return nil, fmt.Errorf("otlp receiver metrics: %w", err)
	}
	return r, nil
}

// GRPCServer is the receiver's gRPC server with TraceService (and, with
// WithLogs, LogsService) registered. Other
// services may be registered on it before Run (its codec hands proto messages
// to the standard proto codec), or it may be served on a listener of the
// caller's choosing when GRPCAddr is "" (Run still stops it on shutdown).
func (r *Receiver) GRPCServer() *grpc.Server { return r.grpcServer }

// HTTPHandler serves POST /v1/traces (and, with WithLogs, POST /v1/logs), for
// mounting on another server when HTTPAddr is "".
func (r *Receiver) HTTPHandler() http.Handler { return r.httpHandler }

// Addrs returns the bound gRPC and HTTP addresses; a disabled listener's is nil.
func (r *Receiver) Addrs() (grpcAddr, httpAddr net.Addr) {
	if r.grpcLis != nil {
		grpcAddr = r.grpcLis.Addr()
	}
	if r.httpLis != nil {
		httpAddr = r.httpLis.Addr()
	}
	return grpcAddr, httpAddr
}

// Close releases the listeners of a Receiver whose Run was never called.
func (r *Receiver) Close() {
	for _, l := range []net.Listener{r.grpcLis, r.httpLis} {
		if l != nil {
			_ = l.Close()
		}
	}
}

// Run serves both transports until ctx is done or a server fails, then shuts
// down gracefully: it stops accepting, lets in-flight requests finish within
// ShutdownTimeout, then closes what is left. It returns nil after a shutdown
// caused by ctx.
func (r *Receiver) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		serveErr error
	)
	fail := func(err error) {
		mu.Lock()
		if serveErr == nil {
			serveErr = err
		}
		mu.Unlock()
		cancel()
	}
	if r.grpcLis != nil {
		wg.Go(func() {
			r.logger.Info("otlp grpc receiver listening", "addr", r.grpcLis.Addr().String())
			// ErrServerStopped: ctx was done before Serve started.
			if err := r.grpcServer.Serve(r.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				fail(fmt.Errorf("serve otlp grpc: %w", err))
			}
		})
	}
	if r.httpLis != nil {
		wg.Go(func() {
			r.logger.Info("otlp http receiver listening", "addr", r.httpLis.Addr().String())
			if err := r.httpServer.Serve(r.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				fail(fmt.Errorf("serve otlp http: %w", err))
			}
		})
	}

	<-ctx.Done()
	r.shutdown()
	wg.Wait()
	return serveErr
}

// shutdown stops both servers, waiting up to ShutdownTimeout for in-flight
// requests (which are waiting on Kafka acks) before cutting them off.
func (r *Receiver) shutdown() {
	deadline, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	defer cancel()

	var wg sync.WaitGroup
	wg.Go(func() {
		done := make(chan struct{})
		go func() {
			r.grpcServer.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-deadline.Done():
			r.logger.Warn("otlp grpc receiver: in-flight requests outlived the shutdown timeout; closing them")
			r.grpcServer.Stop()
			<-done
		}
	})
	wg.Go(func() {
		if err := r.httpServer.Shutdown(deadline); err != nil {
			r.logger.Warn("otlp http receiver: in-flight requests outlived the shutdown timeout; closing them", "err", err)
			_ = r.httpServer.Close()
		}
	})
	wg.Wait()
	r.logger.Info("otlp receivers stopped")
}
