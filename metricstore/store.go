// Package metricstore keeps received OTLP metrics on the indexer: the points
// of every series (enough to answer a value, a rate and a latency percentile
// for alert rules) and every exemplar that carries a trace ID, as a link from
// (metric, labels, time, value) to the trace. It is what makes "this metric
// moved → these traces" a lookup instead of a guess.
//
// A series is the metric name plus its labels: the resource's service.name
// and the data point's attributes, sorted by name. Other resource attributes
// (host, pod…) are left out on purpose: they multiply series without helping
// anyone pick a trace, and alert rules match on service and attributes.
//
// Key layout (Badger; integers big-endian so byte order is time order):
//
//	0x01 | metric name | 0x00 | series ID (8)            → metricspb.Series (no points)
//	0x02 | series ID (8) | time (8)                       → metricspb.Point
//	0x03 | series ID (8) | time (8) | trace ID (16) | span ID (8, zero when absent)
//	                                                      → metricspb.Exemplar (no metric, no labels)
//
// The series ID is the first 8 bytes of SHA-256 over the metric name, its
// kind and the canonical labels, so the same series always gets the same ID.
// Every key is a function of the data alone: replaying a Kafka record after a
// crash rewrites the same keys (idempotent). Points and links expire at their
// own time plus Retention; a series key expires Retention after it was last
// written.
package metricstore

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	otlpmetrics "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/protobuf/proto"

	metricspb "github.com/threadline/threadline/proto/metrics/v1"
	"github.com/threadline/threadline/span"
)

// Key prefixes.
const (
	prefixSeries   byte = 0x01
	prefixPoint    byte = 0x02
	prefixExemplar byte = 0x03
)

const (
	seriesIDLen = 8
	// MaxExemplars caps the links one Exemplars call returns.
	MaxExemplars = 10000
	// DefaultExemplars is the links returned when the caller's limit is 0.
	DefaultExemplars = 100
)

// ServiceNameLabel is the label holding the resource's service.name.
const ServiceNameLabel = "service.name"

// Label is one series label.
type Label struct {
	Name, Value string
}

// Point is one stored data point.
type Point struct {
	Time  time.Time
	Start time.Time // zero when the exporter sent none
	// Value of a gauge or sum point.
	Value float64
	// Count and Sum of a histogram (or summary) point.
	Count uint64
	Sum   float64
	// Bounds and BucketCounts of an explicit-bucket histogram point:
	// len(BucketCounts) == len(Bounds)+1.
	Bounds       []float64
	BucketCounts []uint64
}

// SeriesPoints is one series and its points in the asked range, oldest first.
type SeriesPoints struct {
	Metric      string
	Labels      []Label // sorted by name
	Kind        metricspb.Kind
	Temporality metricspb.Temporality
	Monotonic   bool
	Unit        string
	Points      []Point
}

// Link is one exemplar with a trace ID: metric → trace.
type Link struct {
	Metric  string
	Labels  []Label // sorted by name
	Time    time.Time
	Value   float64
	TraceID span.TraceID
	SpanID  span.SpanID // zero when the exemplar named no span
}

// Store is the metric store. It is safe for concurrent use.
type Store struct {
	db      *badger.DB
	opts    Options
	logger  *slog.Logger
	metrics *metrics
	now     func() time.Time

	closeOnce sync.Once
	closeErr  error
}

type metrics struct {
	points      prometheus.Counter
	links       prometheus.Counter
	expired     prometheus.Counter
	writeErrors prometheus.Counter
}

// Open opens (or creates) the store in dir. A nil logger discards logs; reg
// may be nil. A failed open closes whatever it opened.
func Open(dir string, logger *slog.Logger, reg prometheus.Registerer, opts Options) (st *Store, err error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("open metric store: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	db, err := badger.Open(opts.badgerOptions(dir, badgerLogger{logger.With("component", "badger-metrics")}))
	if err != nil {
		return nil, fmt.Errorf("open metric store %s: %w", dir, err)
	}
	m := &metrics{
		points: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_metricstore_points_written_total",
			Help: "Received metric data points written to the metric store, including replays.",
		}),
		links: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_metricstore_exemplar_links_written_total",
			Help: "Exemplars with a trace ID written as metric → trace links, including replays.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_metricstore_points_expired_total",
			Help: "Data points and exemplars not written because their time is already past retention.",
		}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "threadline_metricstore_write_errors_total",
			Help: "Metric store Write calls that failed.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.points, m.links, m.expired, m.writeErrors} {
			if rerr := reg.Register(c); rerr != nil {
				err = fmt.Errorf("open metric store %s: register metric: %w", dir, rerr)
				if cerr := db.Close(); cerr != nil {
					err = errors.Join(err, fmt.Errorf("close metric store after failed open: %w", cerr))
				}
				return nil, err
			}
		}
	}
	return &Store{db: db, opts: opts, logger: logger, metrics: m, now: time.Now}, nil
}

