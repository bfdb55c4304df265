package loadgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/threadline/threadline/span"
)

// template is one pre-encoded ExportTraceServiceRequest together with the
// byte offsets of the fields rewritten on every send.
type template struct {
	buf []byte
	// traceIDs[j] holds the offsets of the 16-byte trace_id values of the
	// request's j-th trace (one per span of that trace).
	traceIDs [][]int
	// times holds the offsets of the fixed64 start and end timestamps.
	times []int
	// encodedAt is the time the template's timestamps are relative to.
	encodedAt uint64
	spans     int
}

// render writes the template into dst (resized as needed) with the trace IDs
// of traces first, first+1, … and, when shift is not zero, every timestamp
// moved forward by shift nanoseconds. It allocates only when dst is too small.
func (t *template) render(dst []byte, seed, first uint64, shift uint64) []byte {
	dst = append(dst[:0], t.buf...)
	for j, offs := range t.traceIDs {
		id := TraceID(seed, first+uint64(j))
		for _, o := range offs {
			copy(dst[o:o+16], id[:])
		}
	}
	if shift != 0 {
		for _, o := range t.times {
			v := binary.LittleEndian.Uint64(dst[o:])
			binary.LittleEndian.PutUint64(dst[o:], v+shift)
		}
	}
	return dst
}

// TraceID returns the n-th trace ID of a run with the given seed. IDs are
// unique within a seed (the low half is a bijection of n) and look random, so
// hash partitioning by trace ID spreads them evenly.
func TraceID(seed, n uint64) span.TraceID {
	var id span.TraceID
	lo := mix64(n + seed)
	// The high half only needs to look random; forcing a bit keeps the ID
	// non-zero, which OTLP requires, without affecting uniqueness.
	hi := mix64(lo^mix64(seed)) | 1
	binary.BigEndian.PutUint64(id[:8], hi)
	binary.BigEndian.PutUint64(id[8:], lo)
	return id
}

// mix64 is the splitmix64 finalizer: a bijection on uint64 with good
// avalanche, so distinct inputs give distinct, random-looking outputs.
func mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// Requests returns n encoded ExportTraceServiceRequests of cfg's shape as
// Run sends them (cfg.Pool distinct contents in turn, fresh trace IDs in
// each), for benchmarks that want the load generator's traffic without a
// server.
func Requests(cfg Config, seed uint64, n int) ([][]byte, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pool, err := buildPool(&cfg, seed, time.Now())
	if err != nil {
		return nil, err
	}
	out := make([][]byte, n)
	for i := range out {
		out[i] = pool[i%len(pool)].render(nil, seed, uint64(i*cfg.tracesPerRequest()), 0)
	}
	return out, nil
}

// buildPool encodes cfg.Pool distinct requests of the configured shape.
func buildPool(cfg *Config, seed uint64, now time.Time) ([]*template, error) {
	rng := rand.New(rand.NewPCG(seed, 0x10adc0de))
	pool := make([]*template, cfg.Pool)
	for i := range pool {
		req := buildRequest(cfg, rng, now)
		t, err := encodeTemplate(req, uint64(now.UnixNano()))
		if err != nil {
			return nil, fmt.Errorf("encode request %d of the pool: %w", i, err)
		}
		pool[i] = t
	}
	return pool, nil
}

// encodeTemplate marshals req and locates the fields render rewrites. The
// trace IDs in req must be distinct per trace: they identify which offsets
// belong to the same trace.
func encodeTemplate(req *collectortracepb.ExportTraceServiceRequest, encodedAt uint64) (*template, error) {
	buf, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("marshal request: %w", err)
	}
	t := &template{buf: buf, encodedAt: encodedAt}
	traceIndex := map[[16]byte]int{}
	visit := func(f spanField) {
		switch f.num {
		case spanFieldTraceID:
			var id [16]byte
			copy(id[:], buf[f.off:f.off+16])
			j, ok := traceIndex[id]
			if !ok {
				j = len(t.traceIDs)
				traceIndex[id] = j
				t.traceIDs = append(t.traceIDs, nil)
			}
			t.traceIDs[j] = append(t.traceIDs[j], f.off)
			t.spans++
		case spanFieldStart, spanFieldEnd:
			t.times = append(t.times, f.off)
		}
	}
	if err := walkSpans(buf, visit); err != nil {
		return nil, fmt.Errorf("locate span fields: %w", err)
	}
	return t, nil
}

