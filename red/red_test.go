package red

import (
	"context"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"

	"github.com/threadline/threadline/span"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv("RED_CRASH_CHILD"); dir != "" {
		crashChild(dir)
		return
	}
	goleak.VerifyTestMain(m)
}

// t0 is a whole multiple of every bucket width used here.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func resource(svc string) *span.Resource {
	return &span.Resource{Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{
		Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: svc}},
	}}}}
}

// traffic is a generated set of traces and the exact RED numbers they imply.
type traffic struct {
	traces []*span.Trace
	// kept are the traces a tail sampler would keep (errors and a few slow).
	kept map[span.TraceID]bool
	// per (service, operation) and per 10 s bucket.
	count, errs map[[2]string]uint64
	perBucket   map[int64]uint64
	durs        []time.Duration
}

var (
	services = []string{"frontend", "checkout", "payments"}
	ops      = []string{"GET /", "POST /pay", "db.query", "render"}
)

// genTraffic builds n traces of 1–8 spans over a minute starting at t0,
// with log-uniform durations from 0.2 ms to 30 s and about 7% errors.
func genTraffic(n int, seed uint64) *traffic {
	r := rand.New(rand.NewPCG(seed, seed^0x9e37))
	res := map[string]*span.Resource{}
	for _, s := range services {
		res[s] = resource(s)
	}
	tr := &traffic{kept: map[span.TraceID]bool{}, count: map[[2]string]uint64{}, errs: map[[2]string]uint64{}, perBucket: map[int64]uint64{}}
	for i := range n {
		var id span.TraceID
		id[0], id[1], id[2], id[15] = byte(i>>16), byte(i>>8), byte(i), 1
		t := &span.Trace{ID: id}
		hasErr := false
		for j := range 1 + r.IntN(8) {
			svc, op := services[r.IntN(len(services))], ops[r.IntN(len(ops))]
			start := t0.Add(time.Duration(r.Int64N(int64(time.Minute))))
			dur := time.Duration(math.Exp(math.Log(0.2e6) + r.Float64()*(math.Log(30e9)-math.Log(0.2e6))))
			code := tracepb.Status_STATUS_CODE_UNSET
			if r.IntN(100) < 7 {
				code, hasErr = tracepb.Status_STATUS_CODE_ERROR, true
			}
			sp := &tracepb.Span{
				TraceId: id[:], SpanId: []byte{7: byte(j + 1), 0: byte(i)}, Name: op, Kind: tracepb.Span_SPAN_KIND_SERVER,
				StartTimeUnixNano: uint64(start.UnixNano()), EndTimeUnixNano: uint64(start.Add(dur).UnixNano()),
				Status: &tracepb.Status{Code: code},
			}
			t.Spans = append(t.Spans, span.Span{Span: sp, Resource: res[svc]})
			k := [2]string{svc, op}
			tr.count[k]++
			if code == tracepb.Status_STATUS_CODE_ERROR {
				tr.errs[k]++
			}
			tr.perBucket[start.UnixNano()/int64(10*time.Second)]++
			tr.durs = append(tr.durs, dur)
		}
		if hasErr || i%50 == 0 {
			tr.kept[id] = true
		}
		tr.traces = append(tr.traces, t)
	}
	return tr
}

func (tr *traffic) total() (n, errs uint64) {
	for k, c := range tr.count {
		n += c
		errs += tr.errs[k]
	}
	return n, errs
}

func testOptions() Options {
	o := DefaultOptions()
	o.FlushInterval = 20 * time.Millisecond
	return o
}

func open(t *testing.T, dir string, o Options) *Store {
	t.Helper()
	s, err := Open(dir, nil, nil, o)
	require.NoError(t, err)
	return s
}

// observeAll feeds every trace and links the kept ones, as the indexer does.
func observeAll(s *Store, tr *traffic) {
	for _, t := range tr.traces {
		s.Observe(t)
		if tr.kept[t.ID] {
			s.Link(t.ID, []string{"error"})
		}
	}
}