// Close closes the store; later calls return the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("close metric store: %w", err)
		}
	})
	return s.closeErr
}

// seriesRec is one series found in a MetricsData, with what it contributes.
type seriesRec struct {
	meta   *metricspb.Series
	id     [seriesIDLen]byte
	points []*metricspb.Point
	links  []*metricspb.Exemplar
}

// Write stores the points and exemplar links of md. It is idempotent: writing
// the same data again rewrites the same keys with the same values. Points and
// exemplars whose time is already past retention are skipped.
func (s *Store) Write(ctx context.Context, md *otlpmetrics.MetricsData) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("write metrics: %w", err)
	}
	now := s.now()
	recs := collect(md)

	// Build every entry before opening the write batch.
	type kv struct {
		k, v      []byte
		expiresAt uint64
	}
	var (
		entries               []kv
		points, links, expire int
	)
	ttl := func(t uint64) (uint64, bool) {
		exp := time.Unix(0, int64(min(t, math.MaxInt64))).Add(s.opts.Retention)
		if !exp.After(now) {
			return 0, false
		}
		return uint64(exp.Unix()) + 1, true // round up: never expire early
	}
	for _, r := range recs {
		wrote := false
		for _, p := range r.points {
			exp, ok := ttl(p.GetTimeUnixNano())
			if !ok {
				expire++
				continue
			}
			v, err := proto.Marshal(p)
			if err != nil {
				s.metrics.writeErrors.Inc()
				return fmt.Errorf("write metrics: encode point: %w", err)
			}
			entries = append(entries, kv{pointKey(r.id, p.GetTimeUnixNano()), v, exp})
			points++
			wrote = true
		}
		for _, e := range r.links {
			exp, ok := ttl(e.GetTimeUnixNano())
			if !ok {
				expire++
				continue
			}
			v, err := proto.Marshal(e)
			if err != nil {
				s.metrics.writeErrors.Inc()
				return fmt.Errorf("write metrics: encode exemplar: %w", err)
			}
			entries = append(entries, kv{exemplarKey(r.id, e.GetTimeUnixNano(), e.GetTraceId(), e.GetSpanId()), v, exp})
			links++
			wrote = true
		}
		if !wrote {
			continue
		}
		v, err := proto.Marshal(r.meta)
		if err != nil {
			s.metrics.writeErrors.Inc()
			return fmt.Errorf("write metrics: encode series: %w", err)
		}
		entries = append(entries, kv{seriesKey(r.meta.GetMetric(), r.id), v, uint64(now.Add(s.opts.Retention).Unix()) + 1})
	}
	s.metrics.expired.Add(float64(expire))
	if len(entries) == 0 {
		return nil
	}

	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, e := range entries {
		ent := badger.NewEntry(e.k, e.v)
		ent.ExpiresAt = e.expiresAt
		if err := wb.SetEntry(ent); err != nil {
			s.metrics.writeErrors.Inc()
			return fmt.Errorf("write metrics: %w", err)
		}
	}
	if err := wb.Flush(); err != nil {
		s.metrics.writeErrors.Inc()
		return fmt.Errorf("write metrics: commit: %w", err)
	}
	s.metrics.points.Add(float64(points))
	s.metrics.links.Add(float64(links))
	return nil
}

