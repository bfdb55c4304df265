package clockskew

import (
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

const sec = time.Second

func TestAdjust(t *testing.T) {
	tests := []struct {
		name    string
		cfg     func(*Config)
		rows    []row
		offsets map[Instance]time.Duration // applied offsets, exactly (nil: none)
		warn    []string                   // substrings that must each appear; nil: no warnings at all
		causal  bool                       // requireCausal holds afterwards
	}{
		{
			name: "correct trace is not touched (jaeger#1459)",
			rows: []row{
				{name: "root", inst: "web@h1", kind: srv, start: 0, end: 100 * ms, want: 0},
				{name: "call", parent: "root", inst: "web@h1", kind: cli, start: 5 * ms, end: 95 * ms, want: 5 * ms},
				{name: "api", parent: "call", inst: "api@h2", kind: srv, start: 7 * ms, end: 60 * ms, want: 7 * ms},
				{name: "work", parent: "api", inst: "api@h2", kind: inr, start: 8 * ms, end: 20 * ms, want: 8 * ms},
				{name: "q", parent: "api", inst: "api@h2", kind: cli, start: 21 * ms, end: 59 * ms, want: 21 * ms},
				{name: "db", parent: "q", inst: "db@h3", kind: srv, start: 22 * ms, end: 23 * ms, want: 22 * ms},
			},
			causal: true,
		},
		{
			name: "server host +2s, symmetric latency",
			rows: []row{
				{name: "root", inst: "web@h1", kind: srv, start: 0, end: 100 * ms, want: 0},
				{name: "call", parent: "root", inst: "web@h1", kind: cli, start: 10 * ms, end: 90 * ms, want: 10 * ms},
				{name: "api", parent: "call", inst: "bank-api@h7", kind: srv, start: 2*sec + 20*ms, end: 2*sec + 80*ms, want: 20 * ms},
				{name: "work", parent: "api", inst: "bank-api@h7", kind: inr, start: 2*sec + 30*ms, end: 2*sec + 70*ms, want: 30 * ms},
			},
			offsets: map[Instance]time.Duration{"bank-api@h7": -2 * sec},
			warn:    []string{"shifted 2 spans of instance bank-api@h7 by -2s"},
			causal:  true,
		},
		{
			name: "server host -2s, symmetric latency",
			rows: []row{
				{name: "root", inst: "web@h1", kind: srv, start: 0, end: 100 * ms, want: 0},
				{name: "call", parent: "root", inst: "web@h1", kind: cli, start: 10 * ms, end: 90 * ms, want: 10 * ms},
				{name: "api", parent: "call", inst: "api@h2", kind: srv, start: -2*sec + 20*ms, end: -2*sec + 80*ms, want: 20 * ms},
				{name: "work", parent: "api", inst: "api@h2", kind: inr, start: -2*sec + 30*ms, end: -2*sec + 70*ms, want: 30 * ms},
			},
			offsets: map[Instance]time.Duration{"api@h2": 2 * sec},
			warn:    []string{"by 2s"},
			causal:  true,
		},
		{
			name: "asymmetric latency, server fits off-centre: no shift",
			rows: []row{
				{name: "call", inst: "web@h1", kind: cli, start: 10 * ms, end: 90 * ms, want: 10 * ms},
				{name: "api", parent: "call", inst: "api@h2", kind: srv, start: 11 * ms, end: 40 * ms, want: 11 * ms},
			},
			causal: true,
		},
		{
			name: "multi-hop A→B→C, B +2s and C -3s",
			rows: []row{
				{name: "a", inst: "a@h1", kind: cli, start: 10 * ms, end: 90 * ms, want: 10 * ms},
				{name: "b", parent: "a", inst: "b@h2", kind: srv, start: 2*sec + 20*ms, end: 2*sec + 80*ms, want: 20 * ms},
				{name: "bc", parent: "b", inst: "b@h2", kind: cli, start: 2*sec + 30*ms, end: 2*sec + 70*ms, want: 30 * ms},
				{name: "c", parent: "bc", inst: "c@h3", kind: srv, start: -3*sec + 40*ms, end: -3*sec + 60*ms, want: 40 * ms},
				{name: "cw", parent: "c", inst: "c@h3", kind: inr, start: -3*sec + 41*ms, end: -3*sec + 42*ms, want: 41 * ms},
			},
			offsets: map[Instance]time.Duration{"b@h2": -2 * sec, "c@h3": 3 * sec},
			warn:    []string{"instance b@h2 by -2s", "instance c@h3 by 3s"},
			causal:  true,
		},
		{
			name: "two pairs into one instance: offset from the intersection",
			rows: []row{
				{name: "root", inst: "a@h1", kind: srv, start: 0, end: 100 * ms, want: 0},
				{name: "c1", parent: "root", inst: "a@h1", kind: cli, start: 10 * ms, end: 30 * ms, want: 10 * ms},
				{name: "s1", parent: "c1", inst: "b@h2", kind: srv, start: 2*sec + 11*ms, end: 2*sec + 27*ms, want: 12 * ms},
				{name: "c2", parent: "root", inst: "a@h1", kind: cli, start: 50 * ms, end: 90 * ms, want: 50 * ms},
				{name: "s2", parent: "c2", inst: "b@h2", kind: srv, start: 2*sec + 55*ms, end: 2*sec + 85*ms, want: 56 * ms},
			},
			// s1 allows [-2.001s, -1.997s], s2 allows [-2.005s, -1.995s]:
			// midpoint of the intersection is -1.999s.
			offsets: map[Instance]time.Duration{"b@h2": -1999 * ms},
			warn:    []string{"shifted 2 spans"},
			causal:  true,
		},
		{
			name: "pairs that disagree: median, with a warning",
			rows: []row{
				{name: "root", inst: "a@h1", kind: srv, start: 0, end: 100 * ms, want: 0},
				{name: "c1", parent: "root", inst: "a@h1", kind: cli, start: 10 * ms, end: 30 * ms, want: 10 * ms},
				{name: "s1", parent: "c1", inst: "b@h2", kind: srv, start: 2*sec + 15*ms, end: 2*sec + 25*ms, want: 515 * ms},
				{name: "c2", parent: "root", inst: "a@h1", kind: cli, start: 50 * ms, end: 90 * ms, want: 50 * ms},
				{name: "s2", parent: "c2", inst: "b@h2", kind: srv, start: 1*sec + 60*ms, end: 1*sec + 80*ms, want: -440 * ms},
			},
			offsets: map[Instance]time.Duration{"b@h2": -1500 * ms},
			warn:    []string{"2 RPC pairs into instance b@h2 disagree", "still start before their parent"},
		},
		{
			name: "fire-and-forget children outlive their parent: left alone",
			rows: []row{
				{name: "root", inst: "a@h1", kind: srv, start: 0, end: 50 * ms, want: 0},
				{name: "send", parent: "root", inst: "a@h1", kind: prod, start: 10 * ms, end: 12 * ms, want: 10 * ms},
				{name: "job", parent: "send", inst: "worker@h2", kind: cons, start: 20 * ms, end: 900 * ms, want: 20 * ms},
				{name: "bg", parent: "root", inst: "cron@h3", kind: inr, start: 30 * ms, end: 2 * sec, want: 30 * ms},
				{name: "oneway", parent: "root", inst: "a@h1", kind: cli, start: 40 * ms, end: 41 * ms, want: 40 * ms},
				{name: "async", parent: "oneway", inst: "log@h4", kind: srv, start: 45 * ms, end: 300 * ms, want: 45 * ms},
			},
			causal: true,
		},
		{
			name: "consumer before producer: shifted only to not precede it",
			rows: []row{
				{name: "root", inst: "a@h1", kind: srv, start: 0, end: 50 * ms, want: 0},
				{name: "send", parent: "root", inst: "a@h1", kind: prod, start: 10 * ms, end: 12 * ms, want: 10 * ms},
				{name: "job", parent: "send", inst: "worker@h2", kind: cons, start: -90 * ms, end: 100 * ms, want: 10 * ms},
			},
			offsets: map[Instance]time.Duration{"worker@h2": 100 * ms},
			warn:    []string{"shifted 1 spans of instance worker@h2 by 100ms"},
			causal:  true,
		},
		{
			name: "FOLLOWS_FROM child before its parent: only its start is bounded",
			rows: []row{
				{name: "root", inst: "a@h1", kind: srv, start: 0, end: 50 * ms, want: 0},
				{name: "call", parent: "root", inst: "a@h1", kind: cli, start: 10 * ms, end: 20 * ms, want: 10 * ms},
				{name: "later", parent: "call", inst: "b@h2", kind: srv, start: 5 * ms, end: 14 * ms, want: 10 * ms, links: []string{"ff:call"}},
			},
			offsets: map[Instance]time.Duration{"b@h2": 5 * ms},
			warn:    []string{"by 5ms"},
			causal:  true,
		},
		{
			name: "internal child on another host before its parent: start bounded",
			rows: []row{
				{name: "root", inst: "a@h1", kind: srv, start: 0, end: 50 * ms, want: 0},
				{name: "x", parent: "root", inst: "b@h2", kind: unset, start: -300 * ms, end: -290 * ms, want: 0},
			},
			offsets: map[Instance]time.Duration{"b@h2": 300 * ms},
			warn:    []string{"by 300ms"},
			causal:  true,
		},
		{
			name: "client timed out, server kept going: no shift",
			rows: []row{
				{name: "call", inst: "a@h1", kind: cli, start: 10 * ms, end: 50 * ms, want: 10 * ms, err: true},
				{name: "slow", parent: "call", inst: "b@h2", kind: srv, start: 30 * ms, end: 65 * ms, want: 30 * ms},
			},
			causal: true,
		},
		{
			name: "server longer than client, starting before it: aligned to its start",
			rows: []row{
				{name: "call", inst: "a@h1", kind: cli, start: 10 * ms, end: 20 * ms, want: 10 * ms},
				{name: "long", parent: "call", inst: "b@h2", kind: srv, start: 0, end: 30 * ms, want: 10 * ms},
			},
			offsets: map[Instance]time.Duration{"b@h2": 10 * ms},
			warn:    []string{"by 10ms"},
			causal:  true,
		},
		{
			name: "same instance: one clock, nothing to repair",
			rows: []row{
				{name: "call", inst: "a@h1", kind: cli, start: 10 * ms, end: 20 * ms, want: 10 * ms},
				{name: "loop", parent: "call", inst: "a@h1", kind: srv, start: 5 * ms, end: 25 * ms, want: 5 * ms},
			},
		},
		{
			name: "offset beyond max delta: reported, not applied",
			rows: []row{
				{name: "call", inst: "a@h1", kind: cli, start: 10 * ms, end: 90 * ms, want: 10 * ms},
				{name: "far", parent: "call", inst: "b@h2", kind: srv, start: 3*time.Hour + 20*ms, end: 3*time.Hour + 80*ms, want: 3*time.Hour + 20*ms},
			},
			warn: []string{"estimated offset -3h0m0s for instance b@h2 exceeds max delta 1h0m0s; not applied"},
		},
		{
			name: "max delta 0 disables adjustment",
			cfg:  func(c *Config) { c.MaxDelta = 0 },
			rows: []row{
				{name: "call", inst: "a@h1", kind: cli, start: 10 * ms, end: 90 * ms, want: 10 * ms},
				{name: "b", parent: "call", inst: "b@h2", kind: srv, start: 2*sec + 20*ms, end: 2*sec + 80*ms, want: 2*sec + 20*ms},
			},
		},
		{
			name: "missing parents are roots; the larger subtree is the reference",
			rows: []row{
				{name: "orphan", parent: "lost", inst: "b@h2", kind: srv, start: 2*sec + 20*ms, end: 2*sec + 30*ms, want: 20 * ms},
				{name: "root", inst: "a@h1", kind: srv, start: 0, end: 100 * ms, want: 0},
				{name: "call", parent: "root", inst: "a@h1", kind: cli, start: 40 * ms, end: 90 * ms, want: 40 * ms},
				{name: "b", parent: "call", inst: "b@h2", kind: srv, start: 2*sec + 50*ms, end: 2*sec + 80*ms, want: 50 * ms},
			},
			offsets: map[Instance]time.Duration{"b@h2": -2 * sec},
			warn:    []string{"shifted 2 spans of instance b@h2"},
			causal:  true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			tr := build(tc.rows)
			res := CorrectClockSkew(cfg).Adjust(tr)
			for i, r := range tc.rows {
				s := tr.Spans[i]
				require.Equal(t, r.want, rel(s.GetStartTimeUnixNano()), "start of %s", r.name)
				shiftBy := r.want - r.start
				require.Equal(t, r.end+shiftBy, rel(s.GetEndTimeUnixNano()), "end of %s", r.name)
				require.Equal(t, at(r.start+(r.end-r.start)/2+shiftBy), s.GetEvents()[0].GetTimeUnixNano(), "event of %s", r.name)
				got, ok := intAttr(s.Span, AttrClockSkew)
				require.Equal(t, shiftBy != 0, ok, "%s marked", r.name)
				require.Equal(t, int64(shiftBy), got, "%s offset attribute", r.name)
			}
			require.Equal(t, tc.offsets, res.Offsets)
			adjusted := 0
			for _, r := range tc.rows {
				if r.want != r.start {
					adjusted++
				}
			}
			require.Equal(t, adjusted, res.Adjusted)
			if tc.warn == nil {
				require.Empty(t, res.Warnings)
			}
			for _, w := range tc.warn {
				require.True(t, containsSub(res.Warnings, w), "want a warning containing %q, got %q", w, res.Warnings)
			}
			if tc.causal {
				requireCausal(t, tr)
			}
			requireLogicalOrder(t, tr, res)
		})
	}
}

