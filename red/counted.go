package red

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"slices"
)

// Part names the Kafka record, or the part of one, that some of an observed
// trace's spans came from. A crash replays records, so records are what
// counting de-duplicates: a part counted once is skipped when a replay
// observes it again, however the replay assembles traces. A record keyed by
// one trace ID is one part (Of 1); a record mixing traces is split into one
// part per trace, Index counting from 0, and the split must come out the same
// on a replay.
type Part struct {
	Topic     string
	Partition int32
	Offset    int64
	Index, Of int
	// Spans is how many of the observation's spans, consecutive and in
	// order after those of the parts before it, came from this part.
	Spans int
}

// topicPartition names a Kafka partition.
type topicPartition struct {
	topic     string
	partition int32
}

// offsetRange is the half-open range [from, to) of offsets.
type offsetRange struct{ from, to int64 }

// countedSet is what one partition has counted: every record below floor
// (the last offset committed to Kafka, below which nothing is replayed, or
// the end of a run of counted records starting there), the records in
// ranges, and some parts of the records in partial. Offsets have gaps
// (control records, compaction, retention), so ranges are joined only when
// they touch and gaps leave the set as the floor passes them.
type countedSet struct {
	committed int64 // the offset last committed, as reported
	floor     int64
	ranges    []offsetRange // sorted, disjoint, not touching, all above floor
	partial   map[int64]*partialRecord
}

type partialRecord struct {
	of   int
	done []uint64 // bit i: part i counted
}

func (c *countedSet) has(p Part) bool {
	if p.Offset < c.floor {
		return true
	}
	i := c.rangeAt(p.Offset)
	if i < len(c.ranges) && c.ranges[i].from <= p.Offset {
		return true
	}
	pr := c.partial[p.Offset]
	return pr != nil && p.Index < pr.of && pr.done[p.Index/64]&(1<<(p.Index%64)) != 0
}

// rangeAt returns the index of the first range ending after offset.
func (c *countedSet) rangeAt(offset int64) int {
	i, _ := slices.BinarySearchFunc(c.ranges, offset, func(r offsetRange, o int64) int {
		if r.to <= o {
			return -1
		}
		return 1
	})
	return i
}

// add marks p counted; has(p) must be false.
func (c *countedSet) add(p Part) {
	if p.Of > 1 {
		pr := c.partial[p.Offset]
		if pr == nil {
			pr = &partialRecord{of: p.Of, done: make([]uint64, (p.Of+63)/64)}
			if c.partial == nil {
				c.partial = map[int64]*partialRecord{}
			}
			c.partial[p.Offset] = pr
		}
		if p.Index >= pr.of {
			return // a split that disagrees with the first one; counted, never skipped
		}
		pr.done[p.Index/64] |= 1 << (p.Index % 64)
		n := 0
		for _, w := range pr.done {
			n += bits.OnesCount64(w)
		}
		if n < pr.of {
			return
		}
		delete(c.partial, p.Offset)
	}
	c.addOffset(p.Offset)
}

// addOffset adds one whole record.
func (c *countedSet) addOffset(o int64) {
	i := c.rangeAt(o)
	joinsPrev := i > 0 && c.ranges[i-1].to == o
	joinsNext := i < len(c.ranges) && c.ranges[i].from == o+1
	switch {
	case joinsPrev && joinsNext:
		c.ranges[i-1].to = c.ranges[i].to
		c.ranges = slices.Delete(c.ranges, i, i+1)
	case joinsPrev:
		c.ranges[i-1].to = o + 1
	case joinsNext:
		c.ranges[i].from = o
	default:
		c.ranges = slices.Insert(c.ranges, i, offsetRange{o, o + 1})
	}
	c.raise(c.floor)
}

// commit records that the consumer committed offset. An offset below the
// last one means the partition's offsets started over (the topic was
// recreated, or the group's offsets were reset): what the set remembers
// names other records now, so it forgets everything and reports true.
func (c *countedSet) commit(offset int64) (reset bool) {
	if offset < c.committed {
		*c = countedSet{committed: offset, floor: offset}
		return true
	}
	c.committed = offset
	c.raise(offset)
	return false
}

