package indexer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/klauspost/compress/s2"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/threadline/threadline/span"
)

// packer compresses the records the decision buffer holds, which hold
// decision-wait's worth of traffic and are most of the indexer's memory
// under load.
//
// A record is an OTLP TracesData: per resource a ResourceSpans, holding the
// resource and per instrumentation scope a ScopeSpans, holding the scope and
// the spans. The resource and scope fields (heads) are about a quarter of a
// record's bytes and the same from record to record, so the packer keeps
// each distinct head once, in a table, and a packed record is its outline
// (which heads, how many bytes of spans under each) and its spans' bytes,
// compressed with S2.
//
// What the spans repeat they mostly repeat from the records before them
// (attribute keys, common values), which a block of one record cannot refer
// to. So while the buffer is large (dense, set by the indexer) they are
// compressed against an S2 dictionary made from the latest 64 KiB of spans,
// a new one made now and then to follow the traffic; S2 has no assembly
// encoder for dictionaries, and that costs half as much time again. On the
// load generator's records (4.6 KB, five spans in three resources): 1.3 KB
// a record in about 3.8 µs, dense 0.72 KB in about 5.6 µs (unpacking 1.0
// and 1.4 µs); the whole record alone held 1.85 KB.
//
// A record unpacks byte for byte. One the outline cannot reproduce (fields
// out of their usual order, framing in non-minimal varints, a huge head, too
// many heads) is packed whole, the same way (against the dictionary when
// dense).
//
// A chunk keeps the generation (dictionary and head table) it was packed
// with, so both live while chunks need them. A packer is not safe for
// concurrent use: the indexer's is used only from HandleRecords, whose calls
// never overlap; chunks unpack on any goroutine.
type packer struct {
	gen     *packGen
	made    time.Time // when gen's dictionary was made
	sample  []byte    // spans gathered for the next dictionary
	since   int       // records packed since the dictionary was made
	due     bool      // a new dictionary is due: records are sampled for it
	scratch []byte    // encoder output, before the exact copy a chunk keeps
	// dense packs against the dictionary: smaller and slower. The indexer
	// sets it while its buffer is large, where memory is at stake.
	dense bool

	// A record's layout (see layout), reused from record to record.
	rs      []rsLayout
	ss      []ssLayout
	spans   []byte // the spans' bytes, gathered when not contiguous
	outline []byte
	key     []byte
}

// rsLayout and ssLayout are a ResourceSpans and a ScopeSpans of a record
// being packed: their heads, and for a ScopeSpans its spans' bytes, for a
// ResourceSpans how many of p.ss are its.
type (
	rsLayout struct {
		headRef
		scopes int
	}
	ssLayout struct {
		headRef
		spans []byte
	}
	// headRef is a head: the fields before the children (pre) and after
	// them (post), and its place in the generation's table.
	headRef struct {
		pre, post []byte
		index     int32
	}
)

// packGen is one generation of what packed chunks refer to: an S2
// dictionary and a table of heads. The packer adds heads; a chunk reads the
// ones it names, which were added before the chunk was made and handed to
// other goroutines under the indexer's lock, so reads need no lock of
// their own, and heads has a fixed length so that adding never moves it.
type packGen struct {
	dict  *s2.Dict // nil: none yet
	heads []packHead
	// The packer's alone.
	n, size int
	index   map[string]int32 // by headKey
}

// packHead is the fields of a ResourceSpans or ScopeSpans before its
// children (pre) and after them (post).
type packHead struct {
	pre, post []byte
	set       bool
}

// A generation holds at most maxGenHeads heads of maxGenHeadBytes in all;
// the packer starts a new one (with the same dictionary) when the next
// record's heads do not fit. A record with a head over maxHeadBytes, or with
// more heads than a generation holds, is packed whole.
const (
	maxGenHeads     = 1024
	maxGenHeadBytes = 1 << 20
	maxHeadBytes    = 16 << 10
)

func newPackGen(dict *s2.Dict) *packGen {
	return &packGen{dict: dict, heads: make([]packHead, maxGenHeads), index: map[string]int32{}}
}

// A dictionary packs packDictRecords records, or packs for packDictAge,
// before the next is made: seconds under full load, a minute under light.
const (
	packDictRecords = 200_000
	packDictAge     = time.Minute
)

