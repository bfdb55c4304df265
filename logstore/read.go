package logstore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/blevesearch/bleve/v2"
	"github.com/blevesearch/bleve/v2/search/query"
	"github.com/dgraph-io/badger/v4"

	logspb "github.com/threadline/threadline/proto/logs/v1"
	"github.com/threadline/threadline/span"
)

// ErrBadQuery reports a search or selector the store cannot run.
var ErrBadQuery = errors.New("bad log query")

// Selector selects log lines for the Loki-compatible API. Empty fields
// match everything.
type Selector struct {
	Service string
	// Level is a level name (trace, debug, info, warn, error, fatal); it
	// matches that level exactly, as a Loki stream label does.
	Level   string
	TraceID string
	SpanID  string
	// LineContains: every string must occur in the line. A string that is
	// the line's trace or span ID (hex) also matches: Grafana's trace → logs
	// link filters with |="<trace id>" and most bodies do not repeat it.
	LineContains []string
	// LineNotContains: no string may occur in the line.
	LineNotContains []string
	Start, End      time.Time
	Limit           int
	// Forward returns the oldest lines first; otherwise the newest first.
	Forward bool
}

// maxSelectScan bounds the lines a line-filtered Select reads before it
// gives up looking for more matches: |= is a substring match, which Bleve's
// token index cannot answer, so filtered lines are checked one by one.
const maxSelectScan = 200_000

// TraceLogs returns the lines of one trace (of one span when spanID is not
// nil) at minSeverity and above, ordered by skew-adjusted time.
func (s *Store) TraceLogs(ctx context.Context, traceID span.TraceID, spanID *span.SpanID, minSeverity int32) ([]Entry, error) {
	pes, err := s.TraceLogProtos(ctx, traceID, spanID, minSeverity)
	if err != nil {
		return nil, err
	}
	return toEntries(pes)
}

// TraceLogProtos is TraceLogs in the wire form of the read API.
func (s *Store) TraceLogProtos(ctx context.Context, traceID span.TraceID, spanID *span.SpanID, minSeverity int32) ([]*logspb.LogEntry, error) {
	var out []*logspb.LogEntry
	prefix := append([]byte{prefixLog}, traceID[:]...)
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			key := it.Item().Key()
			if len(key) != logKeyLen {
				continue
			}
			if spanID != nil && !bytes.Equal(key[25:33], spanID[:]) {
				continue
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			pe, err := decodeStoredProto(v)
			if err != nil {
				return err
			}
			if pe.GetSeverityNumber() < minSeverity {
				continue
			}
			out = append(out, pe)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read trace logs: %w", err)
	}
	sortByTime(out, true)
	return out, nil
}

// Search runs a Bleve query string over bodies and attributes (a bare word
// searches the body and attribute values; attr:"key=value" one attribute
// exactly; service_name:, level:, trace_id:, span_id: the keywords) and returns up to limit lines in [start, end],
// newest first. An empty q matches every line.
func (s *Store) Search(ctx context.Context, q string, start, end time.Time, limit int) ([]Entry, error) {
	pes, err := s.SearchProtos(ctx, q, start, end, limit)
	if err != nil {
		return nil, err
	}
	return toEntries(pes)
}

// SearchProtos is Search in the wire form of the read API.
func (s *Store) SearchProtos(ctx context.Context, q string, start, end time.Time, limit int) ([]*logspb.LogEntry, error) {
	var text query.Query = bleve.NewMatchAllQuery()
	if strings.TrimSpace(q) != "" {
		qs := bleve.NewQueryStringQuery(q)
		if _, err := qs.Parse(); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadQuery, err)
		}
		text = qs
	}
	start, end = s.clampRange(start, end)
	pes, _, err := s.bleveSearch(ctx, bleve.NewConjunctionQuery(text, timeRange(start, end)), start, end, limit, 0, false)
	if err != nil {
		return nil, fmt.Errorf("search logs: %w", err)
	}
	return pes, nil
}

// Select returns the lines the selector matches, up to Limit, ordered by
// time in the selector's direction.
func (s *Store) Select(ctx context.Context, sel Selector) ([]Entry, error) {
	pes, err := s.SelectProtos(ctx, sel)
	if err != nil {
		return nil, err
	}
	return toEntries(pes)
}

