// Package loglevel maps log level names to OTLP severity numbers and back.
// It is apart from logstore so that callers that only parse levels (the
// query service) do not link Bleve, whose package init starts a
// process-wide worker pool.
package loglevel

import (
	"fmt"
	"strconv"
	"strings"

	otlplogs "go.opentelemetry.io/proto/otlp/logs/v1"
)

// OTLP severity numbers of the first value of each level's range
// (TRACE 1-4, DEBUG 5-8, INFO 9-12, WARN 13-16, ERROR 17-20, FATAL 21-24).
const (
	Trace int32 = 1
	Debug int32 = 5
	Info  int32 = 9
	Warn  int32 = 13
	Error int32 = 17
	Fatal int32 = 21
)

var levelNames = [...]string{"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"}

// Parse maps a level name (any case; WARNING, ERR, CRITICAL, PANIC and
// the numbered forms WARN2 accepted) or a severity number 1-24 to the OTLP
// severity number at the bottom of that level's range.
func Parse(s string) (int32, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	if n, err := strconv.Atoi(t); err == nil {
		if n < 1 || n > 24 {
			return 0, fmt.Errorf("severity number %d out of range 1-24", n)
		}
		return int32(n), nil
	}
	// OTLP's short names carry a 2-4 suffix within the level (WARN2).
	if len(t) > 1 && t[len(t)-1] >= '2' && t[len(t)-1] <= '4' {
		t = t[:len(t)-1]
	}
	switch t {
	case "TRACE":
		return Trace, nil
	case "DEBUG", "DBG":
		return Debug, nil
	case "INFO", "INFORMATION", "NOTICE":
		return Info, nil
	case "WARN", "WARNING":
		return Warn, nil
	case "ERROR", "ERR":
		return Error, nil
	case "FATAL", "CRITICAL", "CRIT", "PANIC", "EMERG", "ALERT":
		return Fatal, nil
	}
	return 0, fmt.Errorf("unknown log level %q: want trace, debug, info, warn, error or fatal", trunc(s))
}

// Name is the upper-case level of a severity number; "UNSPECIFIED" for
// 0 and out-of-range numbers.
func Name(sev int32) string {
	if sev < 1 || sev > 24 {
		return "UNSPECIFIED"
	}
	return levelNames[(sev-1)/4]
}

// Label is the lower-case level as Loki and Grafana label it.
func Label(sev int32) string {
	if sev < 1 || sev > 24 {
		return "unknown"
	}
	return strings.ToLower(levelNames[(sev-1)/4])
}

// Of is the severity number a record is filed under: its own, else
// parsed from its severity text, else INFO. Many emitters (stdout scrapers,
// old SDKs) set only the text or nothing; treating an unlabelled line as
// INFO keeps it out of WARN+ filters without dropping it where INFO is kept.
func Of(rec *otlplogs.LogRecord) int32 {
	if n := int32(rec.GetSeverityNumber()); n >= 1 && n <= 24 {
		return n
	}
	if t := rec.GetSeverityText(); t != "" {
		if n, err := Parse(t); err == nil {
			return n
		}
	}
	return Info
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
