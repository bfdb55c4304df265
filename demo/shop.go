package demo

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// step is one span of a simulated order. An order is planned in full first,
// with every time an offset from the order's start in true time; emit then
// turns the plan into SDK spans, reading each offset through the recording
// host's clock. Planning first lets the demo date the order so that it ends
// now, and keeps the simulation free of SDK calls.
type step struct {
	inst     *instance
	scope    string // instrumentation scope that "recorded" the span
	name     string
	kind     trace.SpanKind
	start    time.Duration
	end      time.Duration
	attrs    []attribute.KeyValue
	events   []event
	logs     []logLine
	children []*step

	// failed marks the span's status Error with statusMsg; err, when set,
	// is also recorded as an exception event at errAt.
	failed    bool
	statusMsg string
	err       error
	errAt     time.Duration

	// link is the producer span a consumer links to; newRoot starts the
	// span in a trace of its own, related to the producer only by the link.
	link    *step
	newRoot bool

	// sc is filled in by emit, for the spans that link to this one.
	sc trace.SpanContext
}

type event struct {
	at    time.Duration
	name  string
	attrs []attribute.KeyValue
}

// logLine is a line the span's service logs while the span is current, so
// that it carries the span's trace and span IDs. Lines are planned with the
// spans, from what the plan already drew: logging never draws from the
// shop's random source, so a seed gives the same traces with or without it.
type logLine struct {
	at    time.Duration
	level slog.Level
	msg   string
	attrs []slog.Attr
}

func (s *step) add(c *step) *step {
	s.children = append(s.children, c)
	return c
}

func (s *step) event(at time.Duration, name string, attrs ...attribute.KeyValue) {
	s.events = append(s.events, event{at: at, name: name, attrs: attrs})
}

// log plans a line at time at, which must lie within the span.
func (s *step) log(at time.Duration, level slog.Level, msg string, attrs ...slog.Attr) {
	s.logs = append(s.logs, logLine{at: at, level: level, msg: msg, attrs: attrs})
}

// logError plans an ERROR line for err with the exception attributes of
// the semantic conventions, typed as the span's exception event is, so the
// line and the event tell the same story.
func (s *step) logError(at time.Duration, msg string, err error, attrs ...slog.Attr) {
	s.log(at, slog.LevelError, msg, append(attrs,
		slog.String("exception.type", errorType(err)),
		slog.String("exception.message", err.Error()))...)
}

// errorType names err's type the way the trace SDK's RecordError does.
func errorType(err error) string {
	t := reflect.TypeOf(err)
	if t.PkgPath() == "" && t.Name() == "" {
		return t.String()
	}
	return t.PkgPath() + "." + t.Name()
}

// Log attributes the services share.
func orderAttr(o order) slog.Attr { return slog.String("order.id", o.id) }
func shopAttr(o order) slog.Attr  { return slog.String("shop", o.shop) }
func amountAttr(o order) slog.Attr {
	return slog.Int("amount", o.yen)
}

// fail marks the span as failed, recording err as an exception at time at.
func (s *step) fail(at time.Duration, err error, msg string) {
	s.failed, s.statusMsg, s.err, s.errAt = true, msg, err, at
}

// Errors the shop's services raise; their type names become exception.type.
type (
	paymentDeclinedError struct{ code string }
	outOfStockError      struct{ item, shop string }
	upstreamError        struct {
		service string
		status  int
	}
)

func (e paymentDeclinedError) Error() string { return "card declined by issuer: " + e.code }
func (e outOfStockError) Error() string {
	return fmt.Sprintf("out of stock: %s at %s", e.item, e.shop)
}
func (e upstreamError) Error() string {
	return fmt.Sprintf("%s answered HTTP %d", e.service, e.status)
}

// Instrumentation scopes, as the usual Go contrib libraries name themselves.
const (
	scopeHTTP  = "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	scopeSQL   = "github.com/XSAM/otelsql"
	scopeRedis = "github.com/redis/go-redis/extra/redisotel"
	scopeKafka = "github.com/twmb/franz-go/plugin/kotel"
	scopeApp   = "github.com/ramen-ya/shop"
)