// requireExact checks the stored counts against the generated traffic.
func requireExact(t *testing.T, s *Store, tr *traffic) {
	t.Helper()
	ctx := context.Background()
	wantN, wantErr := tr.total()
	all, err := s.Query(ctx, "", "", t0, t0.Add(2*time.Minute), 2*time.Minute)
	require.NoError(t, err)
	require.Len(t, all.Points, 1)
	require.Equal(t, wantN, all.Points[0].Count)
	require.Equal(t, wantErr, all.Points[0].Errors)
	for k, c := range tr.count {
		res, err := s.Query(ctx, k[0], k[1], t0, t0.Add(2*time.Minute), 2*time.Minute)
		require.NoError(t, err)
		require.Equal(t, c, res.Points[0].Count, "%v", k)
		require.Equal(t, tr.errs[k], res.Points[0].Errors, "%v", k)
	}
	steps, err := s.Query(ctx, "", "", t0, t0.Add(time.Minute), 10*time.Second)
	require.NoError(t, err)
	require.Len(t, steps.Points, 6)
	for _, p := range steps.Points {
		require.Equal(t, tr.perBucket[p.Start.UnixNano()/int64(10*time.Second)], p.Count, "step %s", p.Start)
	}
}

func TestExactCountsIncludeDroppedTraces(t *testing.T) {
	tr := genTraffic(3000, 1)
	s := open(t, t.TempDir(), testOptions())
	defer func() { require.NoError(t, s.Close()) }()
	observeAll(s, tr)
	require.NoError(t, s.Flush(context.Background()))
	requireExact(t, s, tr)

	// Linked trace IDs: only kept traces, errors first then slowest, capped.
	res, err := s.Query(context.Background(), "", "", t0, t0.Add(time.Minute), 10*time.Second)
	require.NoError(t, err)
	for _, p := range res.Points {
		require.NotEmpty(t, p.Traces)
		require.LessOrEqual(t, len(p.Traces), 20)
		for i, ref := range p.Traces {
			require.True(t, tr.kept[ref.ID], "dropped trace %s linked", ref.ID)
			if i > 0 {
				prev := p.Traces[i-1]
				require.True(t, prev.Error && !ref.Error || prev.Error == ref.Error && prev.Duration >= ref.Duration, "order at %d", i)
			}
		}
		require.True(t, p.Traces[0].Error)
	}

	// Cumulative totals match and carry exemplars of kept traces only.
	_, totals := s.Totals()
	var n uint64
	exemplars := 0
	for _, st := range totals {
		n += st.Count
		for _, e := range st.Exemplars {
			if e != nil {
				exemplars++
				require.True(t, tr.kept[e.TraceID])
			}
		}
	}
	wantN, _ := tr.total()
	require.Equal(t, wantN, n)
	require.Positive(t, exemplars)
}

func TestQuantileWithinBound(t *testing.T) {
	tr := genTraffic(4000, 2)
	s := open(t, t.TempDir(), testOptions())
	defer func() { require.NoError(t, s.Close()) }()
	observeAll(s, tr)
	require.NoError(t, s.Flush(context.Background()))
	res, err := s.Query(context.Background(), "", "", t0, t0.Add(time.Minute), time.Minute)
	require.NoError(t, err)
	sorted := slices.Clone(tr.durs)
	slices.Sort(sorted)
	for _, q := range []float64{0.5, 0.9, 0.99} {
		truth := sorted[int(math.Ceil(q*float64(len(sorted))))-1]
		got := res.Points[0].Quantile(q)
		require.GreaterOrEqual(t, float64(got), float64(truth)/BucketFactor, "q%v got %s true %s", q, got, truth)
		require.LessOrEqual(t, float64(got), float64(truth)*BucketFactor, "q%v got %s true %s", q, got, truth)
	}
}

func TestQuantile(t *testing.T) {
	f := func(durs []time.Duration, q float64) {
		t.Helper()
		var h [NumBuckets]uint64
		for _, d := range durs {
			h[bucketOf(d)]++
		}
		got := Quantile(h[:], q)
		s := slices.Clone(durs)
		slices.Sort(s)
		truth := s[int(math.Ceil(q*float64(len(s))))-1]
		if truth < time.Millisecond {
			require.InDelta(t, float64(truth), float64(got), float64(time.Millisecond))
			return
		}
		if truth > Bounds()[len(Bounds())-1] {
			require.Equal(t, Bounds()[len(Bounds())-1], got)
			return
		}
		require.InEpsilon(t, float64(truth), float64(got), BucketFactor-1, "got %s true %s", got, truth)
	}
	f([]time.Duration{5 * time.Millisecond}, 0.5)
	f([]time.Duration{500 * time.Microsecond, 700 * time.Microsecond}, 0.99)
	f([]time.Duration{time.Millisecond, time.Second, time.Minute}, 0.5)
	f([]time.Duration{2 * time.Minute, 3 * time.Minute}, 0.9)
	f([]time.Duration{10 * time.Millisecond, 10 * time.Millisecond, 11 * time.Millisecond, 12 * time.Millisecond}, 0.5)
	require.Zero(t, Quantile(make([]uint64, NumBuckets), 0.5))
	require.Len(t, Bounds(), NumBuckets-1)
	require.Equal(t, time.Millisecond, Bounds()[0])
	require.Greater(t, Bounds()[len(Bounds())-1], time.Minute)
}

