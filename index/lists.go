package index

import (
	"sync"
	"time"
)

// listCache remembers which list keys (services, operations, tag names, tag
// values) are on disk, so a write adds a list key only the first time it
// sees the value, and again when half the retention has passed, to renew
// its TTL. It also enforces the caps: a group (the values of one tag key,
// the operations of one service, all tag names, all services) admits at most
// its limit of distinct members, so high-cardinality attributes cannot grow
// the lists, or this cache, without bound.
type listCache struct {
	refresh time.Duration // 0: never rewrite

	mu      sync.Mutex
	written map[string]time.Time // list key -> last written
	groups  map[string]int       // group -> members admitted
	byKey   map[string]string    // list key -> group, for forget
}

func newListCache(retention time.Duration) *listCache {
	return &listCache{
		refresh: retention / 2,
		written: map[string]time.Time{},
		groups:  map[string]int{},
		byKey:   map[string]string{},
	}
}

// admit reports whether key should be written now, and if so records it as
// written at now.
func (c *listCache) admit(group string, key []byte, limit int, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.written[string(key)]; ok {
		if c.refresh == 0 || now.Sub(t) < c.refresh {
			return false
		}
		c.written[string(key)] = now
		return true
	}
	if c.groups[group] >= limit {
		return false
	}
	c.add(group, string(key), now)
	return true
}

func (c *listCache) add(group, key string, at time.Time) {
	c.groups[group]++
	c.written[key] = at
	c.byKey[key] = group
}

// known reports whether key was admitted.
func (c *listCache) known(key []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.written[string(key)]
	return ok
}

// load records a list key found on disk.
func (c *listCache) load(group string, key []byte, writtenAt time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.written[string(key)]; !ok {
		c.add(group, string(key), writtenAt)
	}
}

// forget drops the keys a failed write admitted, so a later write admits
// them again.
func (c *listCache) forget(entries []listEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range entries {
		k := string(l.key)
		if g, ok := c.byKey[k]; ok {
			delete(c.written, k)
			delete(c.byKey, k)
			if c.groups[g]--; c.groups[g] <= 0 {
				delete(c.groups, g)
			}
		}
	}
}

// listGroup names the cap group of a list key read back from disk.
func listGroup(key []byte) (string, bool) {
	if len(key) < 2 {
		return "", false
	}
	switch key[0] {
	case prefixSvcList:
		return "s", true
	case prefixOpList:
		svc, _, ok := readLV(key[1:])
		return "o" + svc, ok
	case prefixTagName:
		return "n", true
	case prefixTagValue:
		k, _, ok := readLV(key[1:])
		return "v" + k, ok
	}
	return "", false
}