var (
	shops    = []string{"shinjuku-east", "shibuya-center", "ikebukuro-north", "umeda", "namba", "tenjin"}
	bowls    = []string{"tonkotsu", "shoyu", "miso", "shio", "tantanmen", "tsukemen", "gyoza", "chashu-don"}
	browsers = []string{
		"Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
		"Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
		"RamenYa/4.2.0 (iOS 18.1; iPhone15,2)",
	}
)

// order is one customer's order, the input of a simulated request.
type order struct {
	id     string
	member int
	shop   string
	items  []string
	yen    int
}

// shop simulates the order path. It is not safe for concurrent use: one
// goroutine plans and emits orders in sequence, which is what makes a seeded
// run reproducible.
type shop struct {
	rng  *rand.Rand
	topo *topology
}

func (s *shop) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(s.rng.Int64N(int64(hi-lo)+1))
}

// around returns a log-normal duration with the given median: most calls
// are close to it, a few much slower, like real latencies.
func (s *shop) around(median time.Duration, sigma float64) time.Duration {
	return time.Duration(float64(median) * math.Exp(sigma*s.rng.NormFloat64()))
}

func (s *shop) chance(p float64) bool { return s.rng.Float64() < p }

// newOrder draws a random order.
func (s *shop) newOrder() order {
	o := order{
		id:     fmt.Sprintf("R%010d", s.rng.IntN(10_000_000_000)),
		member: 100_000 + s.rng.IntN(900_000),
		shop:   shops[s.rng.IntN(len(shops))],
	}
	for range 1 + s.rng.IntN(4) {
		o.items = append(o.items, bowls[s.rng.IntN(len(bowls))])
		o.yen += 780 + 10*s.rng.IntN(60)
	}
	return o
}

// reply is what a caller learns from an HTTP call: when, and the status
// (0 when it gave up waiting).
type reply struct {
	end    time.Duration
	status int
}

// httpCall plans an HTTP request from caller to a random instance of
// service at time at: the caller's CLIENT span and, as its child, the
// callee's SERVER span, which handle fills in (setting its end) and answers
// with a status. A non-zero timeout makes the client give up, while the
// server carries on, as real servers do.
func (s *shop) httpCall(caller *instance, service, method, route, path string, at, timeout time.Duration, handle func(srv *step) int) (*step, reply) {
	callee := s.topo.pick(s.rng, service)
	hop := func() time.Duration { return s.between(150*time.Microsecond, 1200*time.Microsecond) }
	if callee.service == svcBank {
		hop = func() time.Duration { return s.between(8*time.Millisecond, 35*time.Millisecond) }
	}
	name := method + " " + route
	common := []attribute.KeyValue{
		attribute.String("http.request.method", method),
		attribute.String("url.path", path),
		attribute.String("server.address", callee.address),
		attribute.Int("server.port", callee.port),
	}
	client := &step{inst: caller, scope: scopeHTTP, name: name, kind: trace.SpanKindClient, start: at,
		attrs: append(common, attribute.String("url.full", fmt.Sprintf("https://%s:%d%s", callee.address, callee.port, path)))}
	srv := client.add(&step{inst: callee, scope: scopeHTTP, name: name, kind: trace.SpanKindServer, start: at + hop(),
		attrs: append(append([]attribute.KeyValue{}, common...),
			attribute.String("http.route", route),
			attribute.String("url.scheme", "https"),
			attribute.String("client.address", caller.host.ip),
			attribute.String("network.protocol.version", "2"),
		)})

	status := handle(srv)
	srv.attrs = append(srv.attrs, attribute.Int("http.response.status_code", status))
	if status >= 500 && !srv.failed {
		srv.failed = true // semantic conventions: 5xx is a server error, 4xx is not
	}

	answered := srv.end + hop()
	if timeout > 0 && answered-at > timeout {
		client.end = at + timeout
		client.attrs = append(client.attrs, attribute.String("error.type", "timeout"))
		client.fail(client.end, fmt.Errorf("call %s %s: %w", method, callee.address, context.DeadlineExceeded), "")
		return client, reply{end: client.end, status: 0}
	}
	client.end = answered
	client.attrs = append(client.attrs, attribute.Int("http.response.status_code", status))
	if status >= 400 {
		// For a client every 4xx and 5xx is an error; the description stays
		// empty because the status code says it all.
		client.failed = true
		client.attrs = append(client.attrs, attribute.String("error.type", fmt.Sprint(status)))
	}
	return client, reply{end: client.end, status: status}
}