// SelectProtos is Select in the wire form of the read API.
func (s *Store) SelectProtos(ctx context.Context, sel Selector) ([]*logspb.LogEntry, error) {
	if sel.Limit <= 0 {
		sel.Limit = 100
	}
	sel.Start, sel.End = s.clampRange(sel.Start, sel.End)
	level := ""
	if sel.Level != "" {
		sev, err := ParseLevel(sel.Level)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadQuery, err)
		}
		level = levelLabel(sev)
	}
	traceHex := strings.ToLower(sel.TraceID)
	if traceHex == "" {
		// Grafana's trace → logs link: {service_name="x"} |= "<trace id>".
		for _, n := range sel.LineContains {
			if isHexID(n, 32) {
				traceHex = strings.ToLower(n)
				break
			}
		}
	}
	if traceHex != "" {
		return s.selectTrace(ctx, sel, traceHex, level)
	}
	conj := []query.Query{timeRange(sel.Start, sel.End)}
	term := func(field, v string) {
		tq := bleve.NewTermQuery(v)
		tq.SetField(field)
		conj = append(conj, tq)
	}
	if sel.Service != "" {
		term(fieldService, sel.Service)
	}
	if level != "" {
		term(fieldLevel, level)
	}
	if sel.SpanID != "" {
		term(fieldSpan, strings.ToLower(sel.SpanID))
	}
	q := bleve.NewConjunctionQuery(conj...)
	filtered := len(sel.LineContains) > 0 || len(sel.LineNotContains) > 0
	if !filtered {
		pes, _, err := s.bleveSearch(ctx, q, sel.Start, sel.End, sel.Limit, 0, sel.Forward)
		if err != nil {
			return nil, fmt.Errorf("select logs: %w", err)
		}
		return pes, nil
	}
	page := max(sel.Limit*4, 1000)
	var out []*logspb.LogEntry
	for from := 0; from < maxSelectScan && len(out) < sel.Limit; from += page {
		pes, total, err := s.bleveSearch(ctx, q, sel.Start, sel.End, page, from, sel.Forward)
		if err != nil {
			return nil, fmt.Errorf("select logs: %w", err)
		}
		for _, pe := range pes {
			if lineMatches(pe, sel) {
				out = append(out, pe)
				if len(out) == sel.Limit {
					break
				}
			}
		}
		if uint64(from+page) >= total {
			break
		}
	}
	return out, nil
}

func (s *Store) selectTrace(ctx context.Context, sel Selector, traceHex, level string) ([]*logspb.LogEntry, error) {
	id, err := span.ParseTraceID(traceHex)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadQuery, err)
	}
	all, err := s.TraceLogProtos(ctx, id, nil, 0)
	if err != nil {
		return nil, err
	}
	startNs, endNs := uint64(sel.Start.UnixNano()), uint64(sel.End.UnixNano())
	out := all[:0]
	for _, pe := range all {
		switch {
		case pe.GetTimeUnixNano() < startNs || pe.GetTimeUnixNano() > endNs,
			sel.Service != "" && pe.GetServiceName() != sel.Service,
			level != "" && levelLabel(pe.GetSeverityNumber()) != level,
			sel.SpanID != "" && hex.EncodeToString(pe.GetSpanId()) != strings.ToLower(sel.SpanID),
			!lineMatches(pe, sel):
			continue
		}
		out = append(out, pe)
	}
	sortByTime(out, sel.Forward)
	if len(out) > sel.Limit {
		out = out[:sel.Limit]
	}
	return out, nil
}

func lineMatches(pe *logspb.LogEntry, sel Selector) bool {
	for _, n := range sel.LineContains {
		if !strings.Contains(pe.GetBody(), n) && !idEquals(pe, n) {
			return false
		}
	}
	for _, n := range sel.LineNotContains {
		if strings.Contains(pe.GetBody(), n) || idEquals(pe, n) {
			return false
		}
	}
	return true
}

func idEquals(pe *logspb.LogEntry, n string) bool {
	switch {
	case isHexID(n, 32):
		return strings.EqualFold(hex.EncodeToString(pe.GetTraceId()), n)
	case isHexID(n, 16):
		return strings.EqualFold(hex.EncodeToString(pe.GetSpanId()), n)
	}
	return false
}

