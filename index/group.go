package index

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/dgraph-io/badger/v4"
	"github.com/klauspost/compress/zstd"
)

// Chunk groups. A chunk holds one trace's spans, a few KB, and most of what
// it repeats it repeats across traces, not within one: attribute keys, user
// agents, query texts, URL prefixes. So a write does not compress chunks
// one by one: it concatenates the plain chunks of its batch into groups of
// at most groupMax bytes, compresses each group once with zstd, and stores
// it under its own key; each trace's summary then holds a reference per
// chunk (group, offset, length). On the load generator's spans a group takes
// about 105 B per span, against 146 for one chunk compressed against a
// trained S2 dictionary (the previous form) and 280 for Snappy alone.
//
// Group values are far above the value threshold, so Badger writes them
// once to its value log and the LSM holds only their pointers: flushes and
// compactions no longer copy and recompress span bytes, which used to be a
// fifth of the indexer's CPU and most of the memory of Badger's table
// builders. A read decompresses a whole group: a trace read by ID takes
// about 150 µs (BenchmarkTrace; 120 with 64 KiB groups). Readers keep the
// last few groups they decompressed, since traces of one time range share
// groups.
//
// A group is named by the xxHash64 of its plain content, so a replay of the
// same batch rewrites the same key with the same value, and a group is
// never rewritten with other content: summaries written before it still
// find their chunks where they placed them. (Groups were named by the
// trace and chunk IDs they hold, until spans sent again under the same IDs
// with other content rewrote a group under its name, and the traces placed
// in its old content became unreadable.) A replay that groups chunks
// differently writes new groups, and the summaries place the chunks there;
// the old groups are garbage until their TTL. Hashing a group takes about
// 10 µs, 2–3% of compressing it.

// groupMax is the plain size a group fills up to: a chunk that would take
// it past groupMax starts the next group (unless the group is empty: a
// chunk bigger than that is a group of its own). Bigger groups compress
// better (end to end on the load generator's spans: 64 KiB 148 B per span
// stored, 128 KiB 143) but every trace read decompresses a whole group.
// 128 KiB is zstd's largest block, so a group is compressed as one block,
// in one pass: groups sealed at 128 KiB or more, as before, were a full
// block and a sliver of a second, with its own entropy tables, and took
// about 3% longer per byte (groups saved from an end-to-end run, six
// interleaved runs: median 224 against 231 MB/s).
const groupMax = 128 << 10

// groupCacheSize is how many decompressed groups one reader keeps.
const groupCacheSize = 4

func groupKey(gid uint64) []byte { return appendU64([]byte{prefixGroup}, gid) }

// groupCodec compresses and decompresses group values; both are safe for
// concurrent use. It also recycles the plain buffers groups are built in,
// which are free again once the group is compressed, and the buffers of
// compressed values (chunk groups and summary blocks), free again once the
// commit that wrote them has returned (recycleValues).
type groupCodec struct {
	enc    *zstd.Encoder
	dec    *zstd.Decoder
	bufs   sync.Pool // *[]byte of capacity groupCap
	values sync.Pool // *[]byte
}

// groupCap holds a group just below groupMax plus the largest chunk, which
// is appended before it is known not to fit.
const groupCap = groupMax + maxChunkBytes + 8<<10

func newGroupCodec() (*groupCodec, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
		zstd.WithWindowSize(2*groupMax), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, fmt.Errorf("chunk group encoder: %w", err)
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithDecoderMaxMemory(64<<20))
	if err != nil {
		enc.Close()
		return nil, fmt.Errorf("chunk group decoder: %w", err)
	}
	return &groupCodec{enc: enc, dec: dec}, nil
}

func (c *groupCodec) close() {
	c.dec.Close()
	_ = c.enc.Close()
}

// compress returns the value of a group or summary block: valueVersion,
// then the zstd frame of plain, in a buffer from the values pool.
func (c *groupCodec) compress(plain []byte) []byte {
	var dst []byte
	if p, ok := c.values.Get().(*[]byte); ok {
		dst = (*p)[:0]
	} else {
		dst = make([]byte, 0, 1+len(plain)/4)
	}
	return c.enc.EncodeAll(plain, append(dst, valueVersion))
}

// recycleValues hands the buffers of values made by compress back to the
// pool and empties values. The transactions that held them MUST be over,
// committed or discarded, as they are once Store.commit has returned.
// Txn.Commit returns once Badger's write goroutine is done with the batch
// (request.Wait), and by then Badger has copied every value: into the
// value log (valueLog.write), or into the write-ahead log and arena of the
// memtable (writeToLSM, memTable.Put, Skiplist.Put). It keeps no reference
// to the caller's slices: the request drops its entries (request.DecrRef),
// and the store has no subscribers (publisher.sendUpdates) to hand them
// to. A discarded transaction is never read again.
func (c *groupCodec) recycleValues(values []kv) []kv {
	for _, e := range values {
		v := e.v
		c.values.Put(&v)
	}
	return emptied(values)
}

// groupBuilder collects the plain chunks of one batch into groups. It is
// reused from batch to batch (preparer).
type groupBuilder struct {
	codec  *groupCodec
	groups [][]byte // the plain groups being filled
}