// Field numbers in opentelemetry/proto/trace/v1/trace.proto and
// collector/trace/v1/trace_service.proto that walkSpans descends into or reports.
const (
	requestFieldResourceSpans = 1 // ExportTraceServiceRequest.resource_spans
	resourceSpansFieldScope   = 2 // ResourceSpans.scope_spans
	scopeSpansFieldSpans      = 2 // ScopeSpans.spans
	spanFieldTraceID          = 1 // Span.trace_id
	spanFieldStart            = 7 // Span.start_time_unix_nano
	spanFieldEnd              = 8 // Span.end_time_unix_nano
)

// spanField is a span field found by walkSpans: its number and the offset of
// its value (for bytes, after the length prefix) in the encoded request.
type spanField struct {
	num protowire.Number
	off int
}

var errMalformed = errors.New("malformed protobuf")

// walkSpans calls visit for every trace_id (16 bytes long), start and end time
// field of every span in an encoded ExportTraceServiceRequest. Walking the
// wire format, rather than searching for known byte patterns, makes the
// offsets exact whatever the attribute values contain.
func walkSpans(buf []byte, visit func(spanField)) error {
	return walkMessage(buf, 0, func(num protowire.Number, typ protowire.Type, val []byte, off int) error {
		if num != requestFieldResourceSpans || typ != protowire.BytesType {
			return nil
		}
		return walkMessage(val, off, func(num protowire.Number, typ protowire.Type, val []byte, off int) error {
			if num != resourceSpansFieldScope || typ != protowire.BytesType {
				return nil
			}
			return walkMessage(val, off, func(num protowire.Number, typ protowire.Type, val []byte, off int) error {
				if num != scopeSpansFieldSpans || typ != protowire.BytesType {
					return nil
				}
				return walkMessage(val, off, func(num protowire.Number, typ protowire.Type, val []byte, off int) error {
					switch {
					case num == spanFieldTraceID && typ == protowire.BytesType && len(val) == 16:
						visit(spanField{num: num, off: off})
					case (num == spanFieldStart || num == spanFieldEnd) && typ == protowire.Fixed64Type:
						visit(spanField{num: num, off: off})
					}
					return nil
				})
			})
		})
	})
}

// walkMessage calls fn for every field of the message in buf, which starts at
// offset base of the whole request. val is the field's value (for bytes
// fields without the length prefix) and off its absolute offset.
func walkMessage(buf []byte, base int, fn func(num protowire.Number, typ protowire.Type, val []byte, off int) error) error {
	for i := 0; i < len(buf); {
		num, typ, n := protowire.ConsumeTag(buf[i:])
		if n < 0 {
			return fmt.Errorf("tag at offset %d: %w", base+i, errMalformed)
		}
		i += n
		var val []byte
		valOff := i
		switch typ {
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(buf[i:])
			if m < 0 {
				return fmt.Errorf("field %d at offset %d: %w", num, base+i, errMalformed)
			}
			val = v
			valOff = i + m - len(v)
			i += m
		default:
			m := protowire.ConsumeFieldValue(num, typ, buf[i:])
			if m < 0 {
				return fmt.Errorf("field %d at offset %d: %w", num, base+i, errMalformed)
			}
			val = buf[i : i+m]
			i += m
		}
		if err := fn(num, typ, val, base+valOff); err != nil {
			return err
		}
	}
	return nil
}