// crash stops the store the way kill -9 would: nothing pending is flushed.
func crash(t *testing.T, s *Store) {
	t.Helper()
	close(s.stop)
	s.wg.Wait()
	require.NoError(t, s.db.Close())
}

// records names the two Kafka records that carried trace i of some
// traffic: the first half of its spans and the rest, on one of three
// partitions.
func records(i int, tc *span.Trace) (head, tail Part) {
	h := len(tc.Spans) / 2
	p, off := int32(i%3), int64(2*(i/3))
	head = Part{Topic: "otlp_spans", Partition: p, Offset: off, Of: 1, Spans: h}
	tail = Part{Topic: "otlp_spans", Partition: p, Offset: off + 1, Of: 1, Spans: len(tc.Spans) - h}
	return head, tail
}

// observeRecords observes traces [from, to) whole, naming both records.
func observeRecords(s *Store, tr *traffic, from, to int) {
	for i := from; i < to; i++ {
		tc := tr.traces[i]
		head, tail := records(i, tc)
		s.ObserveDurable(tc, []Part{head, tail}, nil)
		if tr.kept[tc.ID] {
			s.Link(tc.ID, []string{"error"})
		}
	}
}

// observeHead observes the first record of trace i alone, as an indexer
// that decided the trace before its second record arrived.
func observeHead(s *Store, tr *traffic, i int) {
	tc := tr.traces[i]
	head, _ := records(i, tc)
	s.ObserveDurable(&span.Trace{ID: tc.ID, Spans: tc.Spans[:head.Spans]}, []Part{head}, nil)
}

func observeTail(s *Store, tr *traffic, i int) {
	tc := tr.traces[i]
	head, tail := records(i, tc)
	s.ObserveDurable(&span.Trace{ID: tc.ID, Spans: tc.Spans[head.Spans:]}, []Part{tail}, nil)
}

func TestReplayIsIdempotent(t *testing.T) {
	tr := genTraffic(2000, 3)
	dir := t.TempDir()
	o := testOptions()
	o.FlushInterval = time.Hour // flush only when told
	s := open(t, dir, o)
	half := len(tr.traces) / 2
	observeRecords(s, tr, 0, half-100)
	// Decided before their second records came: only the first is counted.
	for i := half - 100; i < half; i++ {
		observeHead(s, tr, i)
	}
	require.NoError(t, s.Flush(context.Background()))
	// Observed but never flushed: lost in the crash, so they must be replayed.
	observeRecords(s, tr, half, half+300)
	crash(t, s)

	// Kafka replays from the last commit: everything after some earlier
	// point, assembled differently — second records alone, then whole traces.
	s = open(t, dir, o)
	for i := half - 300; i < half; i++ {
		observeTail(s, tr, i)
	}
	observeRecords(s, tr, half-400, len(tr.traces))
	require.NoError(t, s.Close())

	s = open(t, dir, o)
	defer func() { require.NoError(t, s.Close()) }()
	requireExact(t, s, tr)
	// A second full replay after a clean restart changes nothing either.
	observeRecords(s, tr, 0, len(tr.traces))
	require.NoError(t, s.Flush(context.Background()))
	requireExact(t, s, tr)
}

