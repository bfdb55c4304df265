package index

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/dgraph-io/badger/v4"

	"github.com/threadline/threadline/span"
)

// AddReasons records more reasons a stored trace is kept — an alert that
// links it, say — so search by reason and the trace APIs show them. The
// summary keeps its expiry. A trace the store does not hold is reported
// (false), not created: its spans are elsewhere, or were never kept.
func (s *Store) AddReasons(ctx context.Context, id span.TraceID, reasons []string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("add reasons: %w", err)
	}
	key := traceKey(id, subSummary)
	s.writeMu.Lock() // summaries are read-modify-written by commits too
	defer s.writeMu.Unlock()
	found := false
	err := s.db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read summary: %w", err)
		}
		expires := item.ExpiresAt()
		sum, _, err := s.chunkReader(txn).summary(key)
		if err != nil {
			return err
		}
		found = true
		merged := unionStrings(slices.Clone(sum.Reasons), reasons...)
		if len(merged) == len(sum.Reasons) {
			return nil
		}
		sum.Reasons = merged
		e := badger.NewEntry(key, sum.appendTo(nil))
		e.ExpiresAt = expires
		return txn.SetEntry(e)
	})
	if err != nil {
		return false, fmt.Errorf("add reasons to trace %s: %w", id, err)
	}
	return found, nil
}
