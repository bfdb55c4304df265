package alerting

// Key layout of the alert event store (Badger). Integers are big-endian so
// byte order is time order.
//
//	0x01 | event time (int64 unix ns, 8 B) | event ID (8 B)  →  event JSON
//	0x02 | event ID (8 B)                                    →  event time (8 B)
//
// Both keys of an event expire together at event time + Retention (Badger
// TTL), so retention is enforced by Badger's compaction, not by a sweeper.
// Writes are idempotent: an event's ID is derived from what it describes, so
// a replay (Alertmanager re-sending a notification, the ruler restarting)
// rewrites the same keys.

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	prefixByTime byte = 0x01
	prefixByID   byte = 0x02
	idLen             = 8
	// MaxEvents caps the events one Events call returns (the oldest
	// first), so a wide range cannot exhaust memory.
	MaxEvents = 10000
)

// ErrBadID reports an event ID that is not 16 hex digits.
var ErrBadID = errors.New("invalid alert event ID: want 16 hex digits")

// Store keeps alert events in Badger.
type Store struct {
	db     *badger.DB
	opts   StoreOptions
	logger *slog.Logger
	writes *prometheus.CounterVec
}

// StoreOptions configures the event store.
type StoreOptions struct {
	// Retention is how long an event is kept after its time. Default 30 days.
	Retention time.Duration
	// SyncWrites fsyncs every write. Default false: events are few, and a
	// process crash keeps Badger's committed writes.
	SyncWrites bool
}

// DefaultStoreOptions returns the defaults documented on each field.
func DefaultStoreOptions() StoreOptions {
	return StoreOptions{Retention: 30 * 24 * time.Hour}
}

// OpenStore opens (or creates) the event store in dir. reg may be nil.
func OpenStore(dir string, logger *slog.Logger, reg prometheus.Registerer, opts StoreOptions) (*Store, error) {
	if opts.Retention <= 0 {
		return nil, fmt.Errorf("open alert store: retention must be positive, got %s", opts.Retention)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	bo := badger.DefaultOptions(dir).
		WithLogger(badgerLogger{logger.With("component", "alert-badger")}).
		WithSyncWrites(opts.SyncWrites).
		// Events are few and small: keep Badger's memory to a few MiB.
		WithMemTableSize(4 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(2 << 20).
		WithIndexCacheSize(1 << 20).
		WithValueLogFileSize(8 << 20).
		WithValueThreshold(64 << 10).
		WithCompression(options.ZSTD).
		WithNumCompactors(2).
		WithMetricsEnabled(false).
		WithNumGoroutines(1)
	db, err := badger.Open(bo)
	if err != nil {
		return nil, fmt.Errorf("open alert store %s: %w", dir, err)
	}
	s := &Store{db: db, opts: opts, logger: logger,
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "threadline_alert_events_written_total",
			Help: "Alert events written to the alert store, by source and state.",
		}, []string{"source", "state"}),
	}
	if reg != nil {
		if err := reg.Register(s.writes); err != nil {
			return nil, errors.Join(fmt.Errorf("open alert store: register metrics: %w", err), db.Close())
		}
	}
	return s, nil
}

// Close closes the store.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close alert store: %w", err)
	}
	return nil
}