func TestCommittedOffsetsAreForgotten(t *testing.T) {
	tr := genTraffic(40, 5)
	dir := t.TempDir()
	o := testOptions()
	o.FlushInterval = time.Hour
	s := open(t, dir, o)
	// Partition 0 holds traces 0, 3, 6, … at offsets 0–1, 2–3, 4–5, …; leave
	// out trace 9 (offsets 6 and 7), as if it were still undecided.
	for i := 0; i < len(tr.traces); i += 3 {
		if i != 9 {
			observeRecords(s, tr, i, i+1)
		}
	}
	require.NoError(t, s.Flush(context.Background()))
	tp := topicPartition{"otlp_spans", 0}
	stored := func() *countedSet {
		t.Helper()
		var c *countedSet
		require.NoError(t, s.db.View(func(txn *badger.Txn) error {
			item, err := txn.Get(countedKey(tp))
			if err != nil {
				return err
			}
			return item.Value(func(v []byte) (err error) { c, err = decodeCounted(v); return err })
		}))
		return c
	}
	last := int64(2 * ((len(tr.traces) - 1) / 3))
	require.Equal(t, &countedSet{floor: 6, ranges: []offsetRange{{8, last + 2}}}, stored())

	// Once offset 8 is committed, the gap below it is never replayed: the
	// set shrinks to its floor at the next flush that touches the partition.
	s.Committed("otlp_spans", 0, 8)
	observeRecords(s, tr, len(tr.traces)-1, len(tr.traces)) // replayed, skipped
	require.NoError(t, s.Flush(context.Background()))
	require.Equal(t, &countedSet{committed: 8, floor: last + 2}, stored())
	require.NoError(t, s.Close())

	s = open(t, dir, o)
	defer func() { require.NoError(t, s.Close()) }()
	replayed := 0
	for i := 0; i < len(tr.traces); i += 3 { // all below the floor now
		observeRecords(s, tr, i, i+1)
		replayed += len(tr.traces[i].Spans)
	}
	require.NoError(t, s.Flush(context.Background()))
	require.Equal(t, float64(0), counterValue(t, s.m.spans.WithLabelValues("counted")))
	require.Equal(t, float64(replayed), counterValue(t, s.m.spans.WithLabelValues("duplicate")))

	// The topic is recreated: offsets start over, and a commit below the
	// last one says so. Records at the old offsets are new records now.
	s.Committed("otlp_spans", 0, 2)
	observeRecords(s, tr, 3, 4) // offsets 2 and 3
	require.NoError(t, s.Flush(context.Background()))
	require.Equal(t, float64(len(tr.traces[3].Spans)), counterValue(t, s.m.spans.WithLabelValues("counted")))
	require.Equal(t, float64(1), counterValue(t, s.m.offsetResets))
	require.Equal(t, &countedSet{committed: 2, floor: 4}, stored())
}

func TestCountedSetMatchesModel(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for round := range 200 {
		c := &countedSet{}
		model := map[[2]int64]bool{} // (offset, part) counted
		parts := map[int64]int{}     // offset → parts of that record
		floor := int64(0)
		for range 300 {
			o := r.Int64N(200)
			if _, ok := parts[o]; !ok {
				parts[o] = 1 + r.IntN(3)*r.IntN(2)*40 // mostly whole records, some of up to 81 parts
			}
			p := Part{Offset: o, Of: parts[o], Index: r.IntN(parts[o])}
			want := o < floor || model[[2]int64{o, int64(p.Index)}]
			require.Equal(t, want, c.has(p), "round %d: has(%d/%d)", round, o, p.Index)
			if !want {
				c.add(p)
				model[[2]int64{o, int64(p.Index)}] = true
			}
			if r.IntN(50) == 0 {
				floor = max(floor, r.Int64N(100))
				c.raise(floor)
			}
			// The encoding round-trips, and the floor only ever names
			// counted records.
			d, err := decodeCounted(c.appendTo(nil))
			require.NoError(t, err)
			require.Equal(t, c.appendTo(nil), d.appendTo(nil))
			for o := floor; o < c.floor; o++ {
				for i := range parts[o] {
					require.True(t, model[[2]int64{o, int64(i)}], "floor %d passed uncounted %d/%d", c.floor, o, i)
				}
			}
		}
	}
}

func FuzzDecodeCounted(f *testing.F) {
	c := &countedSet{}
	for _, o := range []int64{3, 4, 9, 1 << 40} {
		c.add(Part{Offset: o, Of: 1})
	}
	c.add(Part{Offset: 20, Index: 70, Of: 100})
	f.Add(c.appendTo(nil))
	f.Add([]byte{1, 0, 0, 0})
	f.Add([]byte{1, 0, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, v []byte) {
		c, err := decodeCounted(v)
		if err != nil {
			require.ErrorIs(t, err, errCorrupt)
			return
		}
		// What decodes encodes again to something that decodes the same.
		d, err := decodeCounted(c.appendTo(nil))
		require.NoError(t, err)
		require.Equal(t, c.appendTo(nil), d.appendTo(nil))
	})
}

