package sampling

import (
	"flag"
	"fmt"
	"math"
	"time"
)

// Config sets the tail-sampling policy and bounds its memory.
type Config struct {
	// TopN is how many of the slowest traces per (root service, root operation)
	// per window are kept as latency_topn. 0 disables latency sampling. Default 10.
	TopN int
	// Window is the event-time window the top-N is computed over; windows are
	// aligned to the Unix epoch: [k·Window, (k+1)·Window), and a trace is in
	// the window its root ended in (TraceInfo.End). Default 1m.
	Window time.Duration
	// Baseline is the fraction of traces kept regardless of content, chosen by
	// trace ID, in [0,1]. Default 0.
	Baseline float64
	// MaxKeys bounds the live top-N heaps, one per (root service, root
	// operation, window), so at most MaxKeys×TopN traces are held. Size it to
	// at least twice the keys seen per window: the previous window's heaps stay
	// live until the watermark closes it. Default 5000.
	MaxKeys int
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{
		TopN:     10,
		Window:   time.Minute,
		Baseline: 0,
		MaxKeys:  5000,
	}
}

// RegisterFlags registers the sampling flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.IntVar(&c.TopN, "sampling-topn", c.TopN, "keep the N slowest traces per (root service, root operation) per window; 0 disables")
	fs.DurationVar(&c.Window, "sampling-window", c.Window, "event-time window the top-N latency sampling ranks traces in, by when their root ended")
	fs.Float64Var(&c.Baseline, "sampling-baseline", c.Baseline, "fraction of traces kept by a deterministic hash of the trace ID, in [0,1]")
	fs.IntVar(&c.MaxKeys, "sampling-max-keys", c.MaxKeys, "live top-N heaps (root service × root operation × window); past it the least recently active is shed")
}

// Validate rejects settings that cannot work together.
func (c *Config) Validate() error {
	if c.TopN < 0 {
		return fmt.Errorf("sampling top-N must not be negative, got %d", c.TopN)
	}
	if c.Window <= 0 {
		return fmt.Errorf("sampling window must be positive, got %s", c.Window)
	}
	if math.IsNaN(c.Baseline) || c.Baseline < 0 || c.Baseline > 1 {
		return fmt.Errorf("sampling baseline must be within [0,1], got %v", c.Baseline)
	}
	if c.MaxKeys < 1 {
		return fmt.Errorf("sampling max keys must be at least 1, got %d", c.MaxKeys)
	}
	return nil
}
