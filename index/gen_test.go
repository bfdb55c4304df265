package index

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"

	"github.com/threadline/threadline/span"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

func strAttr(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func intAttr(k string, v int64) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v}}}
}

func newResource(service string, attrs ...*commonpb.KeyValue) *span.Resource {
	return &span.Resource{
		Resource:  &resourcepb.Resource{Attributes: append([]*commonpb.KeyValue{strAttr("service.name", service)}, attrs...)},
		SchemaURL: "https://opentelemetry.io/schemas/1.26.0",
	}
}

// workload generates traces of the shape the storage budget is stated for:
// 5 spans per trace over 3 services (resources), 10 attributes per span
// with realistic names and a realistic mix of low- and high-cardinality
// values.
type workload struct {
	rng       *rand.Rand
	resources [3][]*span.Resource // per service, a few instances
	scope     *span.Scope
	next      uint64
	now       int64
}

func newWorkload(seed uint64) *workload {
	w := &workload{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), now: 1_760_000_000_000_000_000}
	for i, svc := range []string{"frontend", "checkout", "payment"} {
		for inst := range 4 {
			w.resources[i] = append(w.resources[i], newResource(svc,
				strAttr("service.version", "1.14."+fmt.Sprint(i)),
				strAttr("service.namespace", "shop"),
				strAttr("deployment.environment", "production"),
				strAttr("host.name", fmt.Sprintf("ip-10-0-%d-%d.ec2.internal", i, 10+inst)),
				strAttr("k8s.pod.name", fmt.Sprintf("%s-7f9c8d%d-x%dq", svc, inst, i)),
				strAttr("telemetry.sdk.language", "go"),
				strAttr("telemetry.sdk.version", "1.47.0"),
			))
		}
	}
	w.scope = &span.Scope{Scope: &commonpb.InstrumentationScope{Name: "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp", Version: "0.63.0"}}
	return w
}

var routes = []string{"/api/cart", "/api/checkout", "/api/products/{id}", "/api/payment", "/api/users/{id}/orders"}

func (w *workload) id(n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], w.rng.Uint64()|1)
	}
	return b
}

// trace returns one trace: frontend server root → frontend client →
// checkout server → checkout db client, and payment server.
func (w *workload) trace() span.Trace {
	tid := span.TraceID(w.id(16))
	w.now += int64(w.rng.IntN(20_000_000)) // traces ~10 ms apart
	start := w.now
	route := routes[w.rng.IntN(len(routes))]
	user := fmt.Sprintf("user-%06d", w.rng.IntN(200000))
	status := int64(200)
	if w.rng.IntN(50) == 0 {
		status = 500
	}
	res := func(svc int) *span.Resource { return w.resources[svc][w.rng.IntN(len(w.resources[svc]))] }
	type def struct {
		svc    int
		name   string
		kind   tracepb.Span_SpanKind
		parent int
	}
	defs := []def{
		{0, "GET " + route, tracepb.Span_SPAN_KIND_SERVER, -1},
		{0, "POST checkout.CheckoutService/PlaceOrder", tracepb.Span_SPAN_KIND_CLIENT, 0},
		{1, "checkout.CheckoutService/PlaceOrder", tracepb.Span_SPAN_KIND_SERVER, 1},
		{1, "SELECT orders", tracepb.Span_SPAN_KIND_CLIENT, 2},
		{2, "payment.PaymentService/Charge", tracepb.Span_SPAN_KIND_SERVER, 2},
	}
	ids := make([][]byte, len(defs))
	spans := make([]span.Span, 0, len(defs))
	resOf := [3]*span.Resource{res(0), res(1), res(2)}
	dur := int64(5_000_000 + w.rng.IntN(200_000_000))
	for i, d := range defs {
		ids[i] = w.id(8)
		var parent []byte
		if d.parent >= 0 {
			parent = ids[d.parent]
		}
		off := int64(i) * dur / 20
		sdur := dur - 2*off
		sp := &tracepb.Span{
			TraceId:           tid[:],
			SpanId:            ids[i],
			ParentSpanId:      parent,
			Name:              d.name,
			Kind:              d.kind,
			StartTimeUnixNano: uint64(start + off),
			EndTimeUnixNano:   uint64(start + off + sdur),
			Attributes: []*commonpb.KeyValue{
				strAttr("http.request.method", "POST"),
				strAttr("http.route", route),
				intAttr("http.response.status_code", status),
				strAttr("url.scheme", "https"),
				strAttr("server.address", []string{"shop.example.com", "checkout.shop.svc", "payment.shop.svc"}[d.svc]),
				intAttr("server.port", 8080),
				strAttr("network.protocol.version", "1.1"),
				strAttr("user.id", user),
				strAttr("client.address", fmt.Sprintf("10.1.%d.%d", w.rng.IntN(4), w.rng.IntN(250))),
				strAttr("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"),
			},
		}
		if status == 500 && i == 4 {
			sp.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR, Message: "card declined"}
		}
		spans = append(spans, span.Span{Span: sp, Resource: resOf[d.svc], Scope: w.scope})
	}
	return span.Trace{ID: tid, Spans: spans}
}

func (w *workload) kept(n int) []KeptTrace {
	out := make([]KeptTrace, n)
	for i := range out {
		out[i] = KeptTrace{Trace: w.trace(), Reasons: []string{"latency_topn"}}
	}
	return out
}
