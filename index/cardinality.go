package index

import (
	"hash/maphash"
	"sync"
	"time"
)

// cardinality decides which attribute keys get postings. A key whose
// distinct indexed values exceed the cap (request IDs, user IDs, URLs with
// IDs in them, timestamps) is "high-cardinality": its postings would cost a
// key per trace and answer almost nothing a span check cannot, so it stops
// being indexed and search verifies such a tag against stored spans.
//
// The decision is persisted (0x24 keys) before any trace is written without
// the posting, and it must never be undone while such a trace lives: search
// trusts the postings of every key not marked. The mark is therefore
// rewritten, like a blob, once half the retention has passed since it was
// last written, and lives 1.5 × the retention.
//
// Counting is in memory and bounded: at most maxCardinalityKeys keys are
// counted, each up to its cap of value hashes. Keys beyond that bound are
// always indexed (correct, just not cheap). Counts restart at open, so a key
// may take up to another cap of values to be marked after a restart.
type cardinality struct {
	limit   int           // distinct values a key may have and stay indexed
	refresh time.Duration // rewrite interval of a mark; 0: never

	mu     sync.Mutex
	seed   maphash.Seed
	values map[string]map[uint64]struct{} // counted keys -> value hashes
	high   map[string]time.Time           // marked keys -> mark last written (zero: not yet)
}

// maxCardinalityKeys bounds the keys counted.
const maxCardinalityKeys = 4096

func newCardinality(limit int, retention time.Duration) *cardinality {
	return &cardinality{
		limit:   limit,
		refresh: retention / 2,
		seed:    maphash.MakeSeed(),
		values:  map[string]map[uint64]struct{}{},
		high:    map[string]time.Time{},
	}
}

// load records a mark read from disk.
func (c *cardinality) load(key string, writtenAt time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.high[key] = writtenAt
}

// isHigh reports whether key is marked; search uses it.
func (c *cardinality) isHigh(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.high[key]
	return ok
}

// snapshot returns the marked keys. A batch prepared from a snapshot may
// still name a key marked since; commit drops those postings.
func (c *cardinality) snapshot() map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]bool, len(c.high))
	for k := range c.high {
		out[k] = true
	}
	return out
}

// indexer returns a function reporting whether the posting key=value is
// to be written, for the duration of one commit, holding the lock so a
// batch pays for one lock rather than one per posting. done releases it.
func (c *cardinality) indexer() (index func(key, value []byte) bool, done func()) {
	c.mu.Lock()
	return func(key, value []byte) bool {
		if _, ok := c.high[string(key)]; ok {
			return false
		}
		vals, ok := c.values[string(key)]
		if !ok {
			if len(c.values) >= maxCardinalityKeys {
				return true
			}
			vals = map[uint64]struct{}{}
			c.values[string(key)] = vals
		}
		vals[maphash.Bytes(c.seed, value)] = struct{}{}
		if len(vals) <= c.limit {
			return true
		}
		delete(c.values, string(key))
		c.high[string(key)] = time.Time{}
		return false
	}, c.mu.Unlock
}

// due lists the marks to (re)write now: new ones and those not written for
// the refresh interval.
func (c *cardinality) due(now time.Time) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for k, at := range c.high {
		if at.IsZero() || (c.refresh > 0 && now.Sub(at) >= c.refresh) {
			out = append(out, k)
		}
	}
	return out
}

// written records that the marks of keys reached the disk at now.
func (c *cardinality) written(keys []string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range keys {
		c.high[k] = now
	}
}
