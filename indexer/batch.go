package indexer

import (
	"context"
	"time"
)

// batchJobs collects the jobs of ch into batches for one writer: add takes a
// job and reports whether the batch is now full; flush writes the batch. A
// batch is flushed when full, wait after its first job, or when ch closes.
func batchJobs[J any](ch <-chan J, wait time.Duration, add func(J) (full bool), flush func()) {
	pending := false // a job is in the batch
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var (
			j  J
			ok bool
		)
		if !pending {
			j, ok = <-ch
		} else {
			select {
			case j, ok = <-ch:
			case <-timer.C:
				flush()
				pending = false
				continue
			}
		}
		if !ok {
			if pending {
				flush()
			}
			return
		}
		if !pending {
			timer.Reset(wait)
			pending = true
		}
		if add(j) {
			flush()
			pending = false
		}
	}
}

// retryWrite calls write until it succeeds, each attempt bounded by 30 s,
// backing off between failures, which are counted and logged with what was
// being written (n of unit). The records behind the write stay uncommitted
// meanwhile, and the full write queue pushes back on the consumer.
func (ix *Indexer) retryWrite(what, unit string, n int, write func(ctx context.Context) error) {
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := write(ctx)
		cancel()
		if err == nil {
			return
		}
		ix.m.writeErrors.Inc()
		ix.log.Error("write "+what+" failed; retrying", unit, n, "attempt", attempt+1, "err", err)
		time.Sleep(min(time.Duration(attempt+1)*200*time.Millisecond, 5*time.Second))
	}
}
