package loadgen

import (
	"errors"
	"flag"
	"fmt"
	"time"
)

// Config is the load generator's settings. The zero value is not useful; start
// from DefaultConfig.
type Config struct {
	// Endpoint is the OTLP gRPC host:port to send to. Default 127.0.0.1:4317.
	Endpoint string
	// Concurrency is the number of workers, each with one Export call in
	// flight at a time. Default 8.
	Concurrency int
	// Connections is the number of gRPC connections the workers share round
	// robin; 0 means one per worker, as independent SDK exporters would open.
	// Default 0.
	Connections int

	// SpansPerRequest is the number of spans in each ExportTraceServiceRequest.
	// Default 512 (the OpenTelemetry SDK batch processor's default batch size).
	SpansPerRequest int
	// SpansPerTrace is the number of spans of each trace in a request; the last
	// trace of a request is shorter when SpansPerRequest is not a multiple.
	// Default 5.
	SpansPerTrace int
	// Attrs is the number of attributes per span, a mix of strings of
	// realistic sizes and ints. Default 10.
	Attrs int
	// Resources is the number of ResourceSpans (services) per request; every
	// trace spans them in turn. Default 3.
	Resources int
	// Pool is the number of distinct pre-encoded requests replayed in turn.
	// Default 64.
	Pool int

	// TotalSpans stops the run after this many spans were sent, rounded up to
	// whole requests; 0 means no limit. Default 0.
	TotalSpans int64
	// Duration stops the run after this long; 0 means no limit. With neither
	// TotalSpans nor Duration the run lasts until its context ends. Default 0.
	Duration time.Duration
	// Rate caps the send rate in spans per second; 0 sends as fast as the
	// server acknowledges. Default 0.
	Rate float64
	// Timeout bounds each Export call. Default 10s.
	Timeout time.Duration
	// ErrorBackoff is how long a worker pauses after a failed Export call, so
	// a shedding server is not hammered in a tight loop. Default 10ms.
	ErrorBackoff time.Duration

	// TraceIDSeed makes the trace IDs (and the pool's content) reproducible:
	// the n-th trace of a run gets TraceID(seed, n). 0 picks a random seed,
	// reported in the result. Default 0.
	TraceIDSeed uint64
	// FreshTimestamps shifts every span's start and end time per send so that
	// replayed spans look recent however long the run. Default true.
	FreshTimestamps bool
	// Progress is the interval between progress log lines; 0 disables them.
	// Default 5s.
	Progress time.Duration
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Endpoint:        "127.0.0.1:4317",
		Concurrency:     8,
		SpansPerRequest: 512,
		SpansPerTrace:   5,
		Attrs:           10,
		Resources:       3,
		Pool:            64,
		Timeout:         10 * time.Second,
		ErrorBackoff:    10 * time.Millisecond,
		FreshTimestamps: true,
		Progress:        5 * time.Second,
	}
}

// RegisterFlags binds the settings to fs, using the values in c as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Endpoint, "endpoint", c.Endpoint, "OTLP gRPC `host:port` to send traces to")
	fs.IntVar(&c.Concurrency, "concurrency", c.Concurrency, "number of workers, each with one Export call in flight")
	fs.IntVar(&c.Connections, "connections", c.Connections, "gRPC connections shared by the workers (0 = one per worker)")
	fs.IntVar(&c.SpansPerRequest, "spans-per-request", c.SpansPerRequest, "spans in each ExportTraceServiceRequest")
	fs.IntVar(&c.SpansPerTrace, "spans-per-trace", c.SpansPerTrace, "spans per trace within a request")
	fs.IntVar(&c.Attrs, "attrs", c.Attrs, "attributes per span (strings of realistic sizes and ints)")
	fs.IntVar(&c.Resources, "resources", c.Resources, "resources (services) per request")
	fs.IntVar(&c.Pool, "pool", c.Pool, "distinct pre-encoded requests replayed in turn")
	fs.Int64Var(&c.TotalSpans, "total-spans", c.TotalSpans, "stop after sending this many spans, rounded up to whole requests (0 = no limit)")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "stop after this long (0 = no limit; with no --total-spans either, run until interrupted)")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "cap on spans per second (0 = as fast as the server acknowledges)")
	fs.DurationVar(&c.Timeout, "timeout", c.Timeout, "deadline of each Export call")
	fs.DurationVar(&c.ErrorBackoff, "error-backoff", c.ErrorBackoff, "pause of a worker after a failed Export call")
	fs.Uint64Var(&c.TraceIDSeed, "trace-id-seed", c.TraceIDSeed, "seed of the trace IDs and request content (0 = random, reported); reuse it to reproduce the same trace IDs")
	fs.BoolVar(&c.FreshTimestamps, "fresh-timestamps", c.FreshTimestamps, "shift span timestamps to the send time on every send")
	fs.DurationVar(&c.Progress, "progress", c.Progress, "interval of progress log lines on stderr (0 = none)")
}

// Validate rejects settings that cannot work together.
func (c *Config) Validate() error {
	var errs []error
	if c.Endpoint == "" {
		errs = append(errs, errors.New("the endpoint must be set"))
	}
	positive := []struct {
		name string
		v    int
	}{
		{"concurrency", c.Concurrency},
		{"spans-per-request", c.SpansPerRequest},
		{"spans-per-trace", c.SpansPerTrace},
		{"resources", c.Resources},
		{"pool", c.Pool},
	}
	for _, p := range positive {
		if p.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", p.name, p.v))
		}
	}
	if c.Attrs < 0 {
		errs = append(errs, fmt.Errorf("attrs must not be negative, got %d", c.Attrs))
	}
	if c.Connections < 0 {
		errs = append(errs, fmt.Errorf("connections must not be negative, got %d", c.Connections))
	}
	if c.SpansPerTrace > c.SpansPerRequest && c.SpansPerRequest > 0 {
		errs = append(errs, fmt.Errorf("spans-per-trace (%d) must not exceed spans-per-request (%d), since a request carries whole traces", c.SpansPerTrace, c.SpansPerRequest))
	}
	if c.TotalSpans < 0 || c.Duration < 0 || c.Rate < 0 || c.Timeout <= 0 || c.ErrorBackoff < 0 || c.Progress < 0 {
		errs = append(errs, errors.New("total-spans, duration, rate, error-backoff and progress must not be negative, and timeout must be positive"))
	}
	if c.TotalSpans > 0 && c.Duration > 0 {
		errs = append(errs, errors.New("set either total-spans or duration, not both: the run would stop at whichever came first and the result would not say which"))
	}
	return errors.Join(errs...)
}

// tracesPerRequest is the number of traces each request carries.
func (c *Config) tracesPerRequest() int {
	return (c.SpansPerRequest + c.SpansPerTrace - 1) / c.SpansPerTrace
}