func containsSub(ws []string, sub string) bool {
	for _, w := range ws {
		if strings.Contains(w, sub) {
			return true
		}
	}
	return false
}

// TestSymmetricSkewEstimate injects a range of skews, including ones that are
// not whole milliseconds, and requires the estimate within 1 ms.
func TestSymmetricSkewEstimate(t *testing.T) {
	for _, skew := range []time.Duration{2 * sec, -2 * sec, 1234567 * time.Microsecond, -37 * ms, 50*time.Minute + 3} {
		tr := build([]row{
			{name: "call", inst: "a@h1", kind: cli, start: 10 * ms, end: 90 * ms},
			{name: "s", parent: "call", inst: "b@h2", kind: srv, start: skew + 25*ms, end: skew + 75*ms},
		})
		res := CorrectClockSkew(DefaultConfig()).Adjust(tr)
		require.InDelta(t, float64(-skew), float64(res.Offsets["b@h2"]), float64(ms), "skew %v", skew)
		requireCausal(t, tr)
	}
}

func TestRawRoundTripAndIdempotence(t *testing.T) {
	rows := []row{
		{name: "a", inst: "a@h1", kind: cli, start: 10 * ms, end: 90 * ms},
		{name: "b", parent: "a", inst: "b@h2", kind: srv, start: 2*sec + 20*ms, end: 2*sec + 80*ms},
		{name: "bc", parent: "b", inst: "b@h2", kind: cli, start: 2*sec + 30*ms, end: 2*sec + 70*ms},
		{name: "c", parent: "bc", inst: "c@h3", kind: srv, start: -3*sec + 40*ms, end: -3*sec + 60*ms, links: []string{"a"}},
	}
	orig := build(rows)
	tr := build(rows)
	adj := CorrectClockSkew(DefaultConfig())
	first := adj.Adjust(tr)
	require.Equal(t, 3, first.Adjusted)
	once := cloneSpans(tr)

	// Adjusting an adjusted trace re-estimates from the original times.
	second := adj.Adjust(tr)
	require.Equal(t, first.Offsets, second.Offsets)
	require.Equal(t, first.LogicalTimes, second.LogicalTimes)
	for i := range tr.Spans {
		require.True(t, proto.Equal(once[i], tr.Spans[i].Span), "span %d differs after a second Adjust", i)
	}

	Raw(tr)
	for i := range tr.Spans {
		require.True(t, proto.Equal(orig.Spans[i].Span, tr.Spans[i].Span), "span %d: %v != %v", i, orig.Spans[i].Span, tr.Spans[i].Span)
	}
}