// query plans a database call by parent's instance at time at.
func (s *shop) query(parent *step, at time.Duration, system, op, table, text string) *step {
	scope, median, addr, port := scopeSQL, 1200*time.Microsecond, "postgres-primary.shop.internal", 5432
	if system == "redis" {
		scope, median, addr, port = scopeRedis, 250*time.Microsecond, "redis.shop.internal", 6379
	}
	name := op + " " + table
	if system == "redis" {
		name = op
	}
	q := &step{inst: parent.inst, scope: scope, name: name, kind: trace.SpanKindClient, start: at,
		end: at + s.around(median, 0.6),
		attrs: []attribute.KeyValue{
			// db.system is what most backends and UIs key on; semantic
			// conventions 1.28 renamed it db.system.name.
			attribute.String("db.system", system),
			attribute.String("db.system.name", system),
			attribute.String("db.namespace", "shop"),
			attribute.String("db.operation.name", op),
			attribute.String("db.collection.name", table),
			attribute.String("db.query.text", text),
			attribute.String("server.address", addr),
			attribute.Int("server.port", port),
		}}
	return parent.add(q)
}

func (s *shop) internal(parent *step, at, d time.Duration, name string, attrs ...attribute.KeyValue) *step {
	return parent.add(&step{inst: parent.inst, scope: scopeApp, name: name, kind: trace.SpanKindInternal,
		start: at, end: at + d, attrs: attrs})
}

// placeOrder plans one order from the customer's browser to the kitchen.
func (s *shop) placeOrder() (*step, order) {
	o := s.newOrder()
	web := s.topo.pick(s.rng, svcStorefront)
	root := &step{inst: web, scope: scopeHTTP, name: "POST /api/orders", kind: trace.SpanKindServer, attrs: []attribute.KeyValue{
		attribute.String("http.request.method", "POST"),
		attribute.String("url.path", "/api/orders"),
		attribute.String("http.route", "/api/orders"),
		attribute.String("url.scheme", "https"),
		attribute.String("server.address", web.address),
		attribute.Int("server.port", web.port),
		attribute.String("client.address", fmt.Sprintf("198.51.100.%d", 1+s.rng.IntN(254))),
		attribute.String("user_agent.original", browsers[s.rng.IntN(len(browsers))]),
		attribute.String("shop.id", o.shop),
		attribute.Int("order.item_count", len(o.items)),
	}}
	t := s.between(200*time.Microsecond, 600*time.Microsecond)
	cart := s.internal(root, t, s.around(400*time.Microsecond, 0.4), "validate cart",
		attribute.Int("cart.items", len(o.items)))
	cart.log(cart.end, slog.LevelDebug, "cart validated", shopAttr(o),
		slog.String("items", strings.Join(o.items, ",")), amountAttr(o))
	t = cart.end

	call, rep := s.httpCall(web, svcOrder, "POST", "/orders", "/orders", t, 15*time.Second,
		func(srv *step) int { return s.order(srv, o) })
	root.add(call)
	t = rep.end

	status := rep.status
	switch {
	case status == 201:
		t = s.internal(root, t, s.around(900*time.Microsecond, 0.5), "render confirmation",
			attribute.String("order.id", o.id)).end
		root.log(t, slog.LevelInfo, "order placed", orderAttr(o), shopAttr(o), amountAttr(o),
			slog.Int64("duration_ms", (t-root.start).Milliseconds()))
	case status == 0:
		status = 504
	case status >= 500:
		status = 502
	default:
		root.log(t, slog.LevelInfo, "order rejected", shopAttr(o), slog.Int("http.response.status_code", status))
	}
	if status >= 500 {
		err := upstreamError{service: svcOrder, status: rep.status}
		root.fail(t, err, "order service failed")
		msg := "order failed: " + err.Error()
		if rep.status == 0 {
			msg = "order service timeout after 15s"
		}
		root.logError(t, msg, err, shopAttr(o), slog.Int("http.response.status_code", status))
	}
	root.end = t + s.between(100*time.Microsecond, 500*time.Microsecond)
	root.attrs = append(root.attrs, attribute.Int("http.response.status_code", status))
	return root, o
}

