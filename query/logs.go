package query

// Log routes of the native API (the UI), over every indexer's log store
// (proto/logs/v1):
//   - GET /api/v1/traces/{id}/logs?spanID=&minLevel=   the trace → logs jump
//   - GET /api/v1/logs/search?q=&start=&end=&limit=    Bleve query string
//   - GET /api/v1/logs/levels                          overrides in force
//   - POST /api/v1/logs/levels {service,level,duration} time-boxed override
//
// Times (start, end) accept unix seconds, milliseconds, microseconds or
// nanoseconds (told apart by magnitude), a decimal number of seconds, or
// RFC 3339. Every indexer is asked and the answers are merged by time;
// a line stored on two indexers (after a rebalance) appears once.

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	otlplogs "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/logstore/loglevel"
	logspb "github.com/threadline/threadline/proto/logs/v1"
	"github.com/threadline/threadline/span"
)

// Option configures optional parts of the API.
type Option func(*API)

// WithLogReaders serves the log routes (native and Loki) over these
// clients, one per indexer. Without it those routes answer 503.
func WithLogReaders(readers []logspb.LogReaderClient) Option {
	return func(a *API) { a.logReaders = readers }
}

const (
	// maxLogLines caps the lines of one log answer.
	maxLogLines = 5000
	// defaultLogLines is the lines a search returns without a limit.
	defaultLogLines = 100
	// maxOverride caps a level override: a forgotten DEBUG override must
	// not flood the store for days. Indexers enforce their own cap too.
	maxOverride = 24 * time.Hour
)

type nativeLog struct {
	TimeUnixNano         string         `json:"timeUnixNano"`
	OriginalTimeUnixNano string         `json:"originalTimeUnixNano"`
	SeverityText         string         `json:"severityText"`
	SeverityNumber       int32          `json:"severityNumber"`
	Body                 string         `json:"body"`
	TraceID              string         `json:"traceID,omitempty"`
	SpanID               string         `json:"spanID,omitempty"`
	ServiceName          string         `json:"serviceName"`
	Attributes           map[string]any `json:"attributes"`
}

type nativeLogsResponse struct {
	Logs []nativeLog `json:"logs"`
	// Warnings names indexers that failed when others answered.
	Warnings []string `json:"warnings,omitempty"`
}

type nativeOverride struct {
	Service        string `json:"service"`
	Level          string `json:"level"`
	SeverityNumber int32  `json:"severityNumber"`
	Until          string `json:"until"`
	UntilUnixNano  string `json:"untilUnixNano"`
}

type nativeOverridesResponse struct {
	Overrides []nativeOverride `json:"overrides"`
	Warnings  []string         `json:"warnings,omitempty"`
}

// fanOutLogs is fanOut over the log readers.
func fanOutLogs[T any](ctx context.Context, a *API, method string, call func(context.Context, logspb.LogReaderClient) (T, error)) fanOutResult[T] {
	return fanOutTo(ctx, a, method, a.logReaders, call)
}

// logFailure maps a failed log fan-out to an HTTP error: an indexer's
// InvalidArgument (bad query, bad level) is the caller's 400.
func logFailure(err error) error {
	for _, e := range unwrapJoined(err) {
		if st, ok := status.FromError(unwrapAll(e)); ok && st.Code() == codes.InvalidArgument {
			return badRequest("%s", st.Message())
		}
	}
	return &httpError{code: failureStatus(err), err: err}
}