func cloneSpans(tr *span.Trace) []*tracepb.Span {
	out := make([]*tracepb.Span, len(tr.Spans))
	for i, s := range tr.Spans {
		out[i] = proto.Clone(s.Span).(*tracepb.Span)
	}
	return out
}

func TestInstanceOf(t *testing.T) {
	tests := []struct {
		attrs [][2]string
		want  Instance
	}{
		{[][2]string{{"service.name", "pay"}, {"host.name", "h"}, {"service.instance.id", "i-1"}}, "pay@i-1"},
		{[][2]string{{"k8s.pod.uid", "u"}, {"host.name", "h"}, {"service.name", "pay"}, {"host.id", "hid"}}, "pay@hid"},
		{[][2]string{{"k8s.pod.uid", "u"}, {"host.name", "h"}, {"service.name", "pay"}}, "pay@h"},
		{[][2]string{{"k8s.pod.uid", "u"}, {"service.name", "pay"}}, "pay@u"},
		{[][2]string{{"service.name", "pay"}, {"host.name", ""}}, "pay"},
		{nil, "unknown_service"},
	}
	for _, tc := range tests {
		r := resourceFor("")
		r.Resource.Attributes = nil
		for _, kv := range tc.attrs {
			r.Resource.Attributes = append(r.Resource.Attributes, strAttr(kv[0], kv[1]))
		}
		require.Equal(t, tc.want, InstanceOf(r))
	}
	require.Equal(t, Instance("unknown_service"), InstanceOf(nil))
}

