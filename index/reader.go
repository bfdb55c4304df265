package index

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/dgraph-io/badger/v4"
	readerpb "github.com/threadline/threadline/proto/reader/v1"
	"github.com/threadline/threadline/span"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// Trace returns every stored span of one trace, or found=false.
func (s *Store) Trace(ctx context.Context, id span.TraceID) (StoredTrace, bool, error) {
	var (
		st    StoredTrace
		found bool
	)
	err := s.db.View(func(txn *badger.Txn) error {
		var sum *summary
		var err error
		st.Spans, sum, err = readTrace(ctx, txn, s.chunkReader(txn), id)
		if err != nil {
			return err
		}
		if sum != nil {
			st.Reasons, st.Warnings = sum.Reasons, sum.Warnings
		}
		found = sum != nil
		return nil
	})
	if err != nil {
		return StoredTrace{}, false, fmt.Errorf("read trace %s: %w", id, err)
	}
	return st, found, nil
}

// readTrace reads the summary of one trace, then its spans (readSpans).
func readTrace(ctx context.Context, txn *badger.Txn, chunks *chunkReader, id span.TraceID) ([]span.Span, *summary, error) {
	sum, found, err := chunks.summary(traceKey(id, subSummary))
	if err != nil || !found {
		return nil, nil, err
	}
	spans, err := readSpans(ctx, txn, chunks, id, &sum)
	return spans, &sum, err
}

// readSpans reads the span chunks of one trace (walkTraceChunks), then
// the resources and scopes they name. A span repeated in several
// chunks (a replay that regrouped spans) is returned once. A resource or
// scope that is missing (it can only have expired early, e.g. after the
// retention was shortened) leaves its spans with an empty one and adds a
// warning to sum.
func readSpans(ctx context.Context, txn *badger.Txn, chunks *chunkReader, id span.TraceID, sum *summary) ([]span.Span, error) {
	type ref struct{ res, scope uint64 }
	var (
		spans []span.Span
		refs  []ref
		seen  map[span.SpanID]bool
	)
	err := walkTraceChunks(ctx, chunks, id, sum, func(e chunkEntry) error {
		if seen[e.sid] {
			return nil
		}
		if seen == nil {
			seen = map[span.SpanID]bool{}
		}
		seen[e.sid] = true
		sp, err := decodeSpanBody(e.body, id, e.sid)
		if err != nil {
			return err
		}
		spans = append(spans, span.Span{Span: sp})
		refs = append(refs, ref{e.res, e.scope})
		return nil
	})
	if err != nil {
		return nil, err
	}
	resources := map[uint64]*span.Resource{}
	scopes := map[uint64]*span.Scope{}
	var missing []string
	for i, r := range refs {
		res, ok := resources[r.res]
		if !ok {
			b, found, err := getValue(txn, blobKey(blobResource, r.res))
			if err != nil {
				return nil, err
			}
			res = &span.Resource{}
			if found {
				if res, err = decodeResource(b); err != nil {
					return nil, err
				}
			} else {
				missing = append(missing, fmt.Sprintf("resource %016x of this trace has expired", r.res))
			}
			resources[r.res] = res
		}
		sc, ok := scopes[r.scope]
		if !ok {
			b, found, err := getValue(txn, blobKey(blobScope, r.scope))
			if err != nil {
				return nil, err
			}
			sc = &span.Scope{}
			if found {
				if sc, err = decodeScope(b); err != nil {
					return nil, err
				}
			} else {
				missing = append(missing, fmt.Sprintf("scope %016x of this trace has expired", r.scope))
			}
			scopes[r.scope] = sc
		}
		spans[i].Resource, spans[i].Scope = res, sc
	}
	if len(missing) > 0 {
		sum.Warnings = unionStrings(sum.Warnings, missing...)
	}
	slices.SortStableFunc(spans, func(a, b span.Span) int {
		return cmp.Compare(a.GetStartTimeUnixNano(), b.GetStartTimeUnixNano())
	})
	return spans, nil
}