// order is the order service's POST /orders handler.
func (s *shop) order(srv *step, o order) int {
	self := srv.inst
	srv.attrs = append(srv.attrs, attribute.String("order.id", o.id), attribute.Int("member.id", o.member))
	t := srv.start + s.between(50*time.Microsecond, 300*time.Microsecond)
	srv.log(t, slog.LevelDebug, "creating order", orderAttr(o), slog.Int("member.id", o.member), shopAttr(o),
		slog.Int("items", len(o.items)))

	path := fmt.Sprintf("/members/%d", o.member)
	call, rep := s.httpCall(self, svcMember, "GET", "/members/{id}", path, t, 2*time.Second,
		func(m *step) int { return s.member(m, o) })
	srv.add(call)
	t = rep.end

	// Stock and price are asked for concurrently: overlapping siblings.
	inv, invRep := s.httpCall(self, svcInventory, "POST", "/reservations", "/reservations", t, 2*time.Second,
		func(m *step) int { return s.reserve(m, o) })
	price, priceRep := s.httpCall(self, svcPricing, "POST", "/quotes", "/quotes", t+s.between(20*time.Microsecond, 90*time.Microsecond), 2*time.Second,
		func(m *step) int { return s.quote(m, o) })
	srv.add(inv)
	srv.add(price)
	t = max(invRep.end, priceRep.end)
	if invRep.status != 201 {
		srv.event(t, "order rejected", attribute.String("reason", "out_of_stock"))
		srv.log(t, slog.LevelWarn, "order rejected: out of stock", orderAttr(o), shopAttr(o))
		srv.end = t + s.between(100*time.Microsecond, 400*time.Microsecond)
		return 409
	}

	t = s.query(srv, t, "postgresql", "INSERT", "orders",
		"INSERT INTO orders (id, member_id, shop_id, total_yen, status) VALUES ($1, $2, $3, $4, 'pending')").end

	pay, payRep := s.httpCall(self, svcPayment, "POST", "/payments", "/payments", t, 12*time.Second,
		func(m *step) int { return s.pay(m, o) })
	srv.add(pay)
	t = payRep.end

	switch payRep.status {
	case 201:
	case 402:
		srv.event(t, "payment declined", attribute.String("order.id", o.id))
		srv.log(t, slog.LevelWarn, "payment declined", orderAttr(o), amountAttr(o))
		t = s.query(srv, t, "postgresql", "UPDATE", "orders", "UPDATE orders SET status = 'declined' WHERE id = $1").end
		srv.end = t + s.between(100*time.Microsecond, 300*time.Microsecond)
		return 402
	default:
		t = s.query(srv, t, "postgresql", "UPDATE", "orders", "UPDATE orders SET status = 'payment_failed' WHERE id = $1").end
		err := upstreamError{service: svcPayment, status: payRep.status}
		srv.fail(t, err, "payment failed")
		msg := "payment failed: " + err.Error()
		if payRep.status == 0 {
			msg = "payment timeout after 12s"
		}
		srv.logError(t, msg, err, orderAttr(o), amountAttr(o))
		srv.end = t + s.between(100*time.Microsecond, 300*time.Microsecond)
		return 502
	}

	points := fmt.Sprintf("/members/%d/points", o.member)
	call, rep = s.httpCall(self, svcLoyalty, "POST", "/members/{id}/points", points, t, time.Second,
		func(m *step) int {
			end := s.query(m, m.start+s.between(50*time.Microsecond, 200*time.Microsecond), "postgresql", "UPDATE", "member_points",
				"UPDATE member_points SET balance = balance + $1 WHERE member_id = $2").end
			m.event(end, "points accrued", attribute.Int("loyalty.points", o.yen/100))
			m.log(end, slog.LevelDebug, "points accrued", slog.Int("member.id", o.member), slog.Int("loyalty.points", o.yen/100))
			m.end = end + s.between(50*time.Microsecond, 200*time.Microsecond)
			return 200
		})
	srv.add(call)
	t = rep.end

	t = s.publish(srv, t, o).end
	t = s.query(srv, t, "postgresql", "UPDATE", "orders", "UPDATE orders SET status = 'paid' WHERE id = $1").end
	srv.log(t, slog.LevelInfo, "order accepted", orderAttr(o), shopAttr(o), amountAttr(o), slog.Int("member.id", o.member))
	srv.end = t + s.between(100*time.Microsecond, 300*time.Microsecond)
	return 201
}