// TestInstanceSameName: small trees group spans by instKey.sameName, which
// must agree with comparing the joined names, also where different parts
// join to the same name ("a@b"+"c" and "a"+"b@c").
func TestInstanceSameName(t *testing.T) {
	parts := []string{"", "a", "b", "@", "a@", "@b", "a@b", "ab"}
	for _, s1 := range parts[1:] { // service names are never empty
		for _, i1 := range parts {
			for _, s2 := range parts[1:] {
				for _, i2 := range parts {
					k, o := instKey{s1, i1}, instKey{s2, i2}
					require.Equal(t, k.name() == o.name(), k.sameName(o), "%q %q", k.name(), o.name())
				}
			}
		}
	}
}

func TestConfig(t *testing.T) {
	cfg := DefaultConfig()
	require.Equal(t, time.Hour, cfg.MaxDelta)
	require.NoError(t, cfg.Validate())
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	require.NoError(t, fs.Parse([]string{"-clockskew.max-delta=-1s"}))
	require.Equal(t, -time.Second, cfg.MaxDelta)
	require.ErrorContains(t, cfg.Validate(), "must not be negative")
}

func TestEmptyTrace(t *testing.T) {
	res := CorrectClockSkew(DefaultConfig()).Adjust(&span.Trace{})
	require.Empty(t, res.Warnings)
	require.Empty(t, res.LogicalTimes)
	require.Zero(t, res.Adjusted)
}

