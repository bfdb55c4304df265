package index

import (
	"encoding/binary"
	"fmt"

	"github.com/dgraph-io/badger/v4"
	"github.com/klauspost/compress/s2"
)

// Chunk dictionaries: the chunk form of the previous version, read only.
// That version compressed every chunk alone, against an S2 dictionary it
// trained from the store's first 64 KiB of chunks and kept at 0x05 id[4]
// without TTL; chunks written before the dictionary existed are Snappy
// blocks. New chunks go into groups instead (group.go), which compress
// better still; the store keeps reading both older forms for as long as
// their traces live.

// chunkDictS2 heads a chunk compressed with a dictionary: the byte, the
// uvarint dictionary ID, then the S2 block.
const chunkDictS2 byte = 3

// chunkDicts holds the store's dictionaries. They are loaded at open and
// never change.
type chunkDicts struct {
	byID map[uint32]*s2.Dict
}

// load reads the stored dictionaries.
func (c *chunkDicts) load(txn *badger.Txn) error {
	c.byID = map[uint32]*s2.Dict{}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixDict}})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if len(k) != 5 {
			continue
		}
		id := binary.BigEndian.Uint32(k[1:])
		v, err := item.ValueCopy(nil)
		if err != nil {
			return fmt.Errorf("read chunk dictionary %d: %w", id, err)
		}
		d := s2.NewDict(v)
		if d == nil {
			return fmt.Errorf("chunk dictionary %d: %w: not an S2 dictionary", id, ErrCorrupt)
		}
		c.byID[id] = d
	}
	return nil
}

// plain returns the plain form of a chunk value of any kind.
func (c *chunkDicts) plain(b []byte) ([]byte, error) {
	bad := func(what string) error { return fmt.Errorf("span chunk: %w: %s", ErrCorrupt, what) }
	if len(b) == 0 {
		return nil, bad("empty")
	}
	switch b[0] {
	case chunkSnappy:
		plain, err := s2.Decode(nil, b[1:])
		if err != nil {
			return nil, bad(err.Error())
		}
		return plain, nil
	case chunkDictS2:
		id, n := binary.Uvarint(b[1:])
		if n <= 0 || id > 1<<32-1 {
			return nil, bad("dictionary ID")
		}
		var d *s2.Dict
		if c != nil {
			d = c.byID[uint32(id)]
		}
		if d == nil {
			return nil, bad(fmt.Sprintf("unknown dictionary %d", id))
		}
		plain, err := d.Decode(nil, b[1+n:])
		if err != nil {
			return nil, bad(err.Error())
		}
		return plain, nil
	}
	return b, nil
}