// Put writes ev (replacing an event with the same ID and time). An event
// older than the retention is not written.
func (s *Store) Put(ctx context.Context, ev Event) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put alert event: %w", err)
	}
	id, err := decodeID(ev.ID)
	if err != nil {
		return fmt.Errorf("put alert event: %w", err)
	}
	expires := ev.Time.Add(s.opts.Retention)
	if !expires.After(time.Now()) {
		return nil
	}
	val, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("put alert event %s: %w", ev.ID, err)
	}
	tk := timeKey(ev.Time.UnixNano(), id)
	err = s.db.Update(func(txn *badger.Txn) error {
		// An event's time may change on rewrite (it should not, but the
		// old time key must not linger if it does).
		if old, err := txn.Get(idKey(id)); err == nil {
			if err := old.Value(func(v []byte) error {
				if len(v) == 8 && int64(binary.BigEndian.Uint64(v)) != ev.Time.UnixNano() {
					return txn.Delete(timeKey(int64(binary.BigEndian.Uint64(v)), id))
				}
				return nil
			}); err != nil {
				return err
			}
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		exp := uint64(expires.Unix())
		if err := txn.SetEntry(&badger.Entry{Key: tk, Value: val, ExpiresAt: exp}); err != nil {
			return err
		}
		return txn.SetEntry(&badger.Entry{Key: idKey(id), Value: binary.BigEndian.AppendUint64(nil, uint64(ev.Time.UnixNano())), ExpiresAt: exp})
	})
	if err != nil {
		return fmt.Errorf("put alert event %s: %w", ev.ID, err)
	}
	s.writes.WithLabelValues(ev.Source, string(ev.State)).Inc()
	return nil
}

// Events returns the events with start <= time < end, oldest first, at most
// MaxEvents.
func (s *Store) Events(ctx context.Context, start, end time.Time) ([]Event, error) {
	var out []Event
	from := timeKey(start.UnixNano(), [idLen]byte{})
	to := timeKey(end.UnixNano(), [idLen]byte{})
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixByTime}, PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Seek(from); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if string(it.Item().Key()) >= string(to) || len(out) >= MaxEvents {
				return nil
			}
			var ev Event
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &ev) }); err != nil {
				// One bad value must not hide the rest of the range.
				s.logger.Warn("skip undecodable alert event", "key", hex.EncodeToString(it.Item().Key()), "err", err)
				continue
			}
			out = append(out, ev)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read alert events: %w", err)
	}
	return out, nil
}

// Event returns the event with this ID; found is false when there is none.
func (s *Store) Event(ctx context.Context, id string) (ev Event, found bool, err error) {
	raw, err := decodeID(id)
	if err != nil {
		return Event{}, false, err
	}
	err = s.db.View(func(txn *badger.Txn) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		item, err := txn.Get(idKey(raw))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		tv, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		if len(tv) != 8 {
			return fmt.Errorf("corrupt index entry of %s", id)
		}
		item, err = txn.Get(timeKey(int64(binary.BigEndian.Uint64(tv)), raw))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		return item.Value(func(v []byte) error { return json.Unmarshal(v, &ev) })
	})
	if err != nil {
		return Event{}, false, fmt.Errorf("read alert event %s: %w", id, err)
	}
	return ev, found, nil
}

func decodeID(id string) ([idLen]byte, error) {
	var out [idLen]byte
	if len(id) != 2*idLen {
		return out, ErrBadID
	}
	if _, err := hex.Decode(out[:], []byte(id)); err != nil {
		return out, ErrBadID
	}
	return out, nil
}

func timeKey(ns int64, id [idLen]byte) []byte {
	k := make([]byte, 0, 1+8+idLen)
	k = append(k, prefixByTime)
	// Times before 1970 sort first: flip the sign bit.
	k = binary.BigEndian.AppendUint64(k, uint64(ns)^(1<<63))
	return append(k, id[:]...)
}

func idKey(id [idLen]byte) []byte {
	return append([]byte{prefixByID}, id[:]...)
}

// badgerLogger routes Badger's log lines to slog; its INFO chatter becomes Debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.log(slog.LevelError, f, a) }
func (b badgerLogger) Warningf(f string, a ...any) { b.log(slog.LevelWarn, f, a) }
func (b badgerLogger) Infof(f string, a ...any)    { b.log(slog.LevelDebug, f, a) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.log(slog.LevelDebug, f, a) }

func (b badgerLogger) log(level slog.Level, f string, a []any) {
	if b.l.Enabled(context.Background(), level) {
		b.l.Log(context.Background(), level, strings.TrimSpace(fmt.Sprintf(f, a...)))
	}
}
