package loadgen

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// exportServer is a minimal OTLP trace receiver that decodes every request
// with the standard protobuf codec and records what it saw.
type exportServer struct {
	collectortracepb.UnimplementedTraceServiceServer

	// respond, when set, decides the answer to the n-th request (from 0).
	respond func(n int) (*collectortracepb.ExportTraceServiceResponse, error)

	mu       sync.Mutex
	requests int
	spans    int
	// traces maps each trace ID to the request it arrived in and its spans.
	traces map[span.TraceID]*seenTrace
	// dupAcross counts trace IDs seen in more than one request.
	dupAcross int
	minStart  uint64
}

type seenTrace struct {
	request int
	spans   int
}

func (s *exportServer) Export(_ context.Context, req *collectortracepb.ExportTraceServiceRequest) (*collectortracepb.ExportTraceServiceResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.requests
	s.requests++
	if s.respond != nil {
		if resp, err := s.respond(n); resp != nil || err != nil {
			if err != nil {
				return nil, err
			}
			s.record(n, req)
			return resp, nil
		}
	}
	s.record(n, req)
	return &collectortracepb.ExportTraceServiceResponse{}, nil
}

func (s *exportServer) record(n int, req *collectortracepb.ExportTraceServiceRequest) {
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				s.spans++
				id, err := span.TraceIDFromBytes(sp.TraceId)
				if err != nil {
					continue
				}
				if s.minStart == 0 || sp.StartTimeUnixNano < s.minStart {
					s.minStart = sp.StartTimeUnixNano
				}
				t, ok := s.traces[id]
				if !ok {
					t = &seenTrace{request: n}
					s.traces[id] = t
				} else if t.request != n {
					s.dupAcross++
				}
				t.spans++
			}
		}
	}
}