// member is the member service's lookup: Redis first, Postgres on a miss.
func (s *shop) member(srv *step, o order) int {
	t := srv.start + s.between(30*time.Microsecond, 150*time.Microsecond)
	get := s.query(srv, t, "redis", "GET", "members", fmt.Sprintf("GET member:%d", o.member))
	t = get.end
	key := slog.String("cache.key", fmt.Sprintf("member:%d", o.member))
	if s.chance(0.15) {
		get.event(t, "cache miss", attribute.String("cache.key", fmt.Sprintf("member:%d", o.member)))
		srv.log(t, slog.LevelDebug, "member cache miss, loading from postgres", key)
		t = s.query(srv, t, "postgresql", "SELECT", "members",
			"SELECT id, name, tier, points FROM members WHERE id = $1").end
		t = s.query(srv, t, "redis", "SET", "members", fmt.Sprintf("SET member:%d ? EX 600", o.member)).end
		srv.log(t, slog.LevelDebug, "member cached", key, slog.Int64("ttl_s", 600))
	} else {
		srv.log(t, slog.LevelDebug, "member cache hit", key)
	}
	srv.end = t + s.between(50*time.Microsecond, 200*time.Microsecond)
	return 200
}

// reserve is the inventory service's reservation; 1% of orders find a bowl
// sold out.
func (s *shop) reserve(srv *step, o order) int {
	t := srv.start + s.between(50*time.Microsecond, 200*time.Microsecond)
	res := s.internal(srv, t, 0, "reserve stock", attribute.String("shop.id", o.shop))
	t = s.query(res, t+s.between(20*time.Microsecond, 80*time.Microsecond), "postgresql", "SELECT", "stock",
		"SELECT item, quantity FROM stock WHERE shop_id = $1 AND item = ANY($2) FOR UPDATE").end
	status := 201
	if s.chance(0.01) {
		item := o.items[s.rng.IntN(len(o.items))]
		err := outOfStockError{item: item, shop: o.shop}
		res.fail(t, err, "out of stock")
		res.logError(t, "reservation failed: "+err.Error(), err, shopAttr(o), slog.String("item", item))
		status = 409
	} else {
		t = s.query(res, t, "postgresql", "UPDATE", "stock",
			"UPDATE stock SET quantity = quantity - $1 WHERE shop_id = $2 AND item = $3").end
		res.log(t, slog.LevelDebug, "stock reserved", shopAttr(o), slog.String("items", strings.Join(o.items, ",")))
	}
	res.end = t + s.between(20*time.Microsecond, 100*time.Microsecond)
	srv.end = res.end + s.between(50*time.Microsecond, 200*time.Microsecond)
	return status
}