// getValue reads one value, or found=false.
func getValue(txn *badger.Txn, key []byte) ([]byte, bool, error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read key %x: %w", key, err)
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return nil, false, fmt.Errorf("read key %x: %w", key, err)
	}
	return v, true, nil
}

// Services lists stored service names, sorted.
func (s *Store) Services(ctx context.Context) ([]string, error) {
	var out []string
	err := s.scanKeys(ctx, []byte{prefixSvcList}, func(rest []byte) bool {
		out = append(out, string(rest))
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	return out, nil
}

// Operations lists the operations (span name and kind) of one service, or
// of every service when service is "", sorted by service, name and kind.
func (s *Store) Operations(ctx context.Context, service string) ([]*readerpb.Operation, error) {
	prefix := []byte{prefixOpList}
	if service != "" {
		prefix = appendLV(prefix, service)
	}
	var out []*readerpb.Operation
	err := s.scanKeys(ctx, prefix, func(rest []byte) bool {
		svc := service
		if service == "" {
			var ok bool
			if svc, rest, ok = readLV(rest); !ok {
				return true
			}
		}
		if len(rest) == 0 {
			return true
		}
		out = append(out, &readerpb.Operation{
			Service:  svc,
			SpanKind: kindString(tracepb.Span_SpanKind(rest[0])),
			Name:     string(rest[1:]),
		})
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("list operations: %w", err)
	}
	slices.SortFunc(out, func(a, b *readerpb.Operation) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.Name, b.Name), strings.Compare(a.SpanKind, b.SpanKind))
	})
	return out, nil
}

// TagNames lists the attribute keys seen on resources and on spans.
func (s *Store) TagNames(ctx context.Context) (resource, spanKeys []string, err error) {
	err = s.scanKeys(ctx, []byte{prefixTagName}, func(rest []byte) bool {
		if len(rest) < 1 {
			return true
		}
		switch rest[0] {
		case scopeResource:
			resource = append(resource, string(rest[1:]))
		case scopeSpan:
			spanKeys = append(spanKeys, string(rest[1:]))
		}
		return true
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list tag names: %w", err)
	}
	return resource, spanKeys, nil
}

// DefaultTagValuesLimit is the TagValues limit when the caller passes 0.
const DefaultTagValuesLimit = 1000

// TagValues lists up to limit stored values of one attribute key, sorted.
// "service.name", "name" and "status" are the intrinsics of SearchRequest.
func (s *Store) TagValues(ctx context.Context, tag string, limit int) ([]string, error) {
	if limit <= 0 {
		limit = DefaultTagValuesLimit
	}
	var out []string
	var err error
	switch tag {
	case "service.name":
		out, err = s.Services(ctx)
	case "name":
		var ops []*readerpb.Operation
		ops, err = s.Operations(ctx, "")
		for _, op := range ops {
			out = append(out, op.Name)
		}
		slices.Sort(out)
		out = slices.Compact(out)
	case "status":
		out = []string{statusError, statusOK, statusUnset}
	default:
		prefix := appendLV([]byte{prefixTagValue}, tag)
		err = s.scanKeys(ctx, prefix, func(rest []byte) bool {
			out = append(out, string(rest))
			return len(out) < limit
		})
	}
	if err != nil {
		return nil, fmt.Errorf("list values of tag %q: %w", tag, err)
	}
	return out[:min(len(out), limit)], nil
}

// scanKeys calls fn with the remainder of every key under prefix, in key order, until fn returns false. Values are never
// read.
func (s *Store) scanKeys(ctx context.Context, prefix []byte, fn func(rest []byte) bool) error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		n := 0
		for it.Rewind(); it.Valid(); it.Next() {
			if n++; n%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if !fn(it.Item().Key()[len(prefix):]) {
				return nil
			}
		}
		return ctx.Err()
	})
}