// startServer serves srv on a loopback port and returns its address.
func startServer(t *testing.T, srv *exportServer) string {
	t.Helper()
	srv.traces = map[span.TraceID]*seenTrace{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gs := grpc.NewServer()
	collectortracepb.RegisterTraceServiceServer(gs, srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return lis.Addr().String()
}

func testConfig(addr string) Config {
	cfg := DefaultConfig()
	cfg.Endpoint = addr
	cfg.Progress = 0
	cfg.Pool = 4
	cfg.TraceIDSeed = 42
	return cfg
}

func TestRunCountsAndUniqueTraceIDs(t *testing.T) {
	tests := []struct {
		name       string
		configure  func(*Config)
		wantSpans  int64 // 0: bounded by time, checked for consistency only
		wantTraces int64
	}{
		{
			name: "total spans, whole requests",
			configure: func(c *Config) {
				c.TotalSpans, c.SpansPerRequest, c.SpansPerTrace, c.Concurrency = 10240, 512, 5, 4
			},
			wantSpans:  10240,
			wantTraces: 20 * 103,
		},
		{
			name: "total rounded up, traces not dividing requests",
			configure: func(c *Config) {
				c.TotalSpans, c.SpansPerRequest, c.SpansPerTrace, c.Resources, c.Attrs = 950, 100, 7, 4, 3
				c.Concurrency, c.Connections = 3, 1
			},
			wantSpans:  1000,
			wantTraces: 10 * 15,
		},
		{
			name: "duration",
			configure: func(c *Config) {
				c.Duration, c.SpansPerRequest, c.Concurrency = 300*time.Millisecond, 64, 2
			},
		},
		{
			name: "paced by rate",
			configure: func(c *Config) {
				c.Duration, c.Rate, c.SpansPerRequest, c.SpansPerTrace = 400*time.Millisecond, 10_000, 100, 10
			},
			wantSpans:  4000,
			wantTraces: 400,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := &exportServer{}
			cfg := testConfig(startServer(t, srv))
			tt.configure(&cfg)
			began := time.Now()
			rep, err := Run(t.Context(), cfg, nil)
			require.NoError(t, err)

			srv.mu.Lock()
			defer srv.mu.Unlock()
			if tt.wantSpans > 0 {
				require.Equal(t, tt.wantSpans, rep.SpansSent)
				require.Equal(t, tt.wantTraces, rep.Traces)
			}
			require.Positive(t, rep.SpansSent)
			require.Equal(t, rep.SpansSent, rep.SpansAcked)
			require.Equal(t, int64(srv.spans), rep.SpansAcked, "server saw every acknowledged span")
			require.Equal(t, int64(srv.requests), rep.Requests)
			require.Equal(t, int(rep.Traces), len(srv.traces), "distinct trace IDs")
			require.Zero(t, srv.dupAcross, "a trace ID was reused across requests")
			require.Empty(t, rep.Errors)
			for n := range uint64(rep.Traces) {
				_, ok := srv.traces[TraceID(cfg.TraceIDSeed, n)]
				require.True(t, ok, "trace %d missing", n)
			}
			require.Equal(t, TraceID(cfg.TraceIDSeed, 0).String(), rep.FirstTraceID)
			require.Equal(t, TraceID(cfg.TraceIDSeed, uint64(rep.Traces-1)).String(), rep.LastTraceID)
			for id, tr := range srv.traces {
				require.LessOrEqual(t, tr.spans, cfg.SpansPerTrace, "trace %s", id)
			}
			// Fresh timestamps: replayed spans start near the send time.
			require.Greater(t, srv.minStart, uint64(began.Add(-5*time.Second).UnixNano()))
			require.Positive(t, rep.LatencyMS.P50)
			require.GreaterOrEqual(t, rep.LatencyMS.Max, rep.LatencyMS.P99)
			require.Positive(t, rep.ClientCPUSeconds)
			if cfg.Rate > 0 {
				// The last of 40 requests is paced to 390ms after the start.
				require.GreaterOrEqual(t, rep.DurationSeconds, 0.38)
			}
		})
	}
}

func TestRunCountsFailuresAndPartialSuccess(t *testing.T) {
	srv := &exportServer{respond: func(n int) (*collectortracepb.ExportTraceServiceResponse, error) {
		switch n % 4 {
		case 1:
			return nil, status.Error(codes.ResourceExhausted, "shedding load")
		case 2:
			return nil, status.Error(codes.Unavailable, "try again")
		case 3:
			return &collectortracepb.ExportTraceServiceResponse{
				PartialSuccess: &collectortracepb.ExportTracePartialSuccess{RejectedSpans: 10, ErrorMessage: "too old"},
			}, nil
		}
		return nil, nil
	}}
	cfg := testConfig(startServer(t, srv))
	cfg.TotalSpans, cfg.SpansPerRequest, cfg.Concurrency, cfg.ErrorBackoff = 100*40, 100, 1, 0
	rep, err := Run(t.Context(), cfg, nil)
	require.NoError(t, err)
	require.Equal(t, int64(40), rep.Requests)
	require.Equal(t, int64(20), rep.RequestsFailed)
	require.Equal(t, map[string]int64{"ResourceExhausted": 10, "Unavailable": 10}, rep.Errors)
	require.Equal(t, int64(100), rep.SpansRejected)
	require.Equal(t, int64(20*100-100), rep.SpansAcked)
	require.Equal(t, int64(4000), rep.SpansSent)
}

func TestRunServerDown(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())

	cfg := testConfig(addr)
	cfg.TotalSpans, cfg.SpansPerRequest, cfg.Concurrency, cfg.Timeout = 300, 100, 1, 500*time.Millisecond
	rep, err := Run(t.Context(), cfg, nil)
	require.NoError(t, err, "failed calls are counted, not returned")
	require.Equal(t, int64(3), rep.RequestsFailed)
	require.Equal(t, int64(3), rep.Errors["Unavailable"])
	require.Zero(t, rep.SpansAcked)
}

