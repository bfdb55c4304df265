package index

import (
	"encoding/binary"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"github.com/klauspost/compress/s2"
	"github.com/stretchr/testify/require"
)

// dictKey is where the previous version stored a chunk dictionary.
func dictKey(id uint32) []byte { return binary.BigEndian.AppendUint32([]byte{prefixDict}, id) }

// TestEarlierChunkForms: chunks the version before groups wrote (Snappy
// blocks, and S2 blocks against a dictionary stored at 0x05) still read
// after a reopen; one naming an unknown dictionary is corrupt, not a panic.
func TestEarlierChunkForms(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	w := newWorkload(5)
	var samples []byte
	for len(samples) < s2.MaxDictSize {
		samples = append(samples, chunkOf(t, w.kept(1)[0])...)
	}
	d := s2.MakeDict(samples, nil)
	require.NotNil(t, d)
	require.NoError(t, st.db.Update(func(txn *badger.Txn) error { return txn.Set(dictKey(1), d.Bytes()) }))
	require.NoError(t, st.Close())
	st = openStore(t, dir)

	dictChunk := func(id uint32, plain []byte) []byte {
		b := binary.AppendUvarint([]byte{chunkDictS2}, uint64(id))
		return append(b, d.Encode(nil, plain)...)
	}
	require.NoError(t, st.db.View(func(txn *badger.Txn) error {
		chunks := st.chunkReader(txn)
		for _, kt := range w.kept(20) {
			plain := chunkOf(t, kt)
			for _, value := range [][]byte{plain, snappyChunk(plain), dictChunk(1, plain)} {
				requireChunkMatches(t, kt, value, chunks)
			}
			err := walkChunk(dictChunk(2, plain), chunks, func(chunkEntry) error { return nil })
			require.ErrorIs(t, err, ErrCorrupt)
		}
		return nil
	}))
}