// maxPackScratch bounds the buffers a packer keeps between records.
const maxPackScratch = 1 << 20

// Packed chunk formats: the first byte of chunk.data, with packedDict set
// when its S2 block was compressed against the generation's dictionary.
const (
	// packedWhole: S2 block of the record.
	packedWhole byte = iota
	// packedOutline: uvarint record length · uvarint outline length ·
	// outline · S2 block of the spans' bytes. The outline: uvarint
	// resources, then per resource uvarint head · uvarint scopes, then per
	// scope uvarint head · uvarint length of its spans' bytes.
	packedOutline

	// packedDict, or'd into either: the S2 block needs the dictionary.
	packedDict byte = 0x80
)

// pack makes a held chunk from a record value, which the Kafka client may
// reuse, and counts its spans. An error wraps span.ErrMalformed.
func (p *packer) pack(value []byte, now time.Time) (chunk, error) {
	spans, ok, err := p.layout(value)
	if err != nil {
		return chunk{}, err
	}
	body := value
	if ok {
		body = p.gather()
	}
	p.learn(body, now)
	var data []byte
	if ok && p.intern() {
		data = p.packOutline(len(value), body)
	} else {
		data = p.encode([]byte{packedWhole}, nil, value)
	}
	p.since++
	p.trim()
	return chunk{data: data, spans: spans, packed: true, gen: p.gen}, nil
}

// learn samples what is about to be compressed while a new dictionary is
// due (the first, or the current one has packed enough or is old), and
// makes it, in a new generation, from the latest 64 KiB.
func (p *packer) learn(b []byte, now time.Time) {
	if p.gen == nil {
		p.gen, p.due = newPackGen(nil), true
	}
	p.due = p.due || p.since >= packDictRecords || now.Sub(p.made) >= packDictAge
	if !p.due {
		return
	}
	p.sample = append(p.sample, b[max(0, len(b)-s2.MaxDictSize):]...)
	if len(p.sample) < s2.MaxDictSize {
		return
	}
	// MakeDict keeps the slice it is given, so it gets a copy of the
	// latest 64 KiB; b's opening bytes show it where records' spans (or
	// records) start in there (its first repeat offset).
	if d := s2.MakeDict(bytes.Clone(p.sample[len(p.sample)-s2.MaxDictSize:]), b[:min(len(b), 16)]); d != nil {
		p.gen, p.since, p.made, p.due = newPackGen(d), 0, now, false
	}
	p.sample = p.sample[:0]
}

// layout parses a record into p.rs and p.ss. ok is false when an outline
// would not reproduce it byte for byte.
func (p *packer) layout(value []byte) (spans int, ok bool, err error) {
	p.rs, p.ss = p.rs[:0], p.ss[:0]
	size := 0 // of the record as an outline reproduces it
	first, last, ok, err := children(value, 1, func(rs []byte) error {
		n := len(p.ss)
		first, last, inOrder, err := children(rs, 2, func(ss []byte) error {
			first, last, inOrder, err := children(ss, 2, func([]byte) error {
				spans++
				return nil
			})
			ok = ok && inOrder
			p.ss = append(p.ss, ssLayout{headRef: headRef{pre: ss[:first], post: ss[last:]}, spans: ss[first:last]})
			return err
		})
		ok = ok && inOrder
		r := rsLayout{headRef: headRef{pre: rs[:first], post: rs[last:]}, scopes: len(p.ss) - n}
		p.rs = append(p.rs, r)
		l := len(r.pre) + len(r.post)
		for _, s := range p.ss[n:] {
			l += framed(len(s.pre) + len(s.spans) + len(s.post))
		}
		size += framed(l)
		return err
	})
	if err != nil {
		return 0, false, fmt.Errorf("read record: %w", err)
	}
	// Fields of the record's own beside resource_spans, or a framing an
	// outline would write shorter: packed whole.
	return spans, ok && first == 0 && last == len(value) && size == len(value), nil
}

// framed is the length of a length-delimited field of a one-byte tag.
func framed(n int) int { return 1 + protowire.SizeVarint(uint64(n)) + n }