func TestPoolShape(t *testing.T) {
	tests := []struct {
		spansPerRequest, spansPerTrace, attrs, resources int
	}{
		{512, 5, 10, 3},
		{100, 7, 3, 4},
		{10, 10, 0, 1},
		{64, 1, 20, 12},
	}
	for _, tt := range tests {
		cfg := DefaultConfig()
		cfg.SpansPerRequest, cfg.SpansPerTrace, cfg.Attrs, cfg.Resources, cfg.Pool = tt.spansPerRequest, tt.spansPerTrace, tt.attrs, tt.resources, 3
		require.NoError(t, cfg.Validate())
		now := time.Now()
		pool, err := buildPool(&cfg, 7, now)
		require.NoError(t, err)
		require.Len(t, pool, 3)
		for i, tmpl := range pool {
			require.Equal(t, tt.spansPerRequest, tmpl.spans)
			require.Len(t, tmpl.traceIDs, cfg.tracesPerRequest())
			require.Len(t, tmpl.times, 2*tt.spansPerRequest)

			const shift = uint64(time.Hour)
			buf := tmpl.render(nil, 99, uint64(i)*1000, shift)
			var before, after collectortracepb.ExportTraceServiceRequest
			require.NoError(t, proto.Unmarshal(tmpl.buf, &before))
			require.NoError(t, proto.Unmarshal(buf, &after))
			require.Len(t, after.ResourceSpans, tt.resources)

			type traceShape struct {
				spans   int
				ids     map[string]bool
				parents []string
			}
			traces := map[span.TraceID]*traceShape{}
			var total int
			for r, rs := range after.ResourceSpans {
				require.NotEmpty(t, rs.Resource.Attributes)
				for s, sp := range rs.ScopeSpans[0].Spans {
					total++
					orig := before.ResourceSpans[r].ScopeSpans[0].Spans[s]
					require.Equal(t, orig.StartTimeUnixNano+shift, sp.StartTimeUnixNano)
					require.Equal(t, orig.EndTimeUnixNano+shift, sp.EndTimeUnixNano)
					require.Less(t, sp.StartTimeUnixNano, sp.EndTimeUnixNano)
					require.Len(t, sp.Attributes, tt.attrs)
					id, err := span.TraceIDFromBytes(sp.TraceId)
					require.NoError(t, err)
					// Everything but the rewritten fields is unchanged.
					sp.TraceId, sp.StartTimeUnixNano, sp.EndTimeUnixNano = orig.TraceId, orig.StartTimeUnixNano, orig.EndTimeUnixNano
					require.True(t, proto.Equal(orig, sp))

					ts := traces[id]
					if ts == nil {
						ts = &traceShape{ids: map[string]bool{}}
						traces[id] = ts
					}
					ts.spans++
					ts.ids[string(sp.SpanId)] = true
					if len(sp.ParentSpanId) > 0 {
						ts.parents = append(ts.parents, string(sp.ParentSpanId))
					}
				}
			}
			require.Equal(t, tt.spansPerRequest, total)
			require.Len(t, traces, cfg.tracesPerRequest())
			for j := range cfg.tracesPerRequest() {
				ts := traces[TraceID(99, uint64(i)*1000+uint64(j))]
				require.NotNil(t, ts, "trace %d of request %d", j, i)
				want := min(tt.spansPerTrace, tt.spansPerRequest-j*tt.spansPerTrace)
				require.Equal(t, want, ts.spans)
				require.Len(t, ts.parents, want-1, "one root per trace")
				for _, p := range ts.parents {
					require.True(t, ts.ids[p], "parent in the same trace")
				}
			}
		}
	}
}

func TestTraceIDsUniqueAndReproducible(t *testing.T) {
	seen := make(map[span.TraceID]struct{}, 200_000)
	for _, seed := range []uint64{1, 2} {
		for n := range uint64(100_000) {
			id := TraceID(seed, n)
			require.False(t, id.IsZero())
			_, dup := seen[id]
			require.False(t, dup, "seed %d n %d", seed, n)
			seen[id] = struct{}{}
		}
	}
	require.Equal(t, TraceID(5, 77), TraceID(5, 77))
	require.NotEqual(t, TraceID(5, 77), TraceID(6, 77))
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
	}{
		{"defaults", func(*Config) {}, ""},
		{"both limits", func(c *Config) { c.TotalSpans, c.Duration = 10, time.Second }, "either total-spans or duration"},
		{"trace larger than request", func(c *Config) { c.SpansPerTrace = 1000 }, "must not exceed spans-per-request"},
		{"no workers", func(c *Config) { c.Concurrency = 0 }, "concurrency must be positive"},
		{"no endpoint", func(c *Config) { c.Endpoint = "" }, "endpoint must be set"},
		{"negative attrs", func(c *Config) { c.Attrs = -1 }, "attrs must not be negative"},
		{"zero timeout", func(c *Config) { c.Timeout = 0 }, "timeout must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.mutate(&cfg)
			err := cfg.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestHistogram(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 7, 8, 15, 16, 17, 1000, 123_456, time.Millisecond, 3 * time.Second, 1 << 62} {
		ub := upperBound(bucketOf(d))
		require.GreaterOrEqual(t, ub, max(d, 1), "d=%d", d)
		require.LessOrEqual(t, float64(ub), float64(max(d, 1))*1.125+1, "d=%d", d)
	}
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Millisecond)
	}
	require.InEpsilon(t, float64(500*time.Millisecond), float64(h.quantile(0.5)), 0.13)
	require.InEpsilon(t, float64(990*time.Millisecond), float64(h.quantile(0.99)), 0.13)
	require.Equal(t, time.Second, h.quantile(1))
}