// Links returns every exemplar of md that carries a valid trace ID, as
// links. It does not touch the store: the indexer uses it to keep the traces
// that alerting metrics point at (reason "exemplar") and to buffer links with
// their trace.
func Links(md *otlpmetrics.MetricsData) []Link {
	var out []Link
	for _, r := range collect(md) {
		labels := labelsOf(r.meta.GetLabels())
		for _, e := range r.links {
			out = append(out, linkOf(r.meta.GetMetric(), labels, e))
		}
	}
	return out
}

func linkOf(metric string, labels []Label, e *metricspb.Exemplar) Link {
	l := Link{Metric: metric, Labels: labels, Time: time.Unix(0, int64(min(e.GetTimeUnixNano(), math.MaxInt64))), Value: e.GetValue()}
	copy(l.TraceID[:], e.GetTraceId())
	copy(l.SpanID[:], e.GetSpanId())
	return l
}

func labelsOf(ls []*metricspb.Label) []Label {
	out := make([]Label, len(ls))
	for i, l := range ls {
		out[i] = Label{Name: l.GetName(), Value: l.GetValue()}
	}
	return out
}

// collect turns md into series records. Points flagged "no recorded value",
// metrics without a name (or with a NUL, which the key layout reserves) and
// exemplars without a valid 16-byte, non-zero trace ID are left out.
func collect(md *otlpmetrics.MetricsData) []*seriesRec {
	byID := map[[seriesIDLen]byte]*seriesRec{}
	var order []*seriesRec
	for _, rm := range md.GetResourceMetrics() {
		service := ""
		for _, kv := range rm.GetResource().GetAttributes() {
			if kv.GetKey() == ServiceNameLabel {
				service = span.ValueString(kv.GetValue())
			}
		}
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				name := m.GetName()
				if name == "" || strings.IndexByte(name, 0) >= 0 {
					continue
				}
				for _, dp := range dataPoints(m) {
					if dp.flags&uint32(otlpmetrics.DataPointFlags_DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK) != 0 {
						continue
					}
					labels := canonicalLabels(service, dp.attrs)
					id := seriesID(name, dp.kind, labels)
					r := byID[id]
					if r == nil {
						r = &seriesRec{id: id, meta: &metricspb.Series{
							Metric: name, Labels: labels, Kind: dp.kind,
							Temporality: dp.temporality, Monotonic: dp.monotonic, Unit: m.GetUnit(),
						}}
						byID[id] = r
						order = append(order, r)
					}
					r.points = append(r.points, dp.point)
					for _, ex := range dp.exemplars {
						if e := exemplarOf(ex, dp.point.GetTimeUnixNano()); e != nil {
							r.links = append(r.links, e)
						}
					}
				}
			}
		}
	}
	return order
}

func exemplarOf(ex *otlpmetrics.Exemplar, pointTime uint64) *metricspb.Exemplar {
	tid, err := span.TraceIDFromBytes(ex.GetTraceId())
	if err != nil {
		return nil // no trace, nothing to link
	}
	e := &metricspb.Exemplar{TimeUnixNano: ex.GetTimeUnixNano(), TraceId: tid[:]}
	if e.TimeUnixNano == 0 {
		e.TimeUnixNano = pointTime
	}
	if sid, err := span.SpanIDFromBytes(ex.GetSpanId()); err == nil {
		e.SpanId = sid[:]
	}
	switch v := ex.GetValue().(type) {
	case *otlpmetrics.Exemplar_AsDouble:
		e.Value = v.AsDouble
	case *otlpmetrics.Exemplar_AsInt:
		e.Value = float64(v.AsInt)
	}
	return e
}

// dataPoint is one OTLP data point of any type, reduced to what is stored.
type dataPoint struct {
	kind        metricspb.Kind
	temporality metricspb.Temporality
	monotonic   bool
	attrs       []*otlpKV
	flags       uint32
	point       *metricspb.Point
	exemplars   []*otlpmetrics.Exemplar
}