// intern finds or adds the record's heads in the generation's table,
// starting a new generation when they do not fit; false when they would not
// fit one.
func (p *packer) intern() bool {
	heads := func(f func(h *headRef)) {
		for i := range p.rs {
			f(&p.rs[i].headRef)
		}
		for i := range p.ss {
			f(&p.ss[i].headRef)
		}
	}
	// All the record's heads, and those the table lacks.
	all, allSize, need, needSize, huge := 0, 0, 0, 0, false
	heads(func(h *headRef) {
		n := len(h.pre) + len(h.post)
		all, allSize, huge = all+1, allSize+n, huge || n > maxHeadBytes
		if h.index = p.lookup(h.pre, h.post); h.index < 0 {
			need, needSize = need+1, needSize+n
		}
	})
	if huge {
		return false
	}
	if p.gen.n+need > maxGenHeads || p.gen.size+needSize > maxGenHeadBytes {
		if all > maxGenHeads || allSize > maxGenHeadBytes {
			return false
		}
		p.gen = newPackGen(p.gen.dict)
		heads(func(h *headRef) { h.index = -1 })
	}
	heads(func(h *headRef) {
		if h.index < 0 {
			h.index = p.add(h.pre, h.post)
		}
	})
	return true
}

// headKey is how the table names a head: uvarint len(pre) · pre · post.
func (p *packer) headKey(pre, post []byte) []byte {
	p.key = binary.AppendUvarint(p.key[:0], uint64(len(pre)))
	p.key = append(append(p.key, pre...), post...)
	return p.key
}

func (p *packer) lookup(pre, post []byte) int32 {
	if i, ok := p.gen.index[string(p.headKey(pre, post))]; ok {
		return i
	}
	return -1
}

// add adds a head to the table (a record may name one twice: the second
// finds the first).
func (p *packer) add(pre, post []byte) int32 {
	g := p.gen
	key := p.headKey(pre, post)
	if i, ok := g.index[string(key)]; ok {
		return i
	}
	b := append(append(make([]byte, 0, len(pre)+len(post)), pre...), post...)
	i := int32(g.n)
	g.heads[i] = packHead{pre: b[:len(pre):len(pre)], post: b[len(pre):], set: true}
	g.index[string(key)] = i
	g.n++
	g.size += len(b)
	return i
}

// gather returns the spans' bytes of the record parsed by layout: the
// record's own when they are one run of it, else gathered in p.spans.
func (p *packer) gather() []byte {
	var one []byte
	n := 0
	for _, s := range p.ss {
		if len(s.spans) > 0 {
			one = s.spans
			n++
		}
	}
	if n <= 1 {
		return one
	}
	b := p.spans[:0]
	for _, s := range p.ss {
		b = append(b, s.spans...)
	}
	p.spans = b
	return b
}

// packOutline packs the record parsed by layout and interned, of size
// bytes, whose spans' bytes are spans.
func (p *packer) packOutline(size int, spans []byte) []byte {
	o := binary.AppendUvarint(p.outline[:0], uint64(len(p.rs)))
	k := 0
	for _, r := range p.rs {
		o = binary.AppendUvarint(o, uint64(r.index))
		o = binary.AppendUvarint(o, uint64(r.scopes))
		for _, s := range p.ss[k : k+r.scopes] {
			o = binary.AppendUvarint(o, uint64(s.index))
			o = binary.AppendUvarint(o, uint64(len(s.spans)))
		}
		k += r.scopes
	}
	p.outline = o
	var h [1 + 2*binary.MaxVarintLen64]byte
	h[0] = packedOutline
	head := binary.AppendUvarint(binary.AppendUvarint(h[:1], uint64(size)), uint64(len(o)))
	return p.encode(head, o, spans)
}

// encode compresses value (against the generation's dictionary, if dense
// and there is one) into scratch and returns head, outline and an exact
// copy of it; head[0] is the format, to which it adds packedDict.
func (p *packer) encode(head, outline, value []byte) []byte {
	buf := p.scratch
	if n := s2.MaxEncodedLen(len(value)); cap(buf) < n {
		buf = make([]byte, n)
		if n <= maxPackScratch { // one huge record is not kept for good
			p.scratch = buf
		}
	}
	var enc []byte
	if p.dense && p.gen.dict != nil {
		enc = p.gen.dict.Encode(buf[:cap(buf)], value)
		head[0] |= packedDict
	} else {
		enc = s2.Encode(buf[:cap(buf)], value)
	}
	out := make([]byte, 0, len(head)+len(outline)+len(enc))
	return append(append(append(out, head...), outline...), enc...)
}