func TestRejectedSpans(t *testing.T) {
	resp, err := proto.Marshal(&collectortracepb.ExportTraceServiceResponse{
		PartialSuccess: &collectortracepb.ExportTracePartialSuccess{RejectedSpans: 12345, ErrorMessage: "x"},
	})
	require.NoError(t, err)
	n, err := rejectedSpans(resp)
	require.NoError(t, err)
	require.Equal(t, int64(12345), n)

	n, err = rejectedSpans(nil)
	require.NoError(t, err)
	require.Zero(t, n)

	_, err = rejectedSpans([]byte{0x0a, 0x05, 0x08})
	require.ErrorIs(t, err, errMalformed)
}

// FuzzWalkSpans checks that walking arbitrary bytes (as a request, and as a
// response) never panics and that every reported offset lies inside the buffer.
func FuzzWalkSpans(f *testing.F) {
	cfg := DefaultConfig()
	cfg.SpansPerRequest, cfg.Attrs, cfg.Pool = 6, 2, 1
	pool, err := buildPool(&cfg, 1, time.Unix(1_700_000_000, 0))
	require.NoError(f, err)
	f.Add(pool[0].buf)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x80})
	one, err := proto.Marshal(&tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{TraceId: make([]byte, 16)}}}}}}})
	require.NoError(f, err)
	f.Add(one)
	f.Fuzz(func(t *testing.T, buf []byte) {
		if n, err := rejectedSpans(buf); err != nil {
			require.Zero(t, n)
		}
		_ = walkSpans(buf, func(fld spanField) {
			size := 8
			if fld.num == spanFieldTraceID {
				size = 16
			}
			require.LessOrEqual(t, fld.off+size, len(buf))
		})
	})
}

func BenchmarkRender(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Pool = 1
	pool, err := buildPool(&cfg, 1, time.Now())
	require.NoError(b, err)
	tmpl := pool[0]
	buf := make([]byte, 0, len(tmpl.buf))
	b.ReportAllocs()
	b.SetBytes(int64(len(tmpl.buf)))
	for i := 0; b.Loop(); i++ {
		buf = tmpl.render(buf, 1, uint64(i)*uint64(cfg.tracesPerRequest()), 1000)
	}
	b.ReportMetric(float64(b.N*tmpl.spans)/b.Elapsed().Seconds(), "spans/s")
}

// BenchmarkRun measures the whole client against an in-process server that
// decodes every request; on one machine the server's decoding dominates.
func BenchmarkRun(b *testing.B) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	gs := grpc.NewServer()
	collectortracepb.RegisterTraceServiceServer(gs, countingServer{})
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()

	cfg := testConfig(lis.Addr().String())
	cfg.TotalSpans = int64(b.N) * int64(cfg.SpansPerRequest)
	b.ReportAllocs()
	rep, err := Run(b.Context(), cfg, nil)
	require.NoError(b, err)
	require.Equal(b, rep.SpansSent, rep.SpansAcked)
	b.ReportMetric(rep.SpansPerSecond, "spans/s")
	b.ReportMetric(rep.ClientCPUCores, "client-cores")
}

// countingServer accepts everything without recording it, for benchmarks.
type countingServer struct {
	collectortracepb.UnimplementedTraceServiceServer
}

func (countingServer) Export(context.Context, *collectortracepb.ExportTraceServiceRequest) (*collectortracepb.ExportTraceServiceResponse, error) {
	return &collectortracepb.ExportTraceServiceResponse{}, nil
}