// quote is the pricing service: cached price list, then promotions.
func (s *shop) quote(srv *step, o order) int {
	t := srv.start + s.between(50*time.Microsecond, 200*time.Microsecond)
	get := s.query(srv, t, "redis", "GET", "price_lists", "GET price-list:"+o.shop)
	t = get.end
	if s.chance(0.05) {
		get.event(t, "cache miss", attribute.String("cache.key", "price-list:"+o.shop))
		srv.log(t, slog.LevelDebug, "price list cache miss", shopAttr(o), slog.String("cache.key", "price-list:"+o.shop))
		t = s.query(srv, t, "postgresql", "SELECT", "price_lists",
			"SELECT item, price_yen FROM price_lists WHERE shop_id = $1 AND valid_from <= now()").end
	} else {
		srv.log(t, slog.LevelDebug, "price list cache hit", shopAttr(o))
	}
	promo := s.internal(srv, t, s.around(2*time.Millisecond, 0.7), "apply promotions")
	if s.chance(0.3) {
		mid := promo.start + (promo.end-promo.start)/2
		promo.event(mid, "promotion applied",
			attribute.String("promotion.code", "KAEDAMA-FREE"), attribute.Int("discount.yen", 150))
		promo.log(mid, slog.LevelInfo, "promotion applied", shopAttr(o),
			slog.String("promotion.code", "KAEDAMA-FREE"), slog.Int("discount", 150))
	}
	srv.attrs = append(srv.attrs, attribute.Int("order.total_yen", o.yen))
	srv.end = promo.end + s.between(50*time.Microsecond, 200*time.Microsecond)
	return 200
}

// bankTimeout is how long payment waits for the bank before giving up;
// an answer slower than slowBank is logged as a warning.
const (
	bankTimeout = 10 * time.Second
	slowBank    = time.Second
)

// pay is the payment service: a fraud check, then the bank, retried once if
// the issuer is unavailable.
func (s *shop) pay(srv *step, o order) int {
	self := srv.inst
	srv.attrs = append(srv.attrs, attribute.String("order.id", o.id), attribute.Int("payment.amount_yen", o.yen))
	t := srv.start + s.between(50*time.Microsecond, 200*time.Microsecond)
	fraud := s.internal(srv, t, s.around(3*time.Millisecond, 0.5), "fraud check")
	score := math.Round(s.rng.Float64()*0.3*1000) / 1000
	fraud.attrs = append(fraud.attrs, attribute.Float64("fraud.score", score))
	fraud.log(fraud.end, slog.LevelDebug, "fraud check passed", orderAttr(o), slog.Float64("fraud.score", score))
	t = fraud.end

	var rep reply
	attempt := 1
	for ; ; attempt++ {
		srv.log(t, slog.LevelDebug, "charging card", orderAttr(o), amountAttr(o), slog.Int("attempt", attempt))
		var call *step
		call, rep = s.httpCall(self, svcBank, "POST", "/v1/charges", "/v1/charges", t, bankTimeout,
			func(b *step) int { return s.charge(b, o) })
		srv.add(call)
		t = rep.end
		if took := rep.end - call.start; rep.status != 0 && took > slowBank {
			srv.log(t, slog.LevelWarn, "slow bank response", orderAttr(o),
				slog.Int("attempt", attempt), slog.Int64("duration_ms", took.Milliseconds()), slog.Int("http.response.status_code", rep.status))
		}
		if rep.status != 503 || attempt == 2 {
			break
		}
		backoff := s.between(50*time.Millisecond, 120*time.Millisecond)
		srv.event(t, "retrying charge", attribute.Int("retry.attempt", attempt), attribute.Int64("retry.backoff_ms", backoff.Milliseconds()))
		srv.log(t, slog.LevelWarn, "bank unavailable, retrying charge", orderAttr(o),
			slog.Int("attempt", attempt), slog.Int64("backoff_ms", backoff.Milliseconds()))
		t += backoff
	}

	t = s.query(srv, t, "postgresql", "INSERT", "payments",
		"INSERT INTO payments (order_id, amount_yen, status, bank_ref) VALUES ($1, $2, $3, $4)").end
	status := 201
	tried := slog.Int("attempt", attempt)
	switch rep.status {
	case 201:
		srv.event(t, "payment authorized")
		srv.log(t, slog.LevelInfo, "payment authorized", orderAttr(o), amountAttr(o), tried)
	case 402:
		err := paymentDeclinedError{code: "insufficient_funds"}
		srv.fail(t, err, "card declined")
		srv.logError(t, "charge failed: "+err.Error(), err, orderAttr(o), amountAttr(o), tried)
		status = 402
	case 0:
		err := fmt.Errorf("charge card: %w", context.DeadlineExceeded)
		srv.fail(t, err, "bank timed out")
		srv.logError(t, fmt.Sprintf("bank timeout after %s", bankTimeout), err, orderAttr(o), amountAttr(o), tried)
		status = 504
	default:
		err := upstreamError{service: svcBank, status: rep.status}
		srv.fail(t, err, "bank unavailable")
		srv.logError(t, "charge failed: "+err.Error(), err, orderAttr(o), amountAttr(o), tried)
		status = 503
	}
	srv.end = t + s.between(100*time.Microsecond, 300*time.Microsecond)
	return status
}

