package indexer

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/bus"
	"github.com/threadline/threadline/clockskew"
	"github.com/threadline/threadline/index"
	"github.com/threadline/threadline/logstore"
	"github.com/threadline/threadline/sampling"
	"github.com/threadline/threadline/span"
)

// discardWriter stands in for the store: the benchmark measures the stage in
// front of it (the store has its own benchmarks in index/).
type discardWriter struct{}

func (discardWriter) WriteTracesThen(_ context.Context, _ []index.KeptTrace, durable func()) error {
	durable()
	return nil
}

func (discardWriter) Flush(context.Context) error { return nil }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAssembleSkewSample feeds keyed records (one 5-span trace each, 10
// attributes per span, a client/server pair across two hosts) through
// assembly, clock-skew repair and tail sampling with the default policy, and
// reports spans/s per core of CPU.
func BenchmarkAssembleSkewSample(b *testing.B) {
	cfg := DefaultConfig()
	cfg.DecisionWait = 20 * time.Millisecond
	dec, err := sampling.NewTailSampler(sampling.DefaultConfig(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	ix, err := New(cfg, Parts{Store: discardWriter{}, Decider: dec, Stages: []Stage{skewStage{clockskew.RepairClockSkew(clockskew.DefaultConfig())}}},
		slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ix.Run(ctx) }()

	const spansPerTrace, batch = 5, 512
	attrs := func(n int) []*commonpb.KeyValue {
		var kvs []*commonpb.KeyValue
		for i := range n {
			kvs = append(kvs, &commonpb.KeyValue{Key: fmt.Sprintf("attr.%d", i), Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: fmt.Sprintf("value-%d-of-some-length", i)}}})
		}
		return kvs
	}
	res := func(svc, host string) *resourcepb.Resource {
		return &resourcepb.Resource{Attributes: []*commonpb.KeyValue{
			{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: svc}}},
			{Key: "host.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: host}}}}}
	}
	now := time.Now()
	record := func(n int) *kgo.Record {
		var id span.TraceID
		binary.BigEndian.PutUint64(id[:8], uint64(n)+1)
		binary.BigEndian.PutUint64(id[8:], uint64(n)*0x9e3779b97f4a7c15)
		start := uint64(now.Add(time.Duration(n) * time.Microsecond).UnixNano())
		var a, c []*tracepb.Span
		for i := range spansPerTrace {
			sid := make([]byte, 8)
			binary.BigEndian.PutUint64(sid, uint64(i)+1)
			sp := &tracepb.Span{TraceId: id[:], SpanId: sid, Name: fmt.Sprintf("op-%d", n%50), Attributes: attrs(10),
				StartTimeUnixNano: start + uint64(i)*1000, EndTimeUnixNano: start + 10_000_000 - uint64(i)*1000}
			if i > 0 {
				sp.ParentSpanId = make([]byte, 8)
				binary.BigEndian.PutUint64(sp.ParentSpanId, uint64(i))
			}
			switch i {
			case 1:
				sp.Kind = tracepb.Span_SPAN_KIND_CLIENT
			case 2: // server on another host, 3 ms ahead
				sp.Kind = tracepb.Span_SPAN_KIND_SERVER
				sp.StartTimeUnixNano += 3_000_000
				sp.EndTimeUnixNano += 3_000_000
			}
			if i == 2 {
				c = append(c, sp)
			} else {
				a = append(a, sp)
			}
		}
		td := &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{
			{Resource: res("checkout", "host-a"), ScopeSpans: []*tracepb.ScopeSpans{{Spans: a}}},
			{Resource: res("payment", "host-b"), ScopeSpans: []*tracepb.ScopeSpans{{Spans: c}}},
		}}
		v, _ := proto.Marshal(td)
		return &kgo.Record{Topic: "otlp_spans", Key: id.AppendHex(nil), Value: v}
	}
	recs := make([]*kgo.Record, 4096)
	for i := range recs {
		recs[i] = record(i)
	}
	ledger := bus.NewLedger()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0, wall0 := cpuTime(), time.Now()
	traces := 0
	for i := 0; b.Loop(); i++ {
		chunk := make([]*kgo.Record, batch)
		tickets := make([]*bus.Ticket, batch)
		for j := range chunk {
			src := recs[(i*batch+j)%len(recs)]
			r := *src
			n := i*batch + j
			var old, id span.TraceID
			_, _ = hex.Decode(old[:], src.Key)
			binary.BigEndian.PutUint64(id[:8], uint64(n)+1)
			binary.BigEndian.PutUint64(id[8:], uint64(n)*0x9e3779b97f4a7c15+1)
			// A fresh trace each time: rewrite its ID in the key and the spans.
			r.Key = id.AppendHex(nil)
			r.Value = bytes.ReplaceAll(src.Value, old[:], id[:])
			r.Offset = int64(n)
			chunk[j] = &r
			tickets[j] = ledger.Begin(&r)
		}
		ix.HandleRecords(ctx, chunk, tickets)
		traces += batch
	}
	// Every trace decided (kept, dropped, or held in a top-N heap until its
	// window closes: its work is done).
	for {
		ix.mu.Lock()
		n := len(ix.traces)
		for _, h := range ix.held {
			if h.deciding {
				n++
			}
		}
		ix.mu.Unlock()
		if n == 0 && ix.writesQueued() == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	cpu, wall := cpuTime()-cpu0, time.Since(wall0)
	spans := float64(traces * spansPerTrace)
	b.ReportMetric(spans/wall.Seconds(), "spans/s")
	b.ReportMetric(spans/cpu.Seconds(), "spans/s/core")
	if bad := counterValue(b, ix.m.badSpans); bad > 0 {
		b.Fatalf("%v spans did not match their record's trace ID", bad)
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkLogIngest feeds log records (10 WARN/ERROR lines of one trace
// each, the way the collector keys them) through the indexer into a real
// log store (Bleve + Badger in a temp dir), and reports lines/s per core.
func BenchmarkLogIngest(b *testing.B) {
	logs, err := logstore.Open(b.TempDir(), slog.New(slog.DiscardHandler), nil, logstore.DefaultOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer logs.Close()
	dec, err := sampling.NewTailSampler(sampling.DefaultConfig(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.DecisionWait = 20 * time.Millisecond
	ix, err := New(cfg, Parts{Store: discardWriter{}, Decider: dec, Logs: logs}, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ix.Run(ctx) }()

	const linesPerTrace, batch = 10, 100
	words := []string{"connection", "refused", "cart", "payment", "retry", "timeout", "inventory", "cache", "slow", "query"}
	now := time.Now()
	record := func(n int) *kgo.Record {
		var id span.TraceID
		binary.BigEndian.PutUint64(id[:8], uint64(n)+1)
		var lrs []*logspb.LogRecord
		for i := range linesPerTrace {
			k := n*linesPerTrace + i
			lrs = append(lrs, &logspb.LogRecord{
				TimeUnixNano:   uint64(now.Add(time.Duration(k) * time.Microsecond).UnixNano()),
				SeverityNumber: logspb.SeverityNumber_SEVERITY_NUMBER_WARN + logspb.SeverityNumber(4*(k%2)),
				TraceId:        id[:], SpanId: []byte{7: byte(i + 1)},
				Body:       &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: fmt.Sprintf("%s %s for order %d took %dms", words[k%10], words[(k/3)%10], k, k%997)}},
				Attributes: []*commonpb.KeyValue{{Key: "http.route", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "/api/" + words[k%10]}}}},
			})
		}
		ld := &logspb.LogsData{ResourceLogs: []*logspb.ResourceLogs{{
			Resource:  &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "checkout"}}}}},
			ScopeLogs: []*logspb.ScopeLogs{{LogRecords: lrs}},
		}}}
		v, _ := proto.Marshal(ld)
		return &kgo.Record{Topic: cfg.LogsTopic, Key: id.AppendHex(nil), Value: v, Offset: int64(n)}
	}
	ledger := bus.NewLedger()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0, wall0 := cpuTime(), time.Now()
	traces := 0
	for i := 0; b.Loop(); i++ {
		recs := make([]*kgo.Record, batch)
		tickets := make([]*bus.Ticket, batch)
		for j := range recs {
			recs[j] = record(i*batch + j)
			tickets[j] = ledger.Begin(recs[j])
		}
		ix.HandleRecords(ctx, recs, tickets)
		traces += batch
	}
	want := float64(traces * linesPerTrace)
	for counterValue(b, ix.m.logLines.WithLabelValues("stored")) < want {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	cpu, wall := cpuTime()-cpu0, time.Since(wall0)
	b.ReportMetric(want/wall.Seconds(), "lines/s")
	b.ReportMetric(want/cpu.Seconds(), "lines/s/core")
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPack: packing one of the load generator's records for the
// decision buffer (see packer) and unpacking it into a lease, as a small
// buffer does and as a large one does (dense, against a dictionary);
// B/record is what the buffer holds. "whole-dense" packs the whole record
// against the same dictionary, for comparison.
func BenchmarkPack(b *testing.B) {
	recs := loadgenRecords(b, 4096)
	now := time.Now()
	run := func(b *testing.B, pack func(v []byte) chunk) {
		var held, plain int
		for i := 0; b.Loop(); i++ {
			v := recs[i%len(recs)]
			held += len(pack(v).data)
			plain += len(v)
		}
		b.ReportMetric(float64(held)/float64(b.N), "B/record")
		b.SetBytes(int64(plain / b.N))
	}
	for _, dense := range []bool{false, true} {
		name := ""
		if dense {
			name = "-dense"
		}
		p := packer{dense: dense}
		chunks := make([]chunk, len(recs))
		for i, r := range recs {
			c, err := p.pack(r, now)
			if err != nil {
				b.Fatal(err)
			}
			chunks[i] = c
		}
		b.Run("pack"+name, func(b *testing.B) {
			run(b, func(v []byte) chunk {
				c, err := p.pack(v, now)
				if err != nil {
					b.Fatal(err)
				}
				return c
			})
		})
		if dense {
			b.Run("whole"+name, func(b *testing.B) {
				run(b, func(v []byte) chunk { return chunk{data: p.encode([]byte{packedWhole}, nil, v)} })
			})
		}
		b.Run("unpack"+name, func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				l, err := chunks[i%len(chunks)].lease()
				if err != nil {
					b.Fatal(err)
				}
				l.Release()
			}
		})
	}
}
