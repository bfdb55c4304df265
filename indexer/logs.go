package indexer

import (
	"context"
	"strings"
	"time"

	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/clockskew"
	"github.com/threadline/threadline/logstore"
	"github.com/threadline/threadline/span"
)

// LogSink stores log lines and says, by level policy, which to keep: every
// line of a kept trace, WARN and above of a dropped one, and lines without a
// trace by their own threshold (with time-boxed per-service overrides).
type LogSink interface {
	Write(ctx context.Context, recs []logstore.Record) error
	Keep(service string, severity int32, traceKept, hasTrace bool, now time.Time) bool
}

// logJob is a trace's (or a traceless record's) log lines to filter and store.
type logJob struct {
	chunks    []chunk
	traceKept bool
	skew      map[clockskew.Instance]time.Duration
	tickets   []*bus.Ticket
}

// handleLogRecord routes a record of the logs topic: keyed by a trace ID, its
// lines wait with that trace for its decision; unkeyed, they are stored by
// level at once.
func (ix *Indexer) handleLogRecord(pk partKey, key, value []byte, t *bus.Ticket, now time.Time) error {
	n, err := span.CountSpans(value) // LogsData nests like TracesData: 1 → 2 → 2
	if err != nil {
		return err
	}
	c := chunk{data: append([]byte(nil), value...), spans: n}
	id, ok := keyTraceID(key)
	if !ok {
		ix.queueLogs(logJob{chunks: []chunk{c}, tickets: []*bus.Ticket{t}})
		return nil
	}
	ix.mu.Lock()
	if h := ix.held[id]; h != nil {
		h.logs = append(h.logs, c)
		h.tickets = appendTicket(h.tickets, t)
		ix.mu.Unlock()
		return nil
	}
	if d, ok := ix.decisions.get(id); ok && ix.traces[id] == nil {
		ix.mu.Unlock()
		ix.queueLogs(logJob{chunks: []chunk{c}, traceKept: len(d) > 0, tickets: []*bus.Ticket{t}})
		return nil
	}
	p := ix.pendingLocked(id, pk, now)
	p.logs = append(p.logs, c)
	p.tickets = appendTicket(p.tickets, t)
	ix.spans += n // log lines count against the same buffer bound
	p.nlogs += n
	ix.mu.Unlock()
	return nil
}

// appendTicket adds a reference on t unless it is already the last one held.
func appendTicket(ts []*bus.Ticket, t *bus.Ticket) []*bus.Ticket {
	if len(ts) > 0 && ts[len(ts)-1] == t {
		return ts
	}
	t.Acquire()
	return append(ts, t)
}

func (ix *Indexer) queueLogs(j logJob) {
	if ix.logs == nil {
		return // no log store: the lines are consumed and dropped
	}
	for _, t := range j.tickets {
		t.Acquire()
	}
	ix.logWrites <- j
}

// skewOffsets reads the offset clock-skew repair applied per service instance
// from the adjusted spans, so a trace's log lines get the same correction.
// The instance names are copies: one may be a string of a resource that
// shares the spans' leases, and the map outlives them.
func skewOffsets(spans []span.Span) map[clockskew.Instance]time.Duration {
	var out map[clockskew.Instance]time.Duration
	for _, s := range spans {
		for _, kv := range s.GetAttributes() {
			if kv.GetKey() != clockskew.AttrClockSkew {
				continue
			}
			if out == nil {
				out = map[clockskew.Instance]time.Duration{}
			}
			out[clockskew.Instance(strings.Clone(string(clockskew.InstanceOf(s.Resource))))] = time.Duration(kv.GetValue().GetIntValue())
		}
	}
	return out
}

// Log lines are written in batches: every Write is a Bleve segment (and a
// Badger transaction), and a job holds one trace's few lines, so writing
// each job alone made segments of a dozen documents that Bleve then spent
// most of its time merging. A batch closes at logBatchLines lines or
// logBatchWait after its first job.
const (
	logBatchLines = 2000
	logBatchWait  = 100 * time.Millisecond
)

// logLoop filters and stores log lines. A failed write is retried until it
// succeeds; the lines' records stay uncommitted meanwhile.
func (ix *Indexer) logLoop() {
	var (
		recs    []logstore.Record
		tickets []*bus.Ticket
	)
	add := func(j logJob) bool {
		recs = append(recs, ix.logRecords(j)...)
		tickets = append(tickets, j.tickets...)
		return len(recs) >= logBatchLines
	}
	flush := func() {
		if len(recs) > 0 { // a batch may hold only lines the policy dropped
			ix.retryWrite("logs", "lines", len(recs), func(ctx context.Context) error { return ix.logs.Write(ctx, recs) })
			ix.m.logLines.WithLabelValues("stored").Add(float64(len(recs)))
		}
		for _, t := range tickets {
			t.Release()
		}
		clear(recs) // drop references for the GC
		recs, tickets = recs[:0], tickets[:0]
	}
	batchJobs(ix.logWrites, logBatchWait, add, flush)
}

// logRecords decodes a job's lines and keeps those the level policy keeps.
func (ix *Indexer) logRecords(j logJob) []logstore.Record {
	now := time.Now()
	var out []logstore.Record
	for _, c := range j.chunks {
		ld, err := span.DecodeLogs(c.data)
		if err != nil {
			ix.m.badRecords.Inc()
			ix.bad.warn("skipping undecodable log record", "err", err)
			continue
		}
		for _, rl := range ld.GetResourceLogs() {
			res := &span.Resource{Resource: rl.GetResource(), SchemaURL: rl.GetSchemaUrl()}
			svc := span.Span{Resource: res}.ServiceName()
			offset := j.skew[clockskew.InstanceOf(res)]
			for _, sl := range rl.GetScopeLogs() {
				for _, lr := range sl.GetLogRecords() {
					hasTrace := len(lr.GetTraceId()) == 16 && !span.TraceID(lr.GetTraceId()).IsZero()
					if !ix.logs.Keep(svc, int32(lr.GetSeverityNumber()), j.traceKept, hasTrace, now) {
						ix.m.logLines.WithLabelValues("dropped_by_level").Inc()
						continue
					}
					out = append(out, logstore.Record{Resource: rl.GetResource(), Scope: sl.GetScope(), Log: lr, SkewOffset: offset})
				}
			}
		}
	}
	return out
}