// charge is the bank's API: usually a couple of hundred milliseconds, with
// a heavy tail (p99 of a few seconds, rarely beyond payment's 10 s timeout);
// about 2% of cards are declined and 0.5% of calls find the issuer down.
func (s *shop) charge(srv *step, o order) int {
	var d time.Duration
	switch r := s.rng.Float64(); {
	case r < 0.003:
		d = s.between(8*time.Second, 14*time.Second)
	case r < 0.03:
		d = s.around(1600*time.Millisecond, 0.5)
	default:
		d = s.around(140*time.Millisecond, 0.45)
	}
	d = max(d, 5*time.Millisecond)
	t := srv.start + s.between(200*time.Microsecond, time.Millisecond)
	brand := []string{"visa", "mastercard", "jcb"}[s.rng.IntN(3)]
	auth := s.internal(srv, t, d-2*time.Millisecond, "authorize", attribute.String("card.brand", brand))
	auth.log(t, slog.LevelDebug, "authorizing charge", slog.String("card.brand", brand), amountAttr(o))
	srv.end = srv.start + d
	switch r := s.rng.Float64(); {
	case r < 0.02:
		// Declining is the bank doing its job: not an error on its side.
		auth.event(auth.end, "authorization declined", attribute.String("decline.code", "51"))
		auth.log(auth.end, slog.LevelInfo, "authorization declined", slog.String("decline.code", "51"), amountAttr(o))
		return 402
	case r < 0.025:
		err := upstreamError{service: "issuer", status: 503}
		auth.fail(auth.end, err, "issuer unavailable")
		auth.logError(auth.end, "issuer unavailable: "+err.Error(), err, slog.String("card.brand", brand))
		return 503
	}
	auth.event(auth.end, "authorization approved", attribute.Int("amount.yen", o.yen))
	auth.log(auth.end, slog.LevelInfo, "authorization approved", slog.String("card.brand", brand), amountAttr(o))
	return 201
}