// services name the resources of generated requests, cycling when more are
// asked for.
var services = []string{"frontend", "checkout", "cart", "payment", "shipping", "inventory", "recommendation", "ad", "currency", "email"}

// buildRequest generates one request of the configured shape. Each trace is a
// call chain: a SERVER span, its CLIENT span, the next service's SERVER span
// and so on, visiting the resources in turn. Template trace IDs are random
// and replaced on every send.
func buildRequest(cfg *Config, rng *rand.Rand, now time.Time) *collectortracepb.ExportTraceServiceRequest {
	scopes := make([]*tracepb.ScopeSpans, cfg.Resources)
	req := &collectortracepb.ExportTraceServiceRequest{}
	for r := range cfg.Resources {
		name := services[r%len(services)]
		if r >= len(services) {
			name += "-" + strconv.Itoa(r/len(services))
		}
		host := fmt.Sprintf("ip-10-%d-%d-%d.ec2.internal", rng.IntN(256), rng.IntN(256), rng.IntN(256))
		scopes[r] = &tracepb.ScopeSpans{
			Scope: &commonpb.InstrumentationScope{Name: "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp", Version: "0.63.0"},
		}
		req.ResourceSpans = append(req.ResourceSpans, &tracepb.ResourceSpans{
			Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{
				strAttr("service.name", name),
				strAttr("service.version", fmt.Sprintf("1.%d.%d", rng.IntN(20), rng.IntN(10))),
				strAttr("service.instance.id", uuid(rng)),
				strAttr("host.name", host),
				strAttr("deployment.environment.name", "loadtest"),
				strAttr("telemetry.sdk.language", "go"),
				strAttr("telemetry.sdk.name", "opentelemetry"),
				strAttr("telemetry.sdk.version", "1.47.0"),
			}},
			ScopeSpans: []*tracepb.ScopeSpans{scopes[r]},
			SchemaUrl:  "https://opentelemetry.io/schemas/1.37.0",
		})
	}
	base := uint64(now.Add(-2 * time.Second).UnixNano())
	for left := cfg.SpansPerRequest; left > 0; left -= cfg.SpansPerTrace {
		n := min(left, cfg.SpansPerTrace)
		traceID := make([]byte, 16)
		fillRandom(rng, traceID)
		start := base + uint64(rng.Int64N(int64(time.Second)))
		dur := uint64(20*time.Millisecond) + uint64(rng.Int64N(int64(200*time.Millisecond)))
		var parent []byte
		for k := range n {
			spanID := make([]byte, 8)
			fillRandom(rng, spanID)
			kind := tracepb.Span_SPAN_KIND_SERVER
			if k%2 == 1 {
				kind = tracepb.Span_SPAN_KIND_CLIENT
			}
			s := &tracepb.Span{
				TraceId:           traceID,
				SpanId:            spanID,
				ParentSpanId:      parent,
				Name:              routes[rng.IntN(len(routes))],
				Kind:              kind,
				StartTimeUnixNano: start,
				EndTimeUnixNano:   start + dur,
				Attributes:        spanAttrs(cfg.Attrs, rng),
				Status:            &tracepb.Status{},
			}
			if rng.IntN(100) == 0 {
				s.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: "upstream connect error or disconnect/reset before headers"}
			}
			// Level k/2 is the service the span runs in: a SERVER span and
			// the CLIENT span it makes share one.
			scopes[(k/2)%cfg.Resources].Spans = append(scopes[(k/2)%cfg.Resources].Spans, s)
			parent = spanID
			// Each child starts a little later and ends a little earlier.
			gap := uint64(200*time.Microsecond) + uint64(rng.Int64N(int64(time.Millisecond)))
			start += gap
			if dur > 3*gap {
				dur -= 2 * gap
			}
		}
	}
	return req
}

