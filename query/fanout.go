package query

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	readerpb "github.com/threadline/threadline/proto/reader/v1"
)

// errNoReaders reports an API built without indexers.
var errNoReaders = errors.New("no indexers configured")

// fanOutResult is what every indexer answered for one call.
type fanOutResult[T any] struct {
	// ok holds the answers of the indexers that replied.
	ok []T
	// errs holds one error per indexer that did not.
	errs []error
}

// partial reports whether some, but not all, indexers failed.
func (f fanOutResult[T]) partial() bool { return len(f.errs) > 0 && len(f.ok) > 0 }

// failed returns a non-nil error when no indexer answered.
func (f fanOutResult[T]) failed() error {
	if len(f.ok) > 0 {
		return nil
	}
	if len(f.errs) == 0 {
		return errNoReaders
	}
	return errors.Join(f.errs...)
}

// partialMessage is one line naming what the missing indexers reported.
func (f fanOutResult[T]) partialMessage() string {
	return fmt.Sprintf("%d of %d indexers failed: %v", len(f.errs), len(f.errs)+len(f.ok), errors.Join(f.errs...))
}

// fanOut calls every span reader concurrently; see fanOutTo.
func fanOut[T any](ctx context.Context, a *API, method string, call func(context.Context, readerpb.ReaderClient) (T, error)) fanOutResult[T] {
	return fanOutTo(ctx, a, method, a.readers, call)
}

// fanOutTo calls every client (one per indexer) concurrently, each under the
// per-call timeout, and collects the answers. Failures are logged and counted
// here so every route and every read API reports them the same way.
func fanOutTo[C, T any](ctx context.Context, a *API, method string, clients []C, call func(context.Context, C) (T, error)) fanOutResult[T] {
	type answer struct {
		val T
		err error
	}
	answers := make([]answer, len(clients))
	var wg sync.WaitGroup
	for i, rd := range clients {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, a.cfg.ReaderTimeout)
			defer cancel()
			v, err := call(cctx, rd)
			if err != nil {
				err = fmt.Errorf("indexer %d %s: %w", i, method, err)
			}
			answers[i] = answer{val: v, err: err}
		})
	}
	wg.Wait()
	var res fanOutResult[T]
	for _, an := range answers {
		if an.err != nil {
			res.errs = append(res.errs, an.err)
			continue
		}
		res.ok = append(res.ok, an.val)
	}
	if len(res.errs) > 0 && ctx.Err() == nil {
		// A client that went away is not an indexer failure.
		a.metrics.readerErrors.WithLabelValues(method).Add(float64(len(res.errs)))
		if res.partial() {
			a.metrics.partial.WithLabelValues(method).Inc()
		}
		a.logger.Warn("indexer read failed", "method", method,
			"failed", len(res.errs), "indexers", len(clients), "err", errors.Join(res.errs...))
	}
	return res
}

// failureStatus maps a failed fan-out to an HTTP status: 503 when no indexer
// is configured or all were unavailable (retry later), 504 when all timed out,
// 502 otherwise.
func failureStatus(err error) int {
	if errors.Is(err, errNoReaders) {
		return http.StatusServiceUnavailable
	}
	var unavailable, deadline, total int
	for _, e := range unwrapJoined(err) {
		total++
		switch {
		case errors.Is(e, context.DeadlineExceeded) || status.Code(e) == codes.DeadlineExceeded:
			deadline++
		case status.Code(e) == codes.Unavailable:
			unavailable++
		}
	}
	switch {
	case total > 0 && unavailable == total:
		return http.StatusServiceUnavailable
	case total > 0 && deadline == total:
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

func unwrapJoined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