// publish plans the order service's send of orders.placed and its two
// consumers: the kitchen, which continues the order's trace, and
// notification, which starts its own trace and links back (the pattern
// batch consumers use).
func (s *shop) publish(srv *step, t time.Duration, o order) *step {
	partition := s.rng.IntN(12)
	offset := 1_000_000 + s.rng.IntN(9_000_000)
	msgID := fmt.Sprintf("%s-%d", o.id, partition)
	messaging := func(op string) []attribute.KeyValue {
		return []attribute.KeyValue{
			attribute.String("messaging.system", "kafka"),
			attribute.String("messaging.destination.name", "orders.placed"),
			attribute.String("messaging.operation.type", op),
			attribute.String("messaging.message.id", msgID),
			attribute.String("messaging.kafka.message.key", o.id),
			attribute.String("messaging.destination.partition.id", fmt.Sprint(partition)),
			attribute.String("server.address", "kafka-1.shop.internal"),
		}
	}
	prod := srv.add(&step{inst: srv.inst, scope: scopeKafka, name: "send orders.placed", kind: trace.SpanKindProducer,
		start: t, end: t + s.around(2*time.Millisecond, 0.5), attrs: append(messaging("send"), attribute.String("messaging.operation.name", "send"))})

	consumer := func(group string, lag time.Duration) *step {
		c := &step{inst: s.topo.pick(s.rng, group), scope: scopeKafka, name: "process orders.placed", kind: trace.SpanKindConsumer,
			start: prod.end + lag, link: prod,
			attrs: append(messaging("process"),
				attribute.String("messaging.operation.name", "process"),
				attribute.String("messaging.consumer.group.name", group),
				attribute.Int("messaging.kafka.offset", offset))}
		return c
	}

	kitchen := prod.add(consumer(svcKitchen, s.between(2*time.Millisecond, 40*time.Millisecond)))
	kt := kitchen.start + s.between(100*time.Microsecond, 400*time.Microsecond)
	tickets := s.internal(kitchen, kt, 0, "queue bowls", attribute.String("shop.id", o.shop))
	for i, b := range o.items {
		at, station := kt+time.Duration(i+1)*80*time.Microsecond, 1+s.rng.IntN(4)
		tickets.event(at, "bowl queued", attribute.String("bowl", b), attribute.Int("station", station))
		tickets.log(at, slog.LevelDebug, "bowl queued", orderAttr(o), slog.String("bowl", b), slog.Int("station", station))
	}
	tickets.end = kt + time.Duration(len(o.items)+1)*80*time.Microsecond + s.around(300*time.Microsecond, 0.3)
	kt = s.query(kitchen, tickets.end, "postgresql", "INSERT", "tickets",
		"INSERT INTO tickets (order_id, shop_id, items, status) VALUES ($1, $2, $3, 'queued')").end
	kitchen.log(kt, slog.LevelInfo, "ticket queued", orderAttr(o), shopAttr(o), slog.Int("bowls", len(o.items)),
		slog.Int("messaging.kafka.offset", offset))
	kitchen.end = kt + s.between(50*time.Microsecond, 200*time.Microsecond)

	note := prod.add(consumer(svcNotification, s.between(5*time.Millisecond, 120*time.Millisecond)))
	note.newRoot = true
	nt := s.internal(note, note.start+s.between(50*time.Microsecond, 200*time.Microsecond), s.around(1500*time.Microsecond, 0.4), "render receipt email").end
	mail := note.add(&step{inst: note.inst, scope: scopeHTTP, name: "POST", kind: trace.SpanKindClient, start: nt,
		end: nt + s.around(180*time.Millisecond, 0.5), attrs: []attribute.KeyValue{
			attribute.String("http.request.method", "POST"),
			attribute.String("url.full", "https://api.mailrelay.example/v3/mail/send"),
			attribute.String("url.path", "/v3/mail/send"),
			attribute.String("server.address", "api.mailrelay.example"),
			attribute.Int("server.port", 443),
		}})
	mailStatus := 202
	if s.chance(0.005) {
		mailStatus = 503
		mail.failed = true
		mail.attrs = append(mail.attrs, attribute.String("error.type", "503"))
		err := upstreamError{service: "mailrelay", status: 503}
		note.fail(mail.end, err, "receipt email not sent")
		note.logError(mail.end, "receipt email not sent: "+err.Error(), err, orderAttr(o))
	} else {
		note.log(mail.end, slog.LevelInfo, "receipt email sent", orderAttr(o), amountAttr(o))
	}
	mail.attrs = append(mail.attrs, attribute.Int("http.response.status_code", mailStatus))
	note.end = mail.end + s.between(50*time.Microsecond, 200*time.Microsecond)
	return prod
}

// extent is the latest true end time of any span in the plan.
func (s *step) extent() time.Duration {
	end := s.end
	for _, c := range s.children {
		end = max(end, c.extent())
	}
	return end
}