func isHexID(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// LabelValues lists the values of a Loki label over [start, end]:
// service_name (alias service) and level (alias detected_level). trace_id
// and span_id are selectable but not listed (one value per trace); other
// names have no values.
func (s *Store) LabelValues(ctx context.Context, name string, start, end time.Time) ([]string, error) {
	field := ""
	switch name {
	case "service_name", "service":
		field = fieldService
	case "level", "detected_level":
		field = fieldLevel
	default:
		return nil, nil
	}
	start, end = s.clampRange(start, end)
	shards, err := s.shards.acquireRange(start.UnixNano(), end.UnixNano(), s.now())
	if err != nil {
		return nil, fmt.Errorf("label values: %w", err)
	}
	defer s.shards.release(shards...)
	if len(shards) == 0 {
		return nil, nil
	}
	req := bleve.NewSearchRequestOptions(timeRange(start, end), 0, 0, false)
	req.AddFacet("v", bleve.NewFacetRequest(field, 10000))
	res, err := alias(shards).SearchInContext(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("label values: %w", err)
	}
	var out []string
	if f := res.Facets["v"]; f != nil && f.Terms != nil {
		for _, t := range f.Terms.Terms() {
			out = append(out, t.Term)
		}
	}
	slices.Sort(out)
	return out, nil
}

// bleveSearch runs q over the shards overlapping [start, end], sorted by
// time, and decodes the hits. It returns the total number of matches.
func (s *Store) bleveSearch(ctx context.Context, q query.Query, start, end time.Time, size, from int, forward bool) ([]*logspb.LogEntry, uint64, error) {
	if size <= 0 {
		size = 100
	}
	shards, err := s.shards.acquireRange(start.UnixNano(), end.UnixNano(), s.now())
	if err != nil {
		return nil, 0, err
	}
	defer s.shards.release(shards...)
	if len(shards) == 0 {
		return nil, 0, nil
	}
	req := bleve.NewSearchRequestOptions(q, size, from, false)
	req.Fields = []string{fieldSrc}
	req.Score = "none"
	if forward {
		req.SortBy([]string{fieldTime, "_id"})
	} else {
		req.SortBy([]string{"-" + fieldTime, "-_id"})
	}
	res, err := alias(shards).SearchInContext(ctx, req)
	if err != nil {
		return nil, 0, err
	}
	out := make([]*logspb.LogEntry, 0, len(res.Hits))
	for _, h := range res.Hits {
		src, ok := h.Fields[fieldSrc].(string)
		if !ok {
			continue
		}
		pe, err := decodeStoredProto([]byte(src))
		if err != nil {
			return nil, 0, err
		}
		out = append(out, pe)
	}
	return out, res.Total, nil
}

func alias(shards []*shard) bleve.IndexAlias {
	idx := make([]bleve.Index, len(shards))
	for i, sh := range shards {
		idx[i] = sh.idx
	}
	return bleve.NewIndexAlias(idx...)
}

func timeRange(start, end time.Time) query.Query {
	t := true
	q := bleve.NewDateRangeInclusiveQuery(start, end, &t, &t)
	q.SetField(fieldTime)
	return q
}

// clampRange fills an open range: end defaults to now, start to the
// retention horizon.
func (s *Store) clampRange(start, end time.Time) (time.Time, time.Time) {
	now := s.now()
	if end.IsZero() {
		end = now.Add(time.Minute)
	}
	if start.IsZero() || start.Before(now.Add(-s.opts.Retention)) {
		start = now.Add(-s.opts.Retention)
	}
	return start, end
}

func sortByTime(pes []*logspb.LogEntry, forward bool) {
	slices.SortStableFunc(pes, func(a, b *logspb.LogEntry) int {
		c := cmp.Compare(a.GetTimeUnixNano(), b.GetTimeUnixNano())
		if c == 0 {
			c = cmp.Compare(a.GetOriginalTimeUnixNano(), b.GetOriginalTimeUnixNano())
		}
		if !forward {
			c = -c
		}
		return c
	})
}

func toEntries(pes []*logspb.LogEntry) ([]Entry, error) {
	out := make([]Entry, 0, len(pes))
	for _, pe := range pes {
		e, err := EntryFromProto(pe)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}