// crashChild runs in a child process: it observes the traffic with a fast
// flusher until the parent kills it with SIGKILL.
func crashChild(dir string) {
	o := testOptions()
	o.FlushInterval = 5 * time.Millisecond
	s, err := Open(dir, nil, nil, o)
	if err != nil {
		os.Exit(2)
	}
	tr := genTraffic(3000, 4)
	for i := range tr.traces {
		observeRecords(s, tr, i, i+1)
		if i%100 == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		if i == 500 {
			_ = os.WriteFile(dir+".started", nil, 0o600)
		}
	}
	select {} // wait for the kill
}

func TestKill9ThenReplay(t *testing.T) {
	dir := t.TempDir() + "/red"
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "RED_CRASH_CHILD="+dir)
	require.NoError(t, cmd.Start())
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(dir + ".started"); err == nil {
			break
		}
		require.True(t, time.Now().Before(deadline), "child did not start")
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(30 * time.Millisecond) // mid-stream, mid-flush
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()

	tr := genTraffic(3000, 4)
	reg := prometheus.NewRegistry()
	s, err := Open(dir, nil, reg, testOptions())
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close()) }()
	// Part was counted before the kill; the replay covers all of it.
	before, err := s.Query(context.Background(), "", "", t0, t0.Add(2*time.Minute), 2*time.Minute)
	require.NoError(t, err)
	wantN, _ := tr.total()
	require.Positive(t, before.Points[0].Count)
	require.Less(t, before.Points[0].Count, wantN)
	observeRecords(s, tr, 0, len(tr.traces))
	require.NoError(t, s.Flush(context.Background()))
	requireExact(t, s, tr)
	require.Equal(t, float64(before.Points[0].Count), counterValue(t, s.m.spans.WithLabelValues("duplicate")))
}

func TestRetention(t *testing.T) {
	o := testOptions()
	// Long enough that the first queries run well inside it on a loaded
	// CI machine (one second was not, under -race beside other packages).
	o.Retention = 4 * time.Second
	s := open(t, t.TempDir(), o)
	defer func() { require.NoError(t, s.Close()) }()
	tr := genTraffic(50, 5)
	written := time.Now()
	observeAll(s, tr)
	require.NoError(t, s.Flush(context.Background()))
	q := func() Point {
		res, err := s.Query(context.Background(), "", "", t0, t0.Add(time.Minute), time.Minute)
		require.NoError(t, err)
		return res.Points[0]
	}
	require.Positive(t, q().Count)
	require.NotEmpty(t, q().Traces)
	time.Sleep(time.Until(written.Add(o.Retention + 1100*time.Millisecond)))
	require.Zero(t, q().Count)
	require.Empty(t, q().Traces)
}

func TestCardinalityOverflow(t *testing.T) {
	o := testOptions()
	o.MaxSeriesPerBucket = 3
	reg := prometheus.NewRegistry()
	s, err := Open(t.TempDir(), nil, reg, o)
	require.NoError(t, err)
	defer func() { require.NoError(t, s.Close()) }()
	res := resource("svc")
	for i := range 10 {
		id := span.TraceID{15: byte(i + 1)}
		s.Observe(&span.Trace{ID: id, Spans: []span.Span{{Resource: res, Span: &tracepb.Span{
			TraceId: id[:], SpanId: []byte{7: 1}, Name: string(rune('a' + i)),
			StartTimeUnixNano: uint64(t0.UnixNano()), EndTimeUnixNano: uint64(t0.Add(time.Millisecond).UnixNano()),
		}}}})
	}
	require.NoError(t, s.Flush(context.Background()))
	all, err := s.Query(context.Background(), "svc", "", t0, t0.Add(10*time.Second), 0)
	require.NoError(t, err)
	require.Equal(t, uint64(10), all.Points[0].Count)
	other, err := s.Query(context.Background(), "svc", OtherOperation, t0, t0.Add(10*time.Second), 0)
	require.NoError(t, err)
	require.Equal(t, uint64(7), other.Points[0].Count)
	require.Equal(t, 7.0, counterValue(t, s.m.overflow))
	_, totals := s.Totals()
	require.Len(t, totals, 4)
}