// trim lets go of scratch grown by a huge record.
func (p *packer) trim() {
	if cap(p.spans) > maxPackScratch {
		p.spans = nil
	}
	if cap(p.sample) > 4*s2.MaxDictSize {
		p.sample = nil
	}
	if cap(p.outline) > maxPackScratch {
		p.outline = nil
	}
}

// errPacked reports a packed chunk that does not unpack: a bug, or memory
// corruption.
var errPacked = errors.New("unpack held record: corrupt")

// lease unpacks a packed chunk into a leased buffer, to be decoded with
// span.Decoder.DecodeLeased.
func (c chunk) lease() (span.Lease, error) {
	n, err := c.unpackedLen()
	if err != nil {
		return span.Lease{}, err
	}
	l := span.NewLease(n)
	if err := c.unpackInto(l.Bytes()); err != nil {
		l.Release()
		return span.Lease{}, err
	}
	return l, nil
}

// unpackedLen is the length of the record a packed chunk holds.
func (c chunk) unpackedLen() (int, error) {
	if len(c.data) == 0 {
		return 0, errPacked
	}
	switch c.data[0] &^ packedDict {
	case packedWhole:
		n, err := s2.DecodedLen(c.data[1:])
		if err != nil {
			return 0, fmt.Errorf("unpack held record: %w", err)
		}
		return n, nil
	case packedOutline:
		n, _, _, err := c.outline()
		return n, err
	}
	return 0, errPacked
}

