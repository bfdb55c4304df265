package query

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	readerpb "github.com/threadline/threadline/proto/reader/v1"
)

// traceQLSupported is the help text every TraceQL rejection carries, so the
// Grafana user sees what this backend does understand.
const traceQLSupported = `supported TraceQL: {} or { cond && cond ... } where cond is ` +
	`resource.<attr> = "v", span.<attr> = "v", .<attr> = "v", name = "v", ` +
	`status = error|ok|unset, duration >|>=|<|<= <duration>, traceDuration >|>=|<|<= <duration>`

// errTraceQL marks a query this backend does not understand.
var errTraceQL = errors.New("unsupported TraceQL")

// parseTraceQL turns the supported TraceQL subset into a search request: one
// spanset filter whose conditions are AND-ed and must hold on one span
// (same_span), which is what `{ a && b }` means in TraceQL.
func parseTraceQL(q string) (*readerpb.SearchRequest, error) {
	req := &readerpb.SearchRequest{Tags: map[string]string{}, SameSpan: true}
	p := &tqlParser{src: q}
	p.skipSpace()
	if !p.consume("{") {
		return nil, p.errorf("query must start with {")
	}
	p.skipSpace()
	if p.consume("}") {
		return req, p.end()
	}
	for {
		if err := p.condition(req); err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.consume("}") {
			return req, p.end()
		}
		if p.consume("&&") {
			continue
		}
		if p.consume("||") {
			return nil, p.errorf("|| is not supported")
		}
		return nil, p.errorf("expected && or }")
	}
}

type tqlParser struct {
	src string
	pos int
}

func (p *tqlParser) errorf(format string, args ...any) error {
	return fmt.Errorf("%w at offset %d: %s; %s", errTraceQL, p.pos, fmt.Sprintf(format, args...), traceQLSupported)
}

func (p *tqlParser) skipSpace() {
	for p.pos < len(p.src) {
		r, n := utf8.DecodeRuneInString(p.src[p.pos:])
		if !unicode.IsSpace(r) {
			return
		}
		p.pos += n
	}
}

func (p *tqlParser) consume(tok string) bool {
	if strings.HasPrefix(p.src[p.pos:], tok) {
		p.pos += len(tok)
		return true
	}
	return false
}

func (p *tqlParser) end() error {
	p.skipSpace()
	if p.pos != len(p.src) {
		return p.errorf("unexpected %q after }; pipelines and multiple spansets are not supported", truncate(p.src[p.pos:]))
	}
	return nil
}

// field reads an identifier: letters, digits and . _ - : /.
func (p *tqlParser) field() string {
	start := p.pos
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		if c == '.' || c == '_' || c == '-' || c == ':' || c == '/' ||
			('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') {
			p.pos++
			continue
		}
		break
	}
	return p.src[start:p.pos]
}

func (p *tqlParser) operator() string {
	for _, op := range []string{"!=", "=~", "!~", ">=", "<=", "=", ">", "<"} {
		if p.consume(op) {
			return op
		}
	}
	return ""
}

// value reads a string literal (double quotes or backticks) or a bare word
// (status keyword, duration, number, boolean).
func (p *tqlParser) value() (string, bool, error) {
	if p.pos >= len(p.src) {
		return "", false, p.errorf("missing value")
	}
	switch p.src[p.pos] {
	case '"':
		end := p.pos + 1
		for end < len(p.src) && p.src[end] != '"' {
			if p.src[end] == '\\' {
				end++
			}
			end++
		}
		if end >= len(p.src) {
			return "", false, p.errorf("unterminated string")
		}
		s, err := strconv.Unquote(p.src[p.pos : end+1])
		if err != nil {
			return "", false, p.errorf("bad string literal: %v", err)
		}
		p.pos = end + 1
		return s, true, nil
	case '`':
		end := strings.IndexByte(p.src[p.pos+1:], '`')
		if end < 0 {
			return "", false, p.errorf("unterminated string")
		}
		s := p.src[p.pos+1 : p.pos+1+end]
		p.pos += end + 2
		return s, true, nil
	}
	w := p.field()
	if w == "" {
		return "", false, p.errorf("missing value")
	}
	return w, false, nil
}

