package logstore

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	otlplogs "go.opentelemetry.io/proto/otlp/logs/v1"

	"github.com/threadline/threadline/span"
)

var benchWords = []string{"connection", "refused", "cart", "loaded", "payment", "retry", "timeout", "user", "order", "inventory", "cache", "miss", "db", "query", "slow", "ok"}

// benchBatch builds n lines, linesPerTrace per trace, starting at trace
// number first.
func benchBatch(first, n, linesPerTrace int, at time.Time) []Record {
	recs := make([]Record, 0, n)
	resource := res("checkout")
	for i := range n {
		k := first + i
		var tid span.TraceID
		tid[0] = 1
		tid[8], tid[9], tid[10], tid[11] = byte(k/linesPerTrace>>24), byte(k/linesPerTrace>>16), byte(k/linesPerTrace>>8), byte(k/linesPerTrace)
		sid := span.SpanID{7: byte(k%4 + 1)}
		body := fmt.Sprintf("%s %s %s for order %d took %dms", benchWords[k%16], benchWords[(k/3)%16], benchWords[(k/7)%16], k, k%997)
		recs = append(recs, Record{
			Resource: resource,
			Log: &otlplogs.LogRecord{
				TimeUnixNano:   uint64(at.Add(time.Duration(k) * time.Microsecond).UnixNano()),
				SeverityNumber: otlplogs.SeverityNumber(1 + (k%6)*4),
				TraceId:        tid[:], SpanId: sid[:],
				Body: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: body}},
				Attributes: []*commonpb.KeyValue{
					str("http.route", "/api/"+benchWords[k%16]), str("user.id", strconv.Itoa(k%5000)), str("region", "eu-west-1"),
				},
			},
		})
	}
	return recs
}

// BenchmarkWrite measures log ingest into Badger + Bleve, one goroutine.
func BenchmarkWrite(b *testing.B) {
	b.ReportAllocs()
	s := open(b, b.TempDir(), testOptions())
	const batch = 1000
	at := time.Now().Add(-time.Minute)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := s.Write(ctx, benchBatch(i*batch, batch, 20, at)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "lines/s")
}

// BenchmarkTraceLogs measures trace → logs over a store of
// LOGSTORE_BENCH_LINES lines (default 100k; 20 lines per trace).
func BenchmarkTraceLogs(b *testing.B) {
	total := 100_000
	if v, err := strconv.Atoi(os.Getenv("LOGSTORE_BENCH_LINES")); err == nil && v > 0 {
		total = v
	}
	s := open(b, b.TempDir(), testOptions())
	at := time.Now().Add(-2 * time.Hour)
	ctx := context.Background()
	const batch = 5000
	for i := 0; i < total; i += batch {
		if err := s.Write(ctx, benchBatch(i, min(batch, total-i), 20, at)); err != nil {
			b.Fatal(err)
		}
	}
	traces := total / 20
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		k := (i * 7919) % traces
		var tid span.TraceID
		tid[0] = 1
		tid[8], tid[9], tid[10], tid[11] = byte(k>>24), byte(k>>16), byte(k>>8), byte(k)
		got, err := s.TraceLogs(ctx, tid, nil, 0)
		if err != nil || len(got) != 20 {
			b.Fatalf("trace %d: %d lines, %v", k, len(got), err)
		}
	}
	b.ReportMetric(float64(total), "stored-lines")
}

// BenchmarkSearch measures a full-text search over the same data.
func BenchmarkSearch(b *testing.B) {
	s := open(b, b.TempDir(), testOptions())
	at := time.Now().Add(-2 * time.Hour)
	ctx := context.Background()
	for i := 0; i < 100_000; i += 5000 {
		if err := s.Write(ctx, benchBatch(i, 5000, 20, at)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		got, err := s.Search(ctx, "refused +timeout", time.Time{}, time.Time{}, 50)
		if err != nil || len(got) == 0 {
			b.Fatalf("%d hits, %v", len(got), err)
		}
	}
}
