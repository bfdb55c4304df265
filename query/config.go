package query

import (
	"errors"
	"flag"
	"fmt"
	"time"
)

// Config holds the query API's settings. Build information is not a flag: the
// binary passes what it was linked with.
type Config struct {
	// ReaderTimeout bounds every call to one indexer. Default 10s: long enough
	// for a cold Badger scan, short enough that Grafana (30s data-proxy
	// timeout) still gets the partial answer of the indexers that did reply.
	ReaderTimeout time.Duration
	// DefaultSearchLimit is the number of traces a Tempo search returns when
	// the request has no limit. Default 20, as Tempo.
	DefaultSearchLimit int
	// JaegerDefaultLimit is the number of traces a Jaeger search returns when
	// the request has no limit (Grafana sends none unless the user sets one).
	// Every result is a full trace fetch, so this is smaller than Jaeger's
	// 100. Default 20.
	JaegerDefaultLimit int
	// MaxSearchLimit caps any requested limit. Default 1000.
	MaxSearchLimit int
	// DependenciesMaxTraces bounds the traces fetched to compute the service
	// dependency graph. Default 1000.
	DependenciesMaxTraces int
	// TraceFetchConcurrency bounds the traces fetched at once by a Jaeger
	// search or a dependency computation. Default 8.
	TraceFetchConcurrency int
	// MaxTagValues caps the values returned by the tag-values routes. Default 1000.
	MaxTagValues int

	// Build information reported by /api/status/buildinfo.
	Version   string
	Revision  string
	Branch    string
	BuildUser string
	BuildDate string
}

// DefaultConfig returns the defaults documented on each field.
func DefaultConfig() Config {
	return Config{
		ReaderTimeout:         10 * time.Second,
		DefaultSearchLimit:    20,
		JaegerDefaultLimit:    20,
		MaxSearchLimit:        1000,
		DependenciesMaxTraces: 1000,
		TraceFetchConcurrency: 8,
		MaxTagValues:          1000,
		Version:               "dev",
	}
}

// RegisterFlags binds the settings to fs under the "query." prefix.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.ReaderTimeout, "query.reader-timeout", c.ReaderTimeout,
		"Timeout of each call to one indexer; indexers that miss it are left out of the answer.")
	fs.IntVar(&c.DefaultSearchLimit, "query.default-search-limit", c.DefaultSearchLimit,
		"Traces returned by a Tempo search without a limit.")
	fs.IntVar(&c.JaegerDefaultLimit, "query.jaeger-default-limit", c.JaegerDefaultLimit,
		"Traces returned by a Jaeger search without a limit (each is a full trace fetch).")
	fs.IntVar(&c.MaxSearchLimit, "query.max-search-limit", c.MaxSearchLimit,
		"Upper bound on any requested search limit.")
	fs.IntVar(&c.DependenciesMaxTraces, "query.dependencies-max-traces", c.DependenciesMaxTraces,
		"Traces fetched to compute the service dependency graph.")
	fs.IntVar(&c.TraceFetchConcurrency, "query.trace-fetch-concurrency", c.TraceFetchConcurrency,
		"Traces fetched at once by a Jaeger search or the dependency graph.")
	fs.IntVar(&c.MaxTagValues, "query.max-tag-values", c.MaxTagValues,
		"Upper bound on the values returned for one tag.")
}

// Validate rejects settings the API cannot work with.
func (c Config) Validate() error {
	var errs []error
	if c.ReaderTimeout <= 0 {
		errs = append(errs, fmt.Errorf("query.reader-timeout must be positive, got %s", c.ReaderTimeout))
	}
	if c.MaxSearchLimit <= 0 {
		errs = append(errs, fmt.Errorf("query.max-search-limit must be positive, got %d", c.MaxSearchLimit))
	}
	if c.DefaultSearchLimit <= 0 || c.DefaultSearchLimit > c.MaxSearchLimit {
		errs = append(errs, fmt.Errorf("query.default-search-limit must be between 1 and query.max-search-limit (%d), got %d", c.MaxSearchLimit, c.DefaultSearchLimit))
	}
	if c.JaegerDefaultLimit <= 0 || c.JaegerDefaultLimit > c.MaxSearchLimit {
		errs = append(errs, fmt.Errorf("query.jaeger-default-limit must be between 1 and query.max-search-limit (%d), got %d", c.MaxSearchLimit, c.JaegerDefaultLimit))
	}
	if c.DependenciesMaxTraces <= 0 {
		errs = append(errs, fmt.Errorf("query.dependencies-max-traces must be positive, got %d", c.DependenciesMaxTraces))
	}
	if c.TraceFetchConcurrency <= 0 {
		errs = append(errs, fmt.Errorf("query.trace-fetch-concurrency must be positive, got %d", c.TraceFetchConcurrency))
	}
	if c.MaxTagValues <= 0 {
		errs = append(errs, fmt.Errorf("query.max-tag-values must be positive, got %d", c.MaxTagValues))
	}
	return errors.Join(errs...)
}

// withDefaults fills zero fields so a partly filled Config still works.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.ReaderTimeout <= 0 {
		c.ReaderTimeout = d.ReaderTimeout
	}
	if c.MaxSearchLimit <= 0 {
		c.MaxSearchLimit = d.MaxSearchLimit
	}
	if c.DefaultSearchLimit <= 0 {
		c.DefaultSearchLimit = min(d.DefaultSearchLimit, c.MaxSearchLimit)
	}
	if c.JaegerDefaultLimit <= 0 {
		c.JaegerDefaultLimit = min(d.JaegerDefaultLimit, c.MaxSearchLimit)
	}
	if c.DependenciesMaxTraces <= 0 {
		c.DependenciesMaxTraces = d.DependenciesMaxTraces
	}
	if c.TraceFetchConcurrency <= 0 {
		c.TraceFetchConcurrency = d.TraceFetchConcurrency
	}
	if c.MaxTagValues <= 0 {
		c.MaxTagValues = d.MaxTagValues
	}
	if c.Version == "" {
		c.Version = d.Version
	}
	return c
}