func TestReopenWithOtherWidthFails(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, testOptions())
	require.NoError(t, s.Close())
	o := testOptions()
	o.BucketWidth = time.Minute
	_, err := Open(dir, nil, nil, o)
	require.ErrorContains(t, err, "bucket width")
}

func TestBadQueries(t *testing.T) {
	s := open(t, t.TempDir(), testOptions())
	defer func() { require.NoError(t, s.Close()) }()
	for _, c := range []struct {
		start, end time.Time
		step       time.Duration
	}{
		{t0, t0, 0},
		{t0.Add(time.Hour), t0, 0},
		{t0, t0.Add(time.Hour), -time.Second},
		{t0, t0.Add(1000 * time.Hour), 10 * time.Second},
	} {
		_, err := s.Query(context.Background(), "", "", c.start, c.end, c.step)
		require.ErrorIs(t, err, ErrBadQuery)
	}
	// Steps round up to whole buckets and start aligns down.
	res, err := s.Query(context.Background(), "", "", t0.Add(3*time.Second), t0.Add(time.Minute), 15*time.Second)
	require.NoError(t, err)
	require.Equal(t, 20*time.Second, res.Step)
	require.Equal(t, t0, res.Start.UTC())
	require.Len(t, res.Points, 3)
}

func TestValidate(t *testing.T) {
	require.NoError(t, DefaultOptions().Validate())
	bad := DefaultOptions()
	bad.BucketWidth = 1500 * time.Millisecond
	bad.MaxSeriesPerBucket = 0
	err := bad.Validate()
	require.ErrorContains(t, err, "bucket width")
	require.ErrorContains(t, err, "max series")
}

func TestLinkBounds(t *testing.T) {
	o := testOptions()
	o.MaxTracesAwaitingLink = 2
	o.MaxTraceIDsPerSeries = 3
	s := open(t, t.TempDir(), o)
	defer func() { require.NoError(t, s.Close()) }()
	res := resource("svc")
	var ids []span.TraceID
	for i := range 6 {
		id := span.TraceID{15: byte(i + 1)}
		ids = append(ids, id)
		s.Observe(&span.Trace{ID: id, Spans: []span.Span{{Resource: res, Span: &tracepb.Span{
			TraceId: id[:], SpanId: []byte{7: 1}, Name: "op",
			StartTimeUnixNano: uint64(t0.UnixNano()), EndTimeUnixNano: uint64(t0.Add(time.Duration(i+1) * time.Millisecond).UnixNano()),
		}}}})
		s.Link(id, nil)
		require.NoError(t, s.Flush(context.Background()))
	}
	// A trace forgotten before its Link is not linked.
	s.Observe(&span.Trace{ID: span.TraceID{15: 99}, Spans: []span.Span{{Resource: res, Span: &tracepb.Span{SpanId: []byte{7: 1}, Name: "op", StartTimeUnixNano: uint64(t0.UnixNano())}}}})
	s.Observe(&span.Trace{ID: span.TraceID{15: 98}})
	s.Observe(&span.Trace{ID: span.TraceID{15: 97}})
	s.Link(span.TraceID{15: 99}, nil)
	require.Equal(t, 1.0, counterValue(t, s.m.links.WithLabelValues("missed")))
	require.NoError(t, s.Flush(context.Background()))
	q, err := s.Query(context.Background(), "svc", "op", t0, t0.Add(10*time.Second), 0)
	require.NoError(t, err)
	var got []span.TraceID
	for _, r := range q.Points[0].Traces {
		got = append(got, r.ID)
	}
	// The three slowest of six, slowest first; evicted links were deleted.
	require.Equal(t, []span.TraceID{ids[5], ids[4], ids[3]}, got)
	n := 0
	require.NoError(t, scanAllLinks(s, func() { n++ }))
	require.Equal(t, 3, n)
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}

func scanAllLinks(s *Store, fn func()) error {
	txn := s.db.NewTransaction(false)
	defer txn.Discard()
	return scan(context.Background(), txn, prefixLink, 0, math.MaxInt64, func(int64, Series, []byte, []byte) error { fn(); return nil })
}