func dataPoints(m *otlpmetrics.Metric) []dataPoint {
	var out []dataPoint
	switch d := m.GetData().(type) {
	case *otlpmetrics.Metric_Gauge:
		for _, p := range d.Gauge.GetDataPoints() {
			out = append(out, dataPoint{kind: metricspb.Kind_KIND_GAUGE, attrs: p.GetAttributes(), flags: p.GetFlags(),
				point:     &metricspb.Point{TimeUnixNano: p.GetTimeUnixNano(), StartTimeUnixNano: p.GetStartTimeUnixNano(), Value: numberValue(p)},
				exemplars: p.GetExemplars()})
		}
	case *otlpmetrics.Metric_Sum:
		for _, p := range d.Sum.GetDataPoints() {
			out = append(out, dataPoint{kind: metricspb.Kind_KIND_SUM, temporality: metricspb.Temporality(d.Sum.GetAggregationTemporality()),
				monotonic: d.Sum.GetIsMonotonic(), attrs: p.GetAttributes(), flags: p.GetFlags(),
				point:     &metricspb.Point{TimeUnixNano: p.GetTimeUnixNano(), StartTimeUnixNano: p.GetStartTimeUnixNano(), Value: numberValue(p)},
				exemplars: p.GetExemplars()})
		}
	case *otlpmetrics.Metric_Histogram:
		for _, p := range d.Histogram.GetDataPoints() {
			bounds, counts := p.GetExplicitBounds(), p.GetBucketCounts()
			if len(counts) != len(bounds)+1 {
				// Malformed or bucketless: count and sum still hold.
				bounds, counts = nil, nil
			}
			out = append(out, dataPoint{kind: metricspb.Kind_KIND_HISTOGRAM, temporality: metricspb.Temporality(d.Histogram.GetAggregationTemporality()),
				attrs: p.GetAttributes(), flags: p.GetFlags(),
				point: &metricspb.Point{TimeUnixNano: p.GetTimeUnixNano(), StartTimeUnixNano: p.GetStartTimeUnixNano(),
					Count: p.GetCount(), Sum: p.GetSum(), ExplicitBounds: bounds, BucketCounts: counts},
				exemplars: p.GetExemplars()})
		}
	case *otlpmetrics.Metric_ExponentialHistogram:
		for _, p := range d.ExponentialHistogram.GetDataPoints() {
			out = append(out, dataPoint{kind: metricspb.Kind_KIND_EXPONENTIAL_HISTOGRAM, temporality: metricspb.Temporality(d.ExponentialHistogram.GetAggregationTemporality()),
				attrs: p.GetAttributes(), flags: p.GetFlags(),
				point:     &metricspb.Point{TimeUnixNano: p.GetTimeUnixNano(), StartTimeUnixNano: p.GetStartTimeUnixNano(), Count: p.GetCount(), Sum: p.GetSum()},
				exemplars: p.GetExemplars()})
		}
	case *otlpmetrics.Metric_Summary:
		for _, p := range d.Summary.GetDataPoints() {
			out = append(out, dataPoint{kind: metricspb.Kind_KIND_SUMMARY, temporality: metricspb.Temporality_TEMPORALITY_CUMULATIVE,
				attrs: p.GetAttributes(), flags: p.GetFlags(),
				point: &metricspb.Point{TimeUnixNano: p.GetTimeUnixNano(), StartTimeUnixNano: p.GetStartTimeUnixNano(), Count: p.GetCount(), Sum: p.GetSum()}})
		}
	}
	return out
}

func numberValue(p *otlpmetrics.NumberDataPoint) float64 {
	switch v := p.GetValue().(type) {
	case *otlpmetrics.NumberDataPoint_AsDouble:
		return v.AsDouble
	case *otlpmetrics.NumberDataPoint_AsInt:
		return float64(v.AsInt)
	}
	return 0
}

// canonicalLabels is service.name plus the point attributes, sorted by name;
// a point attribute named service.name loses to the resource's.
func canonicalLabels(service string, attrs []*otlpKV) []*metricspb.Label {
	out := make([]*metricspb.Label, 0, len(attrs)+1)
	if service != "" {
		out = append(out, &metricspb.Label{Name: ServiceNameLabel, Value: service})
	}
	for _, kv := range attrs {
		if kv.GetKey() == "" || (kv.GetKey() == ServiceNameLabel && service != "") {
			continue
		}
		out = append(out, &metricspb.Label{Name: kv.GetKey(), Value: span.ValueString(kv.GetValue())})
	}
	slices.SortStableFunc(out, func(a, b *metricspb.Label) int { return cmp.Compare(a.Name, b.Name) })
	// Duplicate keys (invalid OTLP): the first wins, so the ID is stable.
	return slices.CompactFunc(out, func(a, b *metricspb.Label) bool { return a.Name == b.Name })
}