var routes = []string{
	"GET /api/v1/products/{id}", "POST /api/v1/cart/items", "GET /api/v1/cart", "POST /api/v1/checkout",
	"GET /api/v1/recommendations", "POST /api/v1/payments/charge", "GET /healthz/deep", "PUT /api/v1/orders/{id}",
}

// attrGens are the attributes a span gets, in order; past the end of the list
// spans get generic app.attr.NN attributes alternating string and int.
var attrGens = []struct {
	key string
	gen func(*rand.Rand) *commonpb.AnyValue
}{
	{"http.request.method", func(r *rand.Rand) *commonpb.AnyValue { return str([]string{"GET", "POST", "PUT"}[r.IntN(3)]) }},
	{"url.path", func(r *rand.Rand) *commonpb.AnyValue {
		return str(fmt.Sprintf("/api/v1/orders/%d/items/%d", r.IntN(10_000_000), r.IntN(100)))
	}},
	{"http.response.status_code", func(r *rand.Rand) *commonpb.AnyValue {
		return integer([]int64{200, 200, 200, 201, 204, 404}[r.IntN(6)])
	}},
	{"server.address", func(r *rand.Rand) *commonpb.AnyValue {
		return str(services[r.IntN(len(services))] + ".prod.svc.cluster.local")
	}},
	{"server.port", func(r *rand.Rand) *commonpb.AnyValue { return integer(8080) }},
	{"user_agent.original", func(r *rand.Rand) *commonpb.AnyValue {
		return str(fmt.Sprintf("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/%d.0.0.0 Safari/537.36", 100+r.IntN(40)))
	}},
	{"client.address", func(r *rand.Rand) *commonpb.AnyValue {
		return str(fmt.Sprintf("10.%d.%d.%d", r.IntN(256), r.IntN(256), r.IntN(256)))
	}},
	{"request.id", func(r *rand.Rand) *commonpb.AnyValue { return str(uuid(r)) }},
	{"customer.id", func(r *rand.Rand) *commonpb.AnyValue { return integer(r.Int64N(1 << 40)) }},
	{"db.query.text", func(r *rand.Rand) *commonpb.AnyValue {
		return str(fmt.Sprintf("SELECT o.id, o.status, o.total FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = $1 LIMIT %d", 1+r.IntN(50)))
	}},
	{"network.protocol.version", func(r *rand.Rand) *commonpb.AnyValue { return str([]string{"1.1", "2"}[r.IntN(2)]) }},
	{"thread.id", func(r *rand.Rand) *commonpb.AnyValue { return integer(r.Int64N(512)) }},
}

func spanAttrs(n int, rng *rand.Rand) []*commonpb.KeyValue {
	attrs := make([]*commonpb.KeyValue, 0, n)
	for i := range n {
		if i < len(attrGens) {
			attrs = append(attrs, &commonpb.KeyValue{Key: attrGens[i].key, Value: attrGens[i].gen(rng)})
			continue
		}
		key := fmt.Sprintf("app.attr.%02d", i)
		if i%2 == 0 {
			attrs = append(attrs, &commonpb.KeyValue{Key: key, Value: str(randomText(rng, 16+rng.IntN(48)))})
		} else {
			attrs = append(attrs, &commonpb.KeyValue{Key: key, Value: integer(rng.Int64())})
		}
	}
	return attrs
}

func str(s string) *commonpb.AnyValue {
	return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: s}}
}

func integer(i int64) *commonpb.AnyValue {
	return &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: i}}
}

func strAttr(k, v string) *commonpb.KeyValue { return &commonpb.KeyValue{Key: k, Value: str(v)} }

func fillRandom(rng *rand.Rand, b []byte) {
	for {
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		for _, c := range b {
			if c != 0 {
				return
			}
		}
	}
}

func uuid(rng *rand.Rand) string {
	var b [16]byte
	fillRandom(rng, b[:])
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ "

func randomText(rng *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[rng.IntN(len(letters))]
	}
	return string(b)
}