// outline splits a packedOutline chunk.
func (c chunk) outline() (size int, outline, block []byte, err error) {
	b := c.data[1:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(maxRecordBytes) {
		return 0, nil, nil, errPacked
	}
	b = b[k:]
	o, k := binary.Uvarint(b)
	if k <= 0 || o > uint64(len(b)-k) {
		return 0, nil, nil, errPacked
	}
	b = b[k:]
	return int(n), b[:o], b[o:], nil
}

// maxRecordBytes bounds the record length an outline may claim.
const maxRecordBytes = 1 << 30

// unpackInto writes the record a packed chunk holds into dst, whose length
// is unpackedLen.
func (c chunk) unpackInto(dst []byte) error {
	var dict *s2.Dict
	if c.data[0]&packedDict != 0 {
		if c.gen == nil || c.gen.dict == nil {
			return errPacked
		}
		dict = c.gen.dict
	}
	if c.data[0]&^packedDict == packedWhole {
		return decodeExact(dst, c.data[1:], dict)
	}
	size, outline, block, err := c.outline()
	if err != nil {
		return err
	}
	if size != len(dst) || c.gen == nil {
		return errPacked
	}
	// The spans' bytes (as many as the block decodes to: the outline's
	// sum, which the end checks) decode to the end of dst and move
	// forward into place as the framing and heads are written before
	// them: a write never reaches bytes still to be moved, since
	// everything but spans that is written precedes them in the record
	// too (the check in put holds against a corrupt outline).
	total, err := s2.DecodedLen(block)
	if err != nil || total > size {
		return errPacked
	}
	from := size - total
	if err := decodeExact(dst[from:], block, dict); err != nil {
		return err
	}
	r := outlineReader{b: outline, gen: c.gen}
	w := 0
	put := func(b []byte) {
		if w+len(b) > from {
			r.err = errPacked
			return
		}
		w += copy(dst[w:], b)
	}
	field := func(tag byte, n int) {
		var f [1 + binary.MaxVarintLen64]byte
		f[0] = tag
		put(binary.AppendUvarint(f[:1], uint64(n)))
	}
	for rs := r.next(); rs > 0 && r.err == nil; rs-- {
		rh := r.head(r.next())
		scopes := r.next()
		// The resource's length needs its scopes' heads and spans: a
		// look ahead, then back.
		mark := r.b
		n := len(rh.pre) + len(rh.post)
		for ss := scopes; ss > 0 && r.err == nil; ss-- {
			sh := r.head(r.next())
			n += framed(len(sh.pre) + r.next() + len(sh.post))
		}
		r.b = mark
		field(0x0a, n) // resource_spans
		put(rh.pre)
		for ss := scopes; ss > 0 && r.err == nil; ss-- {
			sh := r.head(r.next())
			l := r.next()
			field(0x12, len(sh.pre)+l+len(sh.post)) // scope_spans
			put(sh.pre)
			if r.err != nil || from+l > size {
				return errPacked
			}
			w += copy(dst[w:], dst[from:from+l])
			from += l
			put(sh.post)
		}
		put(rh.post)
	}
	if r.err != nil || w != size || from != size {
		return errPacked
	}
	return nil
}

// outlineReader reads an outline's uvarints and finds its heads; the first
// problem sticks in err, and reads return zeros after it.
type outlineReader struct {
	b   []byte
	gen *packGen
	err error
}

func (r *outlineReader) next() int {
	if r.err != nil {
		return 0
	}
	v, k := binary.Uvarint(r.b)
	if k <= 0 || v > maxRecordBytes {
		r.err = errPacked
		return 0
	}
	r.b = r.b[k:]
	return int(v)
}

func (r *outlineReader) head(i int) packHead {
	if r.err != nil || i >= len(r.gen.heads) || !r.gen.heads[i].set {
		r.err = errPacked
		return packHead{}
	}
	return r.gen.heads[i]
}

// decodeExact decodes an S2 block that must fill dst exactly.
func decodeExact(dst, block []byte, dict *s2.Dict) error {
	n, err := s2.DecodedLen(block)
	if err != nil {
		return fmt.Errorf("unpack held record: %w", err)
	}
	if n != len(dst) {
		return errPacked
	}
	var out []byte
	if dict != nil {
		out, err = dict.Decode(dst, block)
	} else {
		out, err = s2.Decode(dst, block)
	}
	if err != nil {
		return fmt.Errorf("unpack held record: %w", err)
	}
	if len(out) > 0 && &out[0] != &dst[0] {
		return errPacked
	}
	return nil
}

// children calls fn with the value of every length-delimited field num of
// msg, in order, and returns where the first such field starts and where
// the last ends (both len(msg) when there is none); inOrder is false when
// other fields sit between them. An error wraps span.ErrMalformed, or is
// fn's.
func children(msg []byte, num protowire.Number, fn func([]byte) error) (first, last int, inOrder bool, err error) {
	first, last, inOrder = -1, -1, true
	for off := 0; off < len(msg); {
		fnum, typ, v, n := consumeField(msg[off:])
		if n < 0 {
			return 0, 0, false, span.ErrMalformed
		}
		if fnum == num && typ == protowire.BytesType {
			if err := fn(v); err != nil {
				return 0, 0, false, err
			}
			inOrder = inOrder && (last < 0 || last == off)
			if first < 0 {
				first = off
			}
			last = off + n
		}
		off += n
	}
	if first < 0 {
		first, last = len(msg), len(msg)
	}
	return first, last, inOrder, nil
}

// consumeField parses the field at the start of b: its number, wire type,
// value if length-delimited, and size; n is negative for malformed bytes.
// A bytes field with a one-byte tag and a length of one or two bytes (every
// resource_spans, scope_spans and span but the largest) takes the short
// way.
func consumeField(b []byte) (num protowire.Number, typ protowire.Type, v []byte, n int) {
	if len(b) >= 3 && b[0] >= 1<<3 && b[0] < 0x80 && b[0]&7 == byte(protowire.BytesType) {
		l, k := int(b[1]), 2
		if l >= 0x80 && b[2] < 0x80 {
			l, k = l&0x7f|int(b[2])<<7, 3
		}
		if l < 0x80 || k == 3 {
			if l <= len(b)-k {
				return protowire.Number(b[0] >> 3), protowire.BytesType, b[k : k+l], k + l
			}
			return 0, 0, nil, -1
		}
	}
	num, typ, tn := protowire.ConsumeTag(b)
	if tn < 0 {
		return 0, 0, nil, tn
	}
	if typ == protowire.BytesType {
		v, m := protowire.ConsumeBytes(b[tn:])
		if m < 0 {
			return 0, 0, nil, m
		}
		return num, typ, v, tn + m
	}
	m := protowire.ConsumeFieldValue(num, typ, b[tn:])
	if m < 0 {
		return 0, 0, nil, m
	}
	return num, typ, nil, tn + m
}
