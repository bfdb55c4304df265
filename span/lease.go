package span

import (
	"sync"
	"testing"

	"github.com/threadline/threadline/sizeclass"
)

// A Lease is pooled memory for decoding one record: a buffer for the
// record's bytes and the structs of the spans decoded from them
// (DecodeLeased). The indexer decodes every record it holds from a buffer
// of its own, and allocating those buffers and the spans per record was a
// fifth of the bytes it allocated, which set how often the GC ran.
//
// Spans decoded from a lease point into it: their strings, IDs, Wire and
// deferred attributes share the record's bytes, and each span and its
// status are structs of the lease. So do their Resource and Scope, unless
// the Decoder shares them between records (a shared one is decoded from a
// copy of its own, see decodeShared). Release hands the memory to the next
// lease, so it must come only once nothing reads any of that any more:
// not the spans, nor anything taken from them without a copy. A lease
// never released is garbage-collected like any other memory.
//
// A Lease is a value that owns its memory: keep one copy of it, and
// release that copy once.
type Lease struct {
	data  []byte
	buf   *[]byte     // the pooled buffer behind data; nil for a record too big to pool
	slots *[]spanSlot // the pooled structs of the spans decoded; nil if none
}

// Records of up to byteSizes.Max() bytes, and up to slotSizes.Max() spans
// of one record, are decoded into pooled memory; bigger ones allocate as
// before. Pools hold what the decoding in flight needs, until the GC
// empties them; the bounds keep one huge record from staying pooled. The
// memory in flight is live heap, which the GC's goal doubles, so the sizes
// are close to what records need: buffers in steps of 512 bytes up to 16
// KiB (a record of the load generator's, one trace's five spans, is about
// 4 KiB), then in powers of two; slots one by one up to 16 spans, then in
// powers of two.
var (
	byteSizes = sizeclass.New(512, 32, 256<<10)
	slotSizes = sizeclass.New(1, 16, 512)
	bytePools = make([]sync.Pool, byteSizes.Count()) // *[]byte of byteSizes.Size(class)
	slotPools = make([]sync.Pool, slotSizes.Count()) // *[]spanSlot of slotSizes.Size(class)
)

// poisonReleased makes Release overwrite a buffer before it can be reused,
// in test binaries: a span read after its lease was released then reads
// poisonByte instead of data that merely looks wrong now and then.
var poisonReleased = testing.Testing()

const poisonByte = 0xa5

// NewLease returns a lease on a buffer of n bytes, for the caller to fill
// with a record (its contents are undefined until then).
func NewLease(n int) Lease {
	c := byteSizes.Of(n)
	if c < 0 {
		return Lease{data: make([]byte, n)}
	}
	p, _ := bytePools[c].Get().(*[]byte)
	if p == nil {
		b := make([]byte, byteSizes.Size(c))
		p = &b
	}
	return Lease{data: (*p)[:n], buf: p}
}

// Bytes returns the lease's buffer.
func (l *Lease) Bytes() []byte { return l.data }

// takeSlots returns zeroed structs for the n spans of the lease's record.
// They come from a pool when the lease has none yet and n is not too big.
func (l *Lease) takeSlots(n int) []spanSlot {
	c := slotSizes.Of(n)
	if n < 1 || c < 0 || l.slots != nil {
		return make([]spanSlot, n)
	}
	p, _ := slotPools[c].Get().(*[]spanSlot)
	if p == nil {
		s := make([]spanSlot, slotSizes.Size(c))
		p = &s
	}
	l.slots = p
	return (*p)[:n:n]
}

// Release returns the lease's memory to the pools (see Lease for when it
// may). The slots are zeroed, as the next decode needs them and so that
// the pool keeps nothing they pointed to alive.
func (l *Lease) Release() {
	if b := l.data; poisonReleased && cap(b) > 0 {
		b = b[:cap(b)]
		b[0] = poisonByte
		for n := 1; n < len(b); n *= 2 {
			copy(b[n:], b[:n])
		}
	}
	if l.buf != nil {
		bytePools[byteSizes.Of(cap(*l.buf))].Put(l.buf)
	}
	if l.slots != nil {
		clear(*l.slots)
		slotPools[slotSizes.Of(cap(*l.slots))].Put(l.slots)
	}
	*l = Lease{}
}