func FuzzDecode(f *testing.F) {
	a := agg{count: 3, errors: 1, sum: 12345}
	a.hist[2] = 3
	f.Add(a.appendTo(nil))
	f.Add(rowKey(10, Series{Service: "s", Operation: "o"}))
	f.Add(linkRef{err: true, dur: 99}.value())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var x agg
		if decodeAgg(b, &x) == nil {
			require.Equal(t, b, x.appendTo(nil))
		}
		if bucket, sr, rest, err := decodeRowKey(b); err == nil {
			k := rowKey(bucket, sr)
			require.Equal(t, b[:len(b)-len(rest)][1:], k[1:])
		}
		_, _ = decodeLink(make([]byte, 16), b)
	})
}

func BenchmarkObserve(b *testing.B) {
	tr := genTraffic(2000, 6)
	var spans int
	for _, t := range tr.traces {
		spans += len(t.Spans)
	}
	s, err := Open(b.TempDir(), nil, nil, DefaultOptions())
	require.NoError(b, err)
	defer func() { require.NoError(b, s.Close()) }()
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime(b)
	n := 0
	for i := 0; b.Loop(); i++ {
		t := tr.traces[i%len(tr.traces)]
		// A fresh trace ID each round so de-duplication does not skip it.
		id := t.ID
		id[14] = byte(i / len(tr.traces))
		id[13] = byte(i / len(tr.traces) >> 8)
		s.Observe(&span.Trace{ID: id, Spans: t.Spans})
		n += len(t.Spans)
	}
	require.NoError(b, s.Flush(context.Background()))
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "spans/s")
	b.ReportMetric(float64(cpuTime(b)-cpu)/float64(b.N), "cpu-ns/op")
}

// TestObservationSplit splits observations down to what cannot be split:
// every span ends up in exactly one piece, every record marked in exactly
// one, and a piece's records never name more spans than it has.
func TestObservationSplit(t *testing.T) {
	for _, tc := range []struct {
		spans int
		parts []int
	}{
		{7, nil}, {7, []int{3, 4}}, {7, []int{5}}, {6, []int{6}}, {5, []int{0, 5}},
		{5, []int{5, 0}}, {1, []int{1}}, {0, []int{0}}, {40, []int{9, 0, 1, 20}},
	} {
		o := observation{spans: make([]spanObs, tc.spans), done: func() {}}
		for i, n := range tc.parts {
			o.parts = append(o.parts, Part{Offset: int64(i), Of: 1, Spans: n})
		}
		var leaves []observation
		var walk func(o observation, depth int)
		walk = func(o observation, depth int) {
			require.Less(t, depth, 64, "%v: no progress", tc)
			first, second, ok := o.split()
			if !ok {
				leaves = append(leaves, o)
				return
			}
			walk(first, depth+1)
			walk(second, depth+1)
		}
		walk(o, 0)
		spans, marked, dones := 0, map[int64]int{}, 0
		for _, l := range leaves {
			spans += len(l.spans)
			n := 0
			for _, p := range l.parts {
				marked[p.Offset]++
				n += p.Spans
			}
			require.LessOrEqual(t, n, len(l.spans), "%v", tc)
			require.LessOrEqual(t, len(l.spans), 1, "%v: a leaf that could split", tc)
			require.LessOrEqual(t, len(l.parts), 1, "%v: a leaf that could split", tc)
			if l.done != nil {
				dones++
			}
		}
		require.Equal(t, tc.spans, spans, "%v", tc)
		require.Equal(t, 1, dones, "%v: done runs once, with the last piece", tc)
		for i := range tc.parts {
			require.Equal(t, 1, marked[int64(i)], "%v: record %d", tc, i)
		}
	}
}

// TestBadPartsCountWithoutDeduplication: parts that do not fit the trace
// (more spans than it has, an index outside the record) are dropped with an
// error log, and the spans are counted, not lost or panicked over.
func TestBadPartsCountWithoutDeduplication(t *testing.T) {
	tr := genTraffic(3, 11)
	s := open(t, t.TempDir(), testOptions())
	defer func() { require.NoError(t, s.Close()) }()
	want := 0
	for i, bad := range []Part{
		{Topic: "t", Offset: 1, Of: 1, Spans: 99},
		{Topic: "t", Offset: 2, Index: -1, Of: 2},
		{Topic: "t", Offset: 3, Index: 2, Of: 2},
	} {
		s.ObserveDurable(tr.traces[i], []Part{bad}, nil)
		want += len(tr.traces[i].Spans)
	}
	require.NoError(t, s.Flush(context.Background()))
	require.Equal(t, float64(want), counterValue(t, s.m.spans.WithLabelValues("counted")))
}

