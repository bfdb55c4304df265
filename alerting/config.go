package alerting

import (
	"errors"
	"flag"
	"fmt"
	"time"
)

// Config holds the ruler's process settings. Rule and hygiene settings
// (interval, flap window, group wait) live in the rules file, per group.
type Config struct {
	// RulesFile is the alert rules YAML; empty disables the ruler. Enable it
	// on one query replica only: every replica would otherwise record (and
	// notify) the same events. Default "".
	RulesFile string
	// DataDir holds the alert event store. Required by the ruler and by the
	// Alertmanager webhook receiver; empty disables both. Default "".
	DataDir string
	// Retention is how long alert events are kept. Default 30 days.
	Retention time.Duration
}

// DefaultConfig returns the defaults documented on each field.
func DefaultConfig() Config {
	return Config{Retention: DefaultStoreOptions().Retention}
}

// RegisterFlags binds the settings to fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.RulesFile, "alert-rules", c.RulesFile,
		"Alert rules YAML file; enables the ruler on this query replica (run it on one replica only). Needs --alert-data-dir.")
	fs.StringVar(&c.DataDir, "alert-data-dir", c.DataDir,
		"Directory of the alert event store; enables the Alertmanager webhook (POST /api/v1/alertmanager) and the alert API.")
	fs.DurationVar(&c.Retention, "alert-retention", c.Retention,
		"How long alert events are kept.")
}

// Validate rejects settings the ruler cannot work with.
func (c Config) Validate() error {
	var errs []error
	if c.RulesFile != "" && c.DataDir == "" {
		errs = append(errs, errors.New("--alert-rules needs --alert-data-dir: the ruler records its events there"))
	}
	if c.Retention <= 0 {
		errs = append(errs, fmt.Errorf("alert-retention must be positive, got %s", c.Retention))
	}
	return errors.Join(errs...)
}