func (p *tqlParser) condition(req *readerpb.SearchRequest) error {
	p.skipSpace()
	at := p.pos
	f := p.field()
	if f == "" {
		return p.errorf("expected a field such as resource.service.name, name, status or duration")
	}
	p.skipSpace()
	op := p.operator()
	if op == "" {
		return p.errorf("expected an operator after %s", f)
	}
	p.skipSpace()
	v, quoted, err := p.value()
	if err != nil {
		return err
	}
	switch f {
	case "duration", "span:duration", "traceDuration", "trace:duration":
		if quoted {
			return p.errorf("%s wants a duration such as 100ms, not a string", f)
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return p.errorf("bad duration %q", v)
		}
		minp, maxp := &req.SpanMinDurationNanos, &req.SpanMaxDurationNanos
		if f == "traceDuration" || f == "trace:duration" {
			minp, maxp = &req.MinDurationNanos, &req.MaxDurationNanos
		}
		return p.durationBound(op, d.Nanoseconds(), minp, maxp)
	case "status", "span:status":
		if quoted || (v != "error" && v != "ok" && v != "unset") {
			return p.errorf("status wants error, ok or unset, got %q", v)
		}
		return p.setTag(req, op, "status", v)
	case "name", "span:name":
		if !quoted {
			return p.errorf("name wants a quoted string")
		}
		return p.setTag(req, op, "name", v)
	}
	key, ok := attributeKey(f)
	if !ok {
		p.pos = at
		return p.errorf("unsupported field %q", f)
	}
	if !quoted {
		// Numbers and booleans compare as their text: the index stores
		// attribute values as strings.
		if _, err := strconv.ParseFloat(v, 64); err != nil && v != "true" && v != "false" {
			return p.errorf("value of %s must be a quoted string, number or boolean, got %q", f, v)
		}
	}
	return p.setTag(req, op, key, v)
}

// attributeKey strips the TraceQL scope from an attribute reference. The index
// matches "service.name" on the resource and any other key on span or
// resource, so resource.x and span.x both become x.
func attributeKey(f string) (string, bool) {
	for _, prefix := range []string{"resource.", "span.", "."} {
		if k, ok := strings.CutPrefix(f, prefix); ok && k != "" {
			return k, true
		}
	}
	return "", false
}

func (p *tqlParser) setTag(req *readerpb.SearchRequest, op, key, v string) error {
	if op != "=" {
		return p.errorf("operator %s is not supported on %s; only = is", op, key)
	}
	if have, ok := req.Tags[key]; ok && have != v {
		return p.errorf("conflicting conditions %s = %q and %s = %q", key, have, key, v)
	}
	req.Tags[key] = v
	return nil
}

func (p *tqlParser) durationBound(op string, d int64, minp, maxp *int64) error {
	switch op {
	case ">":
		*minp = max(*minp, d+1)
	case ">=":
		*minp = max(*minp, d)
	case "<", "<=":
		if op == "<" {
			d--
		}
		if d <= 0 {
			return p.errorf("duration %s %dns matches nothing", op, d)
		}
		if *maxp == 0 || d < *maxp {
			*maxp = d
		}
	case "=":
		*minp, *maxp = d, d
	default:
		return p.errorf("operator %s is not supported on durations", op)
	}
	if *maxp != 0 && *minp > *maxp {
		return p.errorf("duration bounds contradict each other")
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// parseLogfmtTags parses Tempo's tags parameter: space-separated key=value
// pairs where a value may be double-quoted with Go escapes, e.g.
// ` service.name="checkout" name="POST /pay"`. A later duplicate key wins, as
// in Tempo.
func parseLogfmtTags(s string) (map[string]string, error) {
	out := map[string]string{}
	i := 0
	for {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
			i++
		}
		if i >= len(s) {
			return out, nil
		}
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ' ' && s[i] != '"' && s[i] != '\t' {
			i++
		}
		key := s[start:i]
		if key == "" {
			return nil, fmt.Errorf("tags: expected a key at offset %d", start)
		}
		if i >= len(s) || s[i] != '=' {
			return nil, fmt.Errorf("tags: key %q has no =value", truncate(key))
		}
		i++
		if i < len(s) && s[i] == '"' {
			end := i + 1
			for end < len(s) && s[end] != '"' {
				if s[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(s) {
				return nil, fmt.Errorf("tags: unterminated quoted value of %q", truncate(key))
			}
			v, err := strconv.Unquote(s[i : end+1])
			if err != nil {
				return nil, fmt.Errorf("tags: bad quoted value of %q: %w", truncate(key), err)
			}
			out[key] = v
			i = end + 1
			if i < len(s) && s[i] != ' ' && s[i] != '\t' {
				return nil, fmt.Errorf("tags: expected a space after the value of %q", truncate(key))
			}
			continue
		}
		vs := i
		for i < len(s) && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' {
			if s[i] == '"' || s[i] == '=' {
				return nil, fmt.Errorf("tags: unexpected %q in the value of %q; quote values with spaces, quotes or =", s[i], truncate(key))
			}
			i++
		}
		out[key] = s[vs:i]
	}
}