// add appends a plain chunk (built by appendTo into the last group's
// buffer, and moved to a new group if it does not fit) and returns where it
// went.
func (b *groupBuilder) add(appendTo func([]byte) []byte) (g, off, n int) {
	if len(b.groups) == 0 {
		b.open()
	}
	last := len(b.groups) - 1
	off = len(b.groups[last])
	b.groups[last] = appendTo(b.groups[last])
	if len(b.groups[last]) > groupMax && off > 0 {
		b.open()
		b.groups[last+1] = append(b.groups[last+1], b.groups[last][off:]...)
		b.groups[last] = b.groups[last][:off]
		last, off = last+1, 0
	}
	return last, off, len(b.groups[last]) - off
}

// open starts a new group, empty, in a pooled buffer.
func (b *groupBuilder) open() {
	if p, ok := b.codec.bufs.Get().(*[]byte); ok {
		b.groups = append(b.groups, (*p)[:0])
	} else {
		b.groups = append(b.groups, make([]byte, 0, groupCap))
	}
}

// seal compresses every group and appends the group values and their IDs
// to values and ids. The builder is empty afterwards.
func (b *groupBuilder) seal(values []kv, ids []uint64) ([]kv, []uint64) {
	for i, plain := range b.groups {
		id := xxhash.Sum64(plain)
		ids = append(ids, id)
		values = append(values, kv{groupKey(id), b.codec.compress(plain)})
		b.release(i)
	}
	b.groups = b.groups[:0]
	return values, ids
}

// reset empties the builder, dropping groups not sealed (a batch that
// failed).
func (b *groupBuilder) reset() {
	for i := range b.groups {
		b.release(i)
	}
	b.groups = b.groups[:0]
}

// release hands group i's buffer back to the pool.
func (b *groupBuilder) release(i int) {
	if plain := b.groups[i]; cap(plain) == groupCap {
		b.codec.bufs.Put(&plain)
	}
	b.groups[i] = nil
}

// chunkReader resolves chunk references, chunk values of the earlier forms
// and summary references within one transaction, keeping the last groups
// and summary blocks it decompressed.
type chunkReader struct {
	txn       *badger.Txn
	dicts     *chunkDicts
	codec     *groupCodec
	groups    blockCache
	sumBlocks blockCache
}

// blockCache holds the last groupCacheSize blocks (chunk groups or summary
// blocks) a reader decompressed, by ID.
type blockCache struct {
	entries [groupCacheSize]struct {
		id    uint64
		plain []byte
	}
	next int
}

func (s *Store) chunkReader(txn *badger.Txn) *chunkReader {
	return &chunkReader{txn: txn, dicts: s.dicts, codec: s.groups}
}

// plain returns the plain form of a chunk value of an earlier version.
func (r *chunkReader) plain(b []byte) ([]byte, error) {
	var dicts *chunkDicts
	if r != nil {
		dicts = r.dicts
	}
	return dicts.plain(b)
}

// ref returns the plain chunk a reference places. It aliases a cached
// group, valid until the reader decompresses groupCacheSize more.
func (r *chunkReader) ref(c chunkRef) ([]byte, error) {
	g, err := r.group(c.group)
	if err != nil {
		return nil, err
	}
	if c.off > uint64(len(g)) || c.n > uint64(len(g))-c.off {
		return nil, fmt.Errorf("span chunk: %w: reference [%d:+%d] outside group %016x of %d bytes", ErrCorrupt, c.off, c.n, c.group, len(g))
	}
	return g[c.off : c.off+c.n], nil
}

// group returns the plain content of one group.
func (r *chunkReader) group(gid uint64) ([]byte, error) {
	return r.block(groupKey(gid), gid, &r.groups, "chunk group")
}

// block returns the plain content of the compressed block (a chunk group or
// a summary block) under key, from cache or decompressed into it. It
// aliases the cache, valid until groupCacheSize more blocks are read.
func (r *chunkReader) block(key []byte, id uint64, cache *blockCache, what string) ([]byte, error) {
	for _, c := range cache.entries {
		if c.plain != nil && c.id == id {
			return c.plain, nil
		}
	}
	item, err := r.txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("%s %016x: %w: missing", what, id, ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s %016x: %w", what, id, err)
	}
	// Reuse the evicted entry's buffer; the entry is empty until the
	// decode succeeds.
	slot := &cache.entries[cache.next]
	plain := slot.plain[:0]
	slot.plain = nil
	err = item.Value(func(v []byte) error {
		if len(v) == 0 || v[0] != valueVersion {
			return fmt.Errorf("%s %016x: %w: bad header", what, id, ErrCorrupt)
		}
		var err error
		plain, err = r.codec.dec.DecodeAll(v[1:], plain)
		if err != nil {
			return fmt.Errorf("%s %016x: %w: %w", what, id, ErrCorrupt, err)
		}
		if len(plain) == 0 {
			return fmt.Errorf("%s %016x: %w: empty", what, id, ErrCorrupt)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slot.id, slot.plain = id, plain
	cache.next = (cache.next + 1) % groupCacheSize
	return plain, nil
}
