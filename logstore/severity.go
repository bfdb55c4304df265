package logstore

import (
	otlplogs "go.opentelemetry.io/proto/otlp/logs/v1"

	"github.com/threadline/threadline/logstore/loglevel"
)

// OTLP severity numbers at the bottom of each level's range.
const (
	SeverityTrace = loglevel.Trace
	SeverityDebug = loglevel.Debug
	SeverityInfo  = loglevel.Info
	SeverityWarn  = loglevel.Warn
	SeverityError = loglevel.Error
	SeverityFatal = loglevel.Fatal
)

// ParseLevel maps a level name (trace, debug, info, warn, error, fatal and
// common aliases) or a severity number 1-24 to an OTLP severity number.
func ParseLevel(s string) (int32, error) { return loglevel.Parse(s) }

// LevelName is the upper-case level of a severity number.
func LevelName(sev int32) string { return loglevel.Name(sev) }

// Severity is the severity number a record is filed under: its own, else
// parsed from its text, else INFO.
func Severity(rec *otlplogs.LogRecord) int32 { return loglevel.Of(rec) }

func levelLabel(sev int32) string { return loglevel.Label(sev) }
