package logstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Defaults are the standing level thresholds (OTLP severity numbers).
type Defaults struct {
	// MinLevel applies to lines without a trace.
	MinLevel int32
	// MinLevelDropped applies to lines of traces the sampler dropped.
	MinLevelDropped int32
}

// Override lowers (or raises) one service's thresholds until Until.
type Override struct {
	Service string
	Level   int32
	Until   time.Time
}

// ErrBadOverride reports an override the policy refuses.
var ErrBadOverride = errors.New("bad level override")

// Policy decides which log lines are stored. Large fleets cannot ship every
// DEBUG line, so the standing thresholds are high and an operator lowers one
// service's threshold for a while; the override reverts by itself when its
// time is up. Overrides are persisted in Badger (with their deadline as
// TTL) so they survive a restart.
//
// Keep is on the hot path of every log line: it reads an immutable map
// through an atomic pointer, without locks.
type Policy struct {
	defaults Defaults
	maxDur   time.Duration
	db       *badger.DB

	mu        sync.Mutex // serialises writers
	overrides atomic.Pointer[map[string]Override]
}

func newPolicy(db *badger.DB, d Defaults, maxDur time.Duration) (*Policy, error) {
	p := &Policy{defaults: d, maxDur: maxDur, db: db}
	m := map[string]Override{}
	now := time.Now()
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixOverride}, PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			if len(v) != 12 {
				continue
			}
			o := Override{
				Service: string(it.Item().Key()[1:]),
				Level:   int32(binary.BigEndian.Uint32(v[:4])),
				Until:   time.Unix(0, int64(binary.BigEndian.Uint64(v[4:]))),
			}
			if o.Until.After(now) {
				m[o.Service] = o
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load level overrides: %w", err)
	}
	p.overrides.Store(&m)
	return p, nil
}

// Defaults returns the standing thresholds.
func (p *Policy) Defaults() Defaults { return p.defaults }

// MaxOverrideDuration is the longest override SetOverride accepts.
func (p *Policy) MaxOverrideDuration() time.Duration { return p.maxDur }

// SetOverride sets service's threshold to level until until. An until not
// after now removes the override (revert early). until may be at most
// MaxOverrideDuration from now.
func (p *Policy) SetOverride(service string, level int32, until time.Time) error {
	return p.setOverride(service, level, until, time.Now())
}

func (p *Policy) setOverride(service string, level int32, until, now time.Time) error {
	service = strings.TrimSpace(service)
	if service == "" {
		return fmt.Errorf("%w: service is empty", ErrBadOverride)
	}
	if level < 1 || level > 24 {
		return fmt.Errorf("%w: severity %d out of range 1-24", ErrBadOverride, level)
	}
	if until.Sub(now) > p.maxDur+time.Second {
		return fmt.Errorf("%w: lasts %s, more than the %s allowed", ErrBadOverride, until.Sub(now).Round(time.Second), p.maxDur)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	key := append([]byte{prefixOverride}, service...)
	remove := !until.After(now)
	err := p.db.Update(func(txn *badger.Txn) error {
		if remove {
			return txn.Delete(key)
		}
		v := make([]byte, 12)
		binary.BigEndian.PutUint32(v[:4], uint32(level))
		binary.BigEndian.PutUint64(v[4:], uint64(until.UnixNano()))
		e := badger.NewEntry(key, v)
		e.ExpiresAt = uint64(until.Unix()) + 1
		return txn.SetEntry(e)
	})
	if err != nil {
		return fmt.Errorf("persist level override: %w", err)
	}
	old := *p.overrides.Load()
	m := make(map[string]Override, len(old)+1)
	for k, o := range old {
		if o.Until.After(now) {
			m[k] = o
		}
	}
	if remove {
		delete(m, service)
	} else {
		m[service] = Override{Service: service, Level: level, Until: until}
	}
	p.overrides.Store(&m)
	return nil
}

// Overrides returns the overrides in force at now, by service, and forgets
// expired ones.
func (p *Policy) Overrides(now time.Time) []Override {
	cur := *p.overrides.Load()
	out := make([]Override, 0, len(cur))
	expired := false
	for _, o := range cur {
		if o.Until.After(now) {
			out = append(out, o)
		} else {
			expired = true
		}
	}
	slices.SortFunc(out, func(a, b Override) int { return strings.Compare(a.Service, b.Service) })
	if expired {
		p.mu.Lock()
		// Rebuild from the current map: a SetOverride may have raced us.
		latest := *p.overrides.Load()
		m := make(map[string]Override, len(latest))
		for k, o := range latest {
			if o.Until.After(now) {
				m[k] = o
			}
		}
		p.overrides.Store(&m)
		p.mu.Unlock()
	}
	return out
}

// Keep reports whether a line of service at severity is stored. Lines of
// kept traces are stored at every level; lines of dropped traces at
// MinLevelDropped and above, lines without a trace at MinLevel and above —
// or, for either, at the service's override if it is lower.
func (p *Policy) Keep(service string, severity int32, traceKept, hasTrace bool, now time.Time) bool {
	if hasTrace && traceKept {
		return true
	}
	threshold := p.defaults.MinLevel
	if hasTrace {
		threshold = p.defaults.MinLevelDropped
	}
	if m := *p.overrides.Load(); len(m) > 0 {
		if o, ok := m[service]; ok && o.Until.After(now) {
			threshold = min(threshold, o.Level)
		}
	}
	return severity >= threshold
}