// unwrapAll returns the innermost error of a wrap chain (the gRPC status).
func unwrapAll(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// mergeLogs merges the answers of every indexer: duplicates (the same line
// on two indexers) removed, ordered by adjusted time.
func mergeLogs(answers [][]*logspb.LogEntry, forward bool) []*logspb.LogEntry {
	type key struct {
		trace, span string
		orig        uint64
		sev         int32
		body        string
		record      string
	}
	seen := map[key]bool{}
	var out []*logspb.LogEntry
	for _, ans := range answers {
		for _, e := range ans {
			k := key{string(e.GetTraceId()), string(e.GetSpanId()), e.GetOriginalTimeUnixNano(), e.GetSeverityNumber(), e.GetBody(), string(e.GetRecord())}
			if seen[k] {
				continue
			}
			seen[k] = true
			out = append(out, e)
		}
	}
	slices.SortStableFunc(out, func(x, y *logspb.LogEntry) int {
		c := cmp.Compare(x.GetTimeUnixNano(), y.GetTimeUnixNano())
		if c == 0 {
			c = cmp.Compare(x.GetOriginalTimeUnixNano(), y.GetOriginalTimeUnixNano())
		}
		if !forward {
			c = -c
		}
		return c
	})
	return out
}

func toNativeLog(e *logspb.LogEntry) nativeLog {
	n := nativeLog{
		TimeUnixNano:         strconv.FormatUint(e.GetTimeUnixNano(), 10),
		OriginalTimeUnixNano: strconv.FormatUint(e.GetOriginalTimeUnixNano(), 10),
		SeverityText:         e.GetSeverityText(),
		SeverityNumber:       e.GetSeverityNumber(),
		Body:                 e.GetBody(),
		ServiceName:          e.GetServiceName(),
		Attributes:           map[string]any{},
	}
	if n.SeverityText == "" {
		n.SeverityText = loglevel.Name(n.SeverityNumber)
	}
	if len(e.GetTraceId()) > 0 {
		n.TraceID = hex.EncodeToString(e.GetTraceId())
	}
	if len(e.GetSpanId()) > 0 {
		n.SpanID = hex.EncodeToString(e.GetSpanId())
	}
	if len(e.GetRecord()) > 0 {
		var rec otlplogs.LogRecord
		if proto.Unmarshal(e.GetRecord(), &rec) == nil {
			n.Attributes = attrMap(rec.GetAttributes())
		}
	}
	return n
}

func (a *API) writeLogs(w http.ResponseWriter, r *http.Request, res fanOutResult[*logspb.LogsResponse], forward bool, limit int) {
	if err := res.failed(); err != nil {
		nativeError(w, r, logFailure(err))
		return
	}
	answers := make([][]*logspb.LogEntry, 0, len(res.ok))
	for _, ok := range res.ok {
		answers = append(answers, ok.GetLogs())
	}
	merged := mergeLogs(answers, forward)
	if limit > 0 && len(merged) > limit {
		merged = merged[:limit]
	}
	out := nativeLogsResponse{Logs: make([]nativeLog, 0, len(merged))}
	for _, e := range merged {
		out.Logs = append(out.Logs, toNativeLog(e))
	}
	if res.partial() {
		out.Warnings = []string{res.partialMessage()}
	}
	writeJSON(w, r, http.StatusOK, out)
}

// traceLogs serves GET /api/v1/traces/{id}/logs.
func (a *API) traceLogs(w http.ResponseWriter, r *http.Request) {
	id, err := span.ParseTraceID(r.PathValue("id"))
	if err != nil {
		nativeError(w, r, badRequest("invalid trace ID: %v", err))
		return
	}
	req := &logspb.TraceLogsRequest{TraceId: id[:]}
	qv := r.URL.Query()
	if v := qv.Get("spanID"); v != "" {
		sid, err := span.ParseSpanID(v)
		if err != nil {
			nativeError(w, r, badRequest("invalid spanID: %v", err))
			return
		}
		req.SpanId = sid[:]
	}
	if v := qv.Get("minLevel"); v != "" {
		if req.MinSeverity, err = loglevel.Parse(v); err != nil {
			nativeError(w, r, badRequest("invalid minLevel: %v", err))
			return
		}
	}
	res := fanOutLogs(r.Context(), a, "TraceLogs", func(ctx context.Context, c logspb.LogReaderClient) (*logspb.LogsResponse, error) {
		return c.TraceLogs(ctx, req)
	})
	a.writeLogs(w, r, res, true, 0)
}

// logSearch serves GET /api/v1/logs/search, newest first.
func (a *API) logSearch(w http.ResponseWriter, r *http.Request) {
	qv := r.URL.Query()
	start, err := parseLogTime(qv.Get("start"))
	if err != nil {
		nativeError(w, r, badRequest("invalid start: %v", err))
		return
	}
	end, err := parseLogTime(qv.Get("end"))
	if err != nil {
		nativeError(w, r, badRequest("invalid end: %v", err))
		return
	}
	if start != 0 && end != 0 && end < start {
		nativeError(w, r, badRequest("end is before start"))
		return
	}
	limit, err := parseLogLimit(qv.Get("limit"), defaultLogLines)
	if err != nil {
		nativeError(w, r, err)
		return
	}
	req := &logspb.SearchLogsRequest{Query: qv.Get("q"), StartUnixNano: start, EndUnixNano: end, Limit: int32(limit)}
	res := fanOutLogs(r.Context(), a, "SearchLogs", func(ctx context.Context, c logspb.LogReaderClient) (*logspb.LogsResponse, error) {
		return c.SearchLogs(ctx, req)
	})
	a.writeLogs(w, r, res, false, limit)
}

// logLevels serves GET /api/v1/logs/levels (POST is setLogLevel).
func (a *API) logLevels(w http.ResponseWriter, r *http.Request) {
	res := fanOutLogs(r.Context(), a, "ListLevelOverrides", func(ctx context.Context, c logspb.LogReaderClient) (*logspb.ListLevelOverridesResponse, error) {
		return c.ListLevelOverrides(ctx, &logspb.ListLevelOverridesRequest{})
	})
	if err := res.failed(); err != nil {
		nativeError(w, r, logFailure(err))
		return
	}
	// Indexers set the same override on their own clocks; show the latest
	// deadline per service.
	by := map[string]*logspb.LevelOverride{}
	for _, ok := range res.ok {
		for _, o := range ok.GetOverrides() {
			if cur := by[o.GetService()]; cur == nil || o.GetUntilUnixNano() > cur.GetUntilUnixNano() {
				by[o.GetService()] = o
			}
		}
	}
	out := nativeOverridesResponse{Overrides: []nativeOverride{}}
	for _, o := range by {
		out.Overrides = append(out.Overrides, toNativeOverride(o))
	}
	slices.SortFunc(out.Overrides, func(x, y nativeOverride) int { return strings.Compare(x.Service, y.Service) })
	if res.partial() {
		out.Warnings = []string{res.partialMessage()}
	}
	writeJSON(w, r, http.StatusOK, out)
}

func toNativeOverride(o *logspb.LevelOverride) nativeOverride {
	until := time.Unix(0, o.GetUntilUnixNano()).UTC()
	return nativeOverride{
		Service:        o.GetService(),
		Level:          loglevel.Name(o.GetSeverityNumber()),
		SeverityNumber: o.GetSeverityNumber(),
		Until:          until.Format(time.RFC3339),
		UntilUnixNano:  strconv.FormatInt(o.GetUntilUnixNano(), 10),
	}
}

type setLevelRequest struct {
	Service string `json:"service"`
	Level   string `json:"level"`
	// Duration is a Go duration ("15m", "1h30m"); 0 lifts the override.
	Duration string `json:"duration"`
}

// setLogLevel sets a time-boxed override on every indexer. It succeeds only
// when every indexer took it: an override some indexers ignore would store
// DEBUG lines for some traces and not others, which is worse than an error
// the operator can retry.
func (a *API) setLogLevel(w http.ResponseWriter, r *http.Request) {
	var body setLevelRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		nativeError(w, r, badRequest("invalid JSON body: %v", err))
		return
	}
	if strings.TrimSpace(body.Service) == "" {
		nativeError(w, r, badRequest("service is required"))
		return
	}
	sev, err := loglevel.Parse(body.Level)
	if err != nil {
		nativeError(w, r, badRequest("invalid level: %v", err))
		return
	}
	d, err := time.ParseDuration(body.Duration)
	if err != nil || d < 0 {
		nativeError(w, r, badRequest("invalid duration %q: want a Go duration such as 15m", truncate(body.Duration)))
		return
	}
	if d > maxOverride {
		nativeError(w, r, badRequest("duration %s exceeds the %s cap", d, maxOverride))
		return
	}
	req := &logspb.SetLevelOverrideRequest{Service: body.Service, SeverityNumber: sev, DurationMs: d.Milliseconds()}
	res := fanOutLogs(r.Context(), a, "SetLevelOverride", func(ctx context.Context, c logspb.LogReaderClient) (*logspb.SetLevelOverrideResponse, error) {
		return c.SetLevelOverride(ctx, req)
	})
	if len(res.errs) > 0 {
		err := errors.Join(res.errs...)
		if len(res.ok) > 0 {
			err = fmt.Errorf("override set on %d of %d indexers; retry: %w", len(res.ok), len(a.logReaders), err)
		}
		nativeError(w, r, logFailure(err))
		return
	}
	if len(res.ok) == 0 {
		nativeError(w, r, logFailure(errNoReaders))
		return
	}
	latest := res.ok[0].GetOverride()
	for _, ok := range res.ok[1:] {
		if ok.GetOverride().GetUntilUnixNano() > latest.GetUntilUnixNano() {
			latest = ok.GetOverride()
		}
	}
	writeJSON(w, r, http.StatusOK, toNativeOverride(latest))
}

func parseLogLimit(v string, def int) (int, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, badRequest("invalid limit %q: want a positive integer", truncate(v))
	}
	return min(n, maxLogLines), nil
}

// parseLogTime parses a time parameter to unix ns; "" is 0 (open). Integers
// are told apart by magnitude: seconds up to 1e11 (year 5138), then
// milliseconds, microseconds, nanoseconds.
func parseLogTime(v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		switch {
		case n < 0:
			return 0, fmt.Errorf("%q is negative", truncate(v))
		case n < 1e11:
			return n * 1e9, nil
		case n < 1e14:
			return n * 1e6, nil
		case n < 1e17:
			return n * 1e3, nil
		}
		return n, nil
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil && f >= 0 && f < math.MaxInt64/1e9 {
		return int64(f * 1e9), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t.UnixNano(), nil
	}
	return 0, fmt.Errorf("%q: want unix seconds, ms, µs or ns, or RFC 3339", truncate(v))
}