func seriesID(name string, kind metricspb.Kind, labels []*metricspb.Label) [seriesIDLen]byte {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	write := func(s string) {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(s)))])
		h.Write([]byte(s))
	}
	write(name)
	h.Write([]byte{byte(kind)})
	for _, l := range labels {
		write(l.GetName())
		write(l.GetValue())
	}
	var id [seriesIDLen]byte
	copy(id[:], h.Sum(nil))
	return id
}

func seriesPrefix(metric string) []byte {
	k := make([]byte, 0, 2+len(metric)+seriesIDLen)
	k = append(k, prefixSeries)
	k = append(k, metric...)
	return append(k, 0)
}

func seriesKey(metric string, id [seriesIDLen]byte) []byte {
	return append(seriesPrefix(metric), id[:]...)
}

func pointKey(id [seriesIDLen]byte, t uint64) []byte {
	k := make([]byte, 0, 1+seriesIDLen+8)
	k = append(k, prefixPoint)
	k = append(k, id[:]...)
	return binary.BigEndian.AppendUint64(k, t)
}

func exemplarKey(id [seriesIDLen]byte, t uint64, traceID, spanID []byte) []byte {
	k := make([]byte, 0, 1+seriesIDLen+8+16+8)
	k = append(k, prefixExemplar)
	k = append(k, id[:]...)
	k = binary.BigEndian.AppendUint64(k, t)
	k = append(k, traceID...)
	var sid [8]byte
	copy(sid[:], spanID)
	return append(k, sid[:]...)
}

// timeRange converts [start, end) to key-time bounds; a zero end is open.
func timeRange(start, end time.Time) (lo, hi uint64) {
	if !start.IsZero() && start.UnixNano() > 0 {
		lo = uint64(start.UnixNano())
	}
	hi = math.MaxUint64
	if !end.IsZero() {
		if end.UnixNano() <= 0 {
			return 0, 0
		}
		hi = uint64(end.UnixNano())
	}
	return lo, hi
}

// matchingSeries returns the stored series of metric whose labels equal all
// matchers (an absent label equals ""), with their IDs.
func matchingSeries(txn *badger.Txn, metric string, matchers map[string]string) ([]*metricspb.Series, [][seriesIDLen]byte, error) {
	prefix := seriesPrefix(metric)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: false})
	defer it.Close()
	var (
		out []*metricspb.Series
		ids [][seriesIDLen]byte
	)
	for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
		item := it.Item()
		k := item.Key()
		if len(k) != len(prefix)+seriesIDLen {
			continue
		}
		var ser metricspb.Series
		if err := item.Value(func(v []byte) error { return proto.Unmarshal(v, &ser) }); err != nil {
			return nil, nil, fmt.Errorf("decode series of %s: %w", metric, err)
		}
		if !matches(ser.GetLabels(), matchers) {
			continue
		}
		var id [seriesIDLen]byte
		copy(id[:], k[len(prefix):])
		out = append(out, &ser)
		ids = append(ids, id)
	}
	return out, ids, nil
}

func matches(labels []*metricspb.Label, matchers map[string]string) bool {
	for name, want := range matchers {
		got := ""
		for _, l := range labels {
			if l.GetName() == name {
				got = l.GetValue()
				break
			}
		}
		if got != want {
			return false
		}
	}
	return true
}