// TestWireKeptOnlyForAppendedAttributes: Adjust leaves span.Span.Wire on
// spans it only stamps with a logical time (an appended attribute) and
// clears it on spans it shifts or whose stamps it replaces, so the store
// never copies an encoding that no longer matches the span.
func TestWireKeptOnlyForAppendedAttributes(t *testing.T) {
	rows := []row{
		{name: "a", inst: "a@h1", kind: cli, start: 10 * ms, end: 90 * ms},
		{name: "b", parent: "a", inst: "b@h2", kind: srv, start: 2*sec + 20*ms, end: 2*sec + 80*ms},
		{name: "bc", parent: "b", inst: "b@h2", kind: cli, start: 2*sec + 30*ms, end: 2*sec + 70*ms},
	}
	tr := build(rows)
	for i := range tr.Spans {
		tr.Spans[i].Wire = []byte{1}
	}
	adj := CorrectClockSkew(DefaultConfig())
	res := adj.Adjust(tr)
	require.Equal(t, 2, res.Adjusted)
	require.NotNil(t, tr.Spans[0].Wire, "a span only stamped keeps its encoding")
	require.Nil(t, tr.Spans[1].Wire, "a shifted span drops it")
	require.Nil(t, tr.Spans[2].Wire)

	// A second Adjust strips and replaces the stamps.
	tr.Spans[0].Wire = []byte{1}
	adj.Adjust(tr)
	require.Nil(t, tr.Spans[0].Wire)
}

