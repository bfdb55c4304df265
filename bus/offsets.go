package bus

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Ledger tracks, per partition, which consumed records are still being worked
// on, so the committed offset never passes a record whose traces are not yet
// decided and written. A crash then replays from the oldest unfinished record:
// nothing acknowledged is lost, and idempotent writes make the replay harmless.
//
// A record's Ticket starts with one reference held by the consumer; every trace
// that buffers part of the record takes another (Acquire) and gives it back
// when the trace is written or dropped (Release). Records complete in any
// order; the commit point is the first incomplete record of each partition.
type Ledger struct {
	mu    sync.Mutex
	parts map[tp]*partLedger
	// incomplete counts the tickets with references, of partitions not
	// forgotten: Pending is asked on every poll, and counting them each
	// time walked every record held.
	incomplete int
}

type tp struct {
	topic     string
	partition int32
}

type partLedger struct {
	l       *Ledger
	tp      tp
	pending []*Ticket // in offset order; completed ones are popped from the front
	next    kgo.EpochOffset
	valid   bool
}

// Ticket is one consumed record's reference count. The indexer holds one
// per record for seconds (decision wait, write, commit), hundreds of
// thousands under load, so it is kept to 32 bytes.
type Ticket struct {
	p      *partLedger
	offset int64
	epoch  int32
	refs   int32
	// retired: the ledger no longer holds it (it completed and Committable
	// dropped it, or its partition was forgotten), so incomplete does not
	// count it whatever its references do.
	retired bool
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger { return &Ledger{parts: map[tp]*partLedger{}} }

// Begin registers a consumed record, returning its ticket with one reference.
func (l *Ledger) Begin(r *kgo.Record) *Ticket {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := tp{r.Topic, r.Partition}
	p := l.parts[k]
	if p == nil {
		p = &partLedger{l: l, tp: k}
		l.parts[k] = p
	}
	t := &Ticket{p: p, offset: r.Offset, epoch: r.LeaderEpoch, refs: 1}
	l.incomplete++
	p.pending = append(p.pending, t)
	p.next = kgo.EpochOffset{Epoch: r.LeaderEpoch, Offset: r.Offset + 1}
	p.valid = true
	return t
}

// Topic, Partition and Offset locate the ticket's record, so a consumer can
// fetch it again later (the indexer does, for traces an exemplar pins after
// they were dropped).
func (t *Ticket) Topic() string { return t.p.tp.topic }

// Partition is the record's partition.
func (t *Ticket) Partition() int32 { return t.p.tp.partition }

// Offset is the record's offset.
func (t *Ticket) Offset() int64 { return t.offset }

// Acquire takes another reference on the record.
func (t *Ticket) Acquire() {
	t.p.l.mu.Lock()
	t.refs++
	if t.refs == 1 && !t.retired {
		t.p.l.incomplete++
	}
	t.p.l.mu.Unlock()
}

// Release gives a reference back; at zero the record is complete.
func (t *Ticket) Release() {
	t.p.l.mu.Lock()
	t.refs--
	if t.refs == 0 && !t.retired {
		t.p.l.incomplete--
	}
	t.p.l.mu.Unlock()
}

// Committable returns, per partition, the offset up to which every record is
// complete: the oldest incomplete record's offset, or one past the newest
// consumed record when none is pending.
func (l *Ledger) Committable() map[string]map[int32]kgo.EpochOffset {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]map[int32]kgo.EpochOffset{}
	for k, p := range l.parts {
		i := 0
		for i < len(p.pending) && p.pending[i].refs <= 0 {
			p.pending[i].retired = true
			i++
		}
		// Drop completed tickets; keep the slice's capacity from growing forever.
		p.pending = append(p.pending[:0], p.pending[i:]...)
		if !p.valid {
			continue
		}
		at := p.next
		if len(p.pending) > 0 {
			at = kgo.EpochOffset{Epoch: p.pending[0].epoch, Offset: p.pending[0].offset}
		}
		if out[k.topic] == nil {
			out[k.topic] = map[int32]kgo.EpochOffset{}
		}
		out[k.topic][k.partition] = at
	}
	return out
}

// Pending counts records not yet complete (saturation).
func (l *Ledger) Pending() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.incomplete
}

// Forget drops the partitions' state after they were revoked or lost; the
// records still pending will be replayed by the partitions' next owner.
func (l *Ledger) Forget(parts map[string][]int32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for topic, ps := range parts {
		for _, p := range ps {
			if pl := l.parts[tp{topic, p}]; pl != nil {
				for _, t := range pl.pending {
					if t.refs > 0 {
						l.incomplete--
					}
					t.retired = true
				}
			}
			delete(l.parts, tp{topic, p})
		}
	}
}