// raise moves the floor up to at least floor, dropping what falls below it,
// and on past a run of counted records that starts at it.
func (c *countedSet) raise(floor int64) {
	old := c.floor
	c.floor = max(c.floor, floor)
	i := 0
	for i < len(c.ranges) && c.ranges[i].from <= c.floor {
		c.floor = max(c.floor, c.ranges[i].to)
		i++
	}
	if i > 0 {
		c.ranges = slices.Delete(c.ranges, 0, i)
	}
	if c.floor == old {
		return // most adds: nothing fell below the floor
	}
	for o := range c.partial {
		if o < c.floor {
			delete(c.partial, o)
		}
	}
}

func (c *countedSet) clone() *countedSet {
	d := &countedSet{committed: c.committed, floor: c.floor, ranges: slices.Clone(c.ranges)}
	if len(c.partial) > 0 {
		d.partial = make(map[int64]*partialRecord, len(c.partial))
		for o, pr := range c.partial {
			d.partial[o] = &partialRecord{of: pr.of, done: slices.Clone(pr.done)}
		}
	}
	return d
}

// Value: version 1 · uvarint committed · uvarint floor − committed · uvarint n · n × (uvarint from − previous
// to, uvarint to − from) · uvarint m · m × (uvarint offset − floor, uvarint
// of, ⌈of/64⌉ × u64 bitmap), partial records in offset order.
func (c *countedSet) appendTo(dst []byte) []byte {
	dst = append(dst, 1)
	dst = binary.AppendUvarint(dst, uint64(c.committed))
	dst = binary.AppendUvarint(dst, uint64(c.floor-c.committed))
	dst = binary.AppendUvarint(dst, uint64(len(c.ranges)))
	prev := c.floor
	for _, r := range c.ranges {
		dst = binary.AppendUvarint(dst, uint64(r.from-prev))
		dst = binary.AppendUvarint(dst, uint64(r.to-r.from))
		prev = r.to
	}
	offs := make([]int64, 0, len(c.partial))
	for o := range c.partial {
		offs = append(offs, o)
	}
	slices.Sort(offs)
	dst = binary.AppendUvarint(dst, uint64(len(offs)))
	for _, o := range offs {
		pr := c.partial[o]
		dst = binary.AppendUvarint(dst, uint64(o-c.floor))
		dst = binary.AppendUvarint(dst, uint64(pr.of))
		for _, w := range pr.done {
			dst = binary.BigEndian.AppendUint64(dst, w)
		}
	}
	return dst
}

// maxPartsPerRecord bounds a decoded partial record's bitmap.
const maxPartsPerRecord = 1 << 20

func decodeCounted(v []byte) (*countedSet, error) {
	corrupt := fmt.Errorf("counted records: %w", errCorrupt)
	if len(v) == 0 || v[0] != 1 {
		return nil, corrupt
	}
	v = v[1:]
	bad := false // sticky: next returns 0 once anything failed
	next := func() int64 {
		x, n := binary.Uvarint(v)
		if bad || n <= 0 || x > 1<<62 {
			bad = true
			return 0
		}
		v = v[n:]
		return int64(x)
	}
	c := &countedSet{committed: next()}
	c.floor = c.committed + next()
	prev := c.floor
	for n := next(); n > 0 && !bad; n-- {
		gap, size := next(), next()
		r := offsetRange{prev + gap, prev + gap + size}
		if size == 0 || (len(c.ranges) > 0 && gap == 0) || r.to < r.from {
			bad = true
			break
		}
		c.ranges = append(c.ranges, r)
		prev = r.to
	}
	for m := next(); m > 0 && !bad; m-- {
		d, of := next(), next()
		words := int((of + 63) / 64)
		if of < 2 || of > maxPartsPerRecord || len(v) < 8*words {
			bad = true
			break
		}
		pr := &partialRecord{of: int(of), done: make([]uint64, words)}
		for i := range pr.done {
			pr.done[i] = binary.BigEndian.Uint64(v[8*i:])
		}
		v = v[8*words:]
		if c.partial == nil {
			c.partial = map[int64]*partialRecord{}
		}
		c.partial[c.floor+d] = pr
	}
	if bad || len(v) != 0 || c.floor < c.committed {
		return nil, corrupt
	}
	return c, nil
}