// Series returns the points in [start, end) of every series of metric whose
// labels equal all matchers, oldest point first. A zero end is open.
func (s *Store) Series(ctx context.Context, metric string, matchers map[string]string, start, end time.Time) ([]SeriesPoints, error) {
	lo, hi := timeRange(start, end)
	var out []SeriesPoints
	err := s.db.View(func(txn *badger.Txn) error {
		series, ids, err := matchingSeries(txn, metric, matchers)
		if err != nil {
			return err
		}
		for i, ser := range series {
			if err := ctx.Err(); err != nil {
				return err
			}
			sp := SeriesPoints{Metric: ser.GetMetric(), Labels: labelsOf(ser.GetLabels()), Kind: ser.GetKind(),
				Temporality: ser.GetTemporality(), Monotonic: ser.GetMonotonic(), Unit: ser.GetUnit()}
			prefix := append([]byte{prefixPoint}, ids[i][:]...)
			if err := scanRange(txn, prefix, lo, hi, false, func(v []byte) (bool, error) {
				var p metricspb.Point
				if err := proto.Unmarshal(v, &p); err != nil {
					return false, fmt.Errorf("decode point of %s: %w", metric, err)
				}
				sp.Points = append(sp.Points, pointOf(&p))
				return true, nil
			}); err != nil {
				return err
			}
			if len(sp.Points) > 0 {
				out = append(out, sp)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("query series %s: %w", metric, err)
	}
	return out, nil
}

func pointOf(p *metricspb.Point) Point {
	out := Point{Time: time.Unix(0, int64(min(p.GetTimeUnixNano(), math.MaxInt64))), Value: p.GetValue(), Count: p.GetCount(),
		Sum: p.GetSum(), Bounds: p.GetExplicitBounds(), BucketCounts: p.GetBucketCounts()}
	if p.GetStartTimeUnixNano() != 0 {
		out.Start = time.Unix(0, int64(min(p.GetStartTimeUnixNano(), math.MaxInt64)))
	}
	return out
}

// scanRange walks the keys prefix|time for time in [lo, hi), forward or
// newest first, until fn returns false.
func scanRange(txn *badger.Txn, prefix []byte, lo, hi uint64, reverse bool, fn func(v []byte) (bool, error)) error {
	if lo >= hi {
		return nil
	}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: false, Reverse: reverse})
	defer it.Close()
	loKey := binary.BigEndian.AppendUint64(slices.Clip(prefix), lo)
	hiKey := binary.BigEndian.AppendUint64(slices.Clip(prefix), hi)
	seek := loKey
	if reverse {
		// In reverse, Seek finds the largest key <= hiKey; only a key equal
		// to it (time == hi, excluded) can come first.
		seek = hiKey
	}
	for it.Seek(seek); it.ValidForPrefix(prefix); it.Next() {
		k := it.Item().Key()
		switch {
		case reverse && bytes.Compare(k, loKey) < 0, !reverse && bytes.Compare(k, hiKey) >= 0:
			return nil
		case bytes.Compare(k, hiKey) >= 0:
			continue
		}
		var (
			more bool
			err  error
		)
		if verr := it.Item().Value(func(v []byte) error { more, err = fn(v); return nil }); verr != nil {
			return verr
		}
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
	}
	return nil
}

// Exemplars returns up to limit links in [start, end) of every series of
// metric whose labels equal all matchers, newest first. limit 0 takes
// DefaultExemplars; it is capped at MaxExemplars.
func (s *Store) Exemplars(ctx context.Context, metric string, matchers map[string]string, start, end time.Time, limit int) ([]Link, error) {
	switch {
	case limit <= 0:
		limit = DefaultExemplars
	case limit > MaxExemplars:
		limit = MaxExemplars
	}
	lo, hi := timeRange(start, end)
	var out []Link
	err := s.db.View(func(txn *badger.Txn) error {
		series, ids, err := matchingSeries(txn, metric, matchers)
		if err != nil {
			return err
		}
		for i, ser := range series {
			if err := ctx.Err(); err != nil {
				return err
			}
			labels := labelsOf(ser.GetLabels())
			prefix := append([]byte{prefixExemplar}, ids[i][:]...)
			n := 0
			// Each series contributes at most limit; the merge below keeps
			// the newest limit overall.
			if err := scanRange(txn, prefix, lo, hi, true, func(v []byte) (bool, error) {
				var e metricspb.Exemplar
				if err := proto.Unmarshal(v, &e); err != nil {
					return false, fmt.Errorf("decode exemplar of %s: %w", metric, err)
				}
				out = append(out, linkOf(ser.GetMetric(), labels, &e))
				n++
				return n < limit, nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("query exemplars %s: %w", metric, err)
	}
	slices.SortStableFunc(out, func(a, b Link) int { return b.Time.Compare(a.Time) })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// badgerLogger routes Badger's log lines to slog; its INFO chatter becomes
// DEBUG.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Debug(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.l.Debug(fmt.Sprintf(f, a...)) }