// lazilyDecoded encodes a trace as a record and decodes it the way the
// indexer does, with the span attributes deferred in the wire.
func lazilyDecoded(t *testing.T, tr *span.Trace) *span.Trace {
	t.Helper()
	data, err := proto.Marshal(span.ToTracesData(tr.Spans))
	require.NoError(t, err)
	var dec span.Decoder
	spans, err := dec.DecodeTracesLazy(data)
	require.NoError(t, err)
	return &span.Trace{ID: tr.ID, Spans: spans}
}

// TestAdjustDeferredAttributes: adjusting spans whose attributes are still
// in the wire gives the spans adjusting decoded ones does — also for spans
// received with the stamps of an earlier Adjust, which must be found and
// replaced — and leaves unshifted spans' attributes undecoded.
func TestAdjustDeferredAttributes(t *testing.T) {
	for _, k := range []string{AttrClockSkew, AttrLogicalTime} {
		require.True(t, strings.HasPrefix(k, span.ReservedAttrPrefix), "%s is never deferred", k)
	}
	rows := []row{
		{name: "a", inst: "a@h1", kind: cli, start: 10 * ms, end: 90 * ms},
		{name: "b", parent: "a", inst: "b@h2", kind: srv, start: 2*sec + 20*ms, end: 2*sec + 80*ms},
		{name: "bc", parent: "b", inst: "b@h2", kind: cli, start: 2*sec + 30*ms, end: 2*sec + 70*ms},
		{name: "d", parent: "a", inst: "a@h1", kind: inr, start: 20 * ms, end: 30 * ms},
	}
	adj := CorrectClockSkew(DefaultConfig())
	want := build(rows)
	adj.Adjust(want)
	byName := map[string]*tracepb.Span{}
	for _, s := range want.Spans {
		byName[s.Name] = s.Span
	}
	requireAsWanted := func(tr *span.Trace) {
		t.Helper()
		require.Len(t, tr.Spans, len(want.Spans))
		for _, s := range tr.Spans {
			s.DecodeAttrs()
			require.True(t, proto.Equal(byName[s.Name], s.Span), "span %s:\nwant %v\n got %v", s.Name, byName[s.Name], s.Span)
		}
	}

	lazy := lazilyDecoded(t, build(rows))
	adj.Adjust(lazy)
	for _, s := range lazy.Spans {
		_, shifted := intAttr(byName[s.Name], AttrClockSkew)
		require.Equal(t, !shifted, s.AttrsDeferred(), "span %s: only a shifted span is decoded", s.Name)
	}
	requireAsWanted(lazy)

	// The adjusted trace sent again carries the stamps in its wire.
	again := lazilyDecoded(t, want)
	adj.Adjust(again)
	requireAsWanted(again)
}
