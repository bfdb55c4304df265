package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"

	"github.com/dgraph-io/badger/v4"
)

// Summary blocks. A write keeps a trace's summary (about 170 bytes) out of
// its 0x01 key: the summaries of a batch are concatenated into blocks of
// about sumBlockTarget bytes, each compressed once with zstd and stored
// under its own key (0x07), and the trace's key holds a reference (block,
// index), about 11 bytes. Under load a block is far above the value
// threshold, so Badger writes it once to its value log (a small batch's
// block stays in the LSM), while the references stay in the LSM, whose
// memtable flushes and compactions copy, decompress and recompress every
// byte they hold: with the summaries inline, the LSM held twice the bytes,
// and the flushes and compactions that copied them were most of Badger's
// CPU under load.
//
// A block is named by the FNV-64 of its plain content, so a replay that
// merges to the same summaries rewrites the same key with the same value;
// one that merges differently writes a new block, and the references
// follow. A summary rewritten alone (AddReasons) goes inline again, the
// form earlier versions wrote; readers take either.

// sumBlockTarget is the plain size at which a block is sealed: every
// summary read decompresses its whole block, so blocks stay small enough
// for search, which reads the summary of every candidate, to decompress
// them cheaply (readers keep the last few).
const sumBlockTarget = 32 << 10

// summaryRef is the first byte of a 0x01 value that places the summary in
// a block, where valueVersion heads a summary stored inline.
const summaryRef byte = 2

func sumBlockKey(id uint64) []byte { return appendU64([]byte{prefixSumBlock}, id) }

// appendSummaryRef encodes the reference to entry i of block id.
func appendSummaryRef(dst []byte, id uint64, i int) []byte {
	dst = appendU64(append(dst, summaryRef), id)
	return binary.AppendUvarint(dst, uint64(i))
}

// sumBlocks builds the summary blocks of one batch. A block's plain form is
// valueVersion, the uvarint count of summaries, the uvarint length of each,
// then the summaries (summary.appendTo) back to back. It is reused from
// batch to batch (preparer), keeping its buffers.
type sumBlocks struct {
	codec  *groupCodec
	sums   []byte // encoded summaries of the block being filled
	lens   []int
	plain  []byte // scratch of seal
	values []kv
	// per summary added, in order: its block (index in values) and its
	// entry in the block
	block, entry []int
}

// add appends a summary.
func (b *sumBlocks) add(s *summary) {
	n := len(b.sums)
	b.sums = s.appendTo(b.sums)
	b.block = append(b.block, len(b.values))
	b.entry = append(b.entry, len(b.lens))
	b.lens = append(b.lens, len(b.sums)-n)
	if len(b.sums) >= sumBlockTarget {
		b.seal()
	}
}

// seal compresses the block being filled, if it holds any summary.
func (b *sumBlocks) seal() {
	if len(b.lens) == 0 {
		return
	}
	plain := slices.Grow(b.plain[:0], 1+binary.MaxVarintLen64+3*len(b.lens)+len(b.sums))
	plain = append(plain, valueVersion)
	plain = binary.AppendUvarint(plain, uint64(len(b.lens)))
	for _, n := range b.lens {
		plain = binary.AppendUvarint(plain, uint64(n))
	}
	plain = append(plain, b.sums...)
	h := fnv.New64a()
	_, _ = h.Write(plain)
	b.values = append(b.values, kv{sumBlockKey(h.Sum64()), b.codec.compress(plain)})
	b.plain = plain
	b.sums, b.lens = b.sums[:0], b.lens[:0]
}

// reset empties the builder for the next batch. The commit that wrote its
// values MUST have returned (groupCodec.recycleValues).
func (b *sumBlocks) reset() {
	b.values = b.codec.recycleValues(b.values)
	b.sums, b.lens = b.sums[:0], b.lens[:0]
	b.block, b.entry = b.block[:0], b.entry[:0]
}

// appendRef appends the reference to the n-th summary added; its block
// must be sealed.
func (b *sumBlocks) appendRef(dst []byte, n int) []byte {
	return appendSummaryRef(dst, beUint64(b.values[b.block[n]].k[1:]), b.entry[n])
}

// summary reads and decodes the summary under key: inline, or through its
// reference from a block, which the reader keeps for the next summaries.
func (r *chunkReader) summary(key []byte) (summary, bool, error) {
	item, err := r.txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return summary{}, false, nil
	}
	if err != nil {
		return summary{}, false, fmt.Errorf("read summary: %w", err)
	}
	var (
		sum       summary
		block     uint64
		entry     uint64
		reference bool
	)
	err = item.Value(func(v []byte) error {
		if len(v) > 0 && v[0] == summaryRef {
			var n int
			if len(v) >= 10 {
				block = beUint64(v[1:])
				entry, n = binary.Uvarint(v[9:])
			}
			if n <= 0 || 9+n != len(v) {
				return fmt.Errorf("trace summary: %w: bad block reference", ErrCorrupt)
			}
			reference = true
			return nil
		}
		var err error
		sum, err = decodeSummary(v)
		return err
	})
	if err != nil {
		return summary{}, false, err
	}
	if reference {
		if sum, err = r.blockSummary(block, entry); err != nil {
			return summary{}, false, err
		}
	}
	return sum, true, nil
}

// blockSummary decodes entry i of summary block id.
func (r *chunkReader) blockSummary(id, i uint64) (summary, error) {
	plain, err := r.block(sumBlockKey(id), id, &r.sumBlocks, "summary block")
	if err != nil {
		return summary{}, err
	}
	bad := func(what string) error {
		return fmt.Errorf("summary block %016x: %w: %s", id, ErrCorrupt, what)
	}
	if plain[0] != valueVersion {
		return summary{}, bad("bad header")
	}
	b := plain[1:]
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)) {
		return summary{}, bad("bad count")
	}
	if i >= n {
		return summary{}, bad(fmt.Sprintf("entry %d of %d", i, n))
	}
	b = b[w:]
	var off, size uint64
	for j := uint64(0); j < n; j++ {
		l, w := binary.Uvarint(b)
		if w <= 0 {
			return summary{}, bad("bad lengths")
		}
		b = b[w:]
		if j < i {
			off += l
		} else if j == i {
			size = l
		}
	}
	if off > uint64(len(b)) || size > uint64(len(b))-off {
		return summary{}, bad("entry outside the block")
	}
	return decodeSummary(b[off : off+size])
}