// BenchmarkFlush measures the whole path of one trace through the store as
// the indexer drives it: Observe, Link when kept (about one in eight), and a
// share of the flush that writes counts and links to Badger. Traffic spans a
// few hundred series and advances through time, so buckets fill, their link
// lists fill and new buckets start, as in a steady stream.
func BenchmarkFlush(b *testing.B) {
	const (
		nServices, nOps = 8, 24
		flushEvery      = 5000  // traces per flush, about one FlushInterval's worth
		perBucket       = 20000 // traces per 10 s bucket of span start time
	)
	r := rand.New(rand.NewPCG(7, 11))
	var res []*span.Resource
	for i := range nServices {
		res = append(res, resource("service-"+string(rune('a'+i))))
	}
	var names []string
	for i := range nOps {
		names = append(names, "operation /api/v1/"+string(rune('a'+i)))
	}
	// Templates: spans with times relative to the trace start. Observe
	// keeps nothing of a span, so each round moves a template's spans to its
	// trace's time in place rather than allocating new ones.
	type tmpl struct {
		spans      []span.Span
		start, end []uint64
		kept       bool
	}
	var tmpls []tmpl
	for range 4096 {
		var t tmpl
		for j := range 1 + r.IntN(12) {
			kind := tracepb.Span_SPAN_KIND_SERVER
			if r.IntN(2) == 0 {
				kind = tracepb.Span_SPAN_KIND_CLIENT
			}
			code := tracepb.Status_STATUS_CODE_UNSET
			if r.IntN(100) < 3 {
				code, t.kept = tracepb.Status_STATUS_CODE_ERROR, true
			}
			off := r.Int64N(int64(time.Second))
			dur := int64(math.Exp(math.Log(0.2e6) + r.Float64()*(math.Log(5e9)-math.Log(0.2e6))))
			t.start, t.end = append(t.start, uint64(off)), append(t.end, uint64(off+dur))
			t.spans = append(t.spans, span.Span{Resource: res[r.IntN(nServices)], Span: &tracepb.Span{
				SpanId: []byte{7: byte(j + 1)}, Name: names[r.IntN(nOps)], Kind: kind,
				Status: &tracepb.Status{Code: code},
			}})
		}
		t.kept = t.kept || r.IntN(16) == 0
		tmpls = append(tmpls, t)
	}
	o := DefaultOptions()
	o.FlushInterval = time.Hour // flushes come from the loop below only
	s, err := Open(b.TempDir(), nil, nil, o)
	require.NoError(b, err)
	defer func() { require.NoError(b, s.Close()) }()
	ctx := context.Background()
	b.ReportAllocs()
	start, cpu := time.Now(), cpuTime(b)
	n := 0
	for i := 0; b.Loop(); i++ {
		tp := tmpls[i%len(tmpls)]
		base := uint64(t0.UnixNano()) + uint64(i/perBucket)*uint64(10*time.Second) + uint64(i%perBucket)*uint64(10*time.Second/perBucket)
		t := &span.Trace{Spans: tp.spans}
		binary.BigEndian.PutUint64(t.ID[8:], uint64(i)+1)
		for j, sp := range tp.spans {
			sp.TraceId = t.ID[:]
			sp.StartTimeUnixNano, sp.EndTimeUnixNano = base+tp.start[j], base+tp.end[j]
		}
		s.ObserveDurable(t, nil, nil)
		if tp.kept {
			s.Link(t.ID, []string{"error"})
		}
		n += len(t.Spans)
		if i%flushEvery == flushEvery-1 {
			require.NoError(b, s.Flush(ctx))
		}
	}
	require.NoError(b, s.Flush(ctx))
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "spans/s")
	// CPU time of the whole process (Badger's goroutines included) per
	// trace: steadier than ns/op on a shared machine.
	b.ReportMetric(float64(cpuTime(b)-cpu)/float64(b.N), "cpu-ns/op")
}

// cpuTime returns the CPU time the process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
