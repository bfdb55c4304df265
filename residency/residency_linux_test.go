package residency

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestParseMapping(t *testing.T) {
	for _, tc := range []struct {
		line string
		want mapping
		ok   bool
	}{
		{"7f1c2a000000-7f1c2e000000 rw-s 00000000 fd:01 1234 /data/spans/000001.vlog", mapping{0x7f1c2a000000, 0x7f1c2e000000, "/data/spans/000001.vlog"}, true},
		{"7f1c2a000000-7f1c2a001000 r--s 00000000 fd:01 99 /my data/spans/000002.vlog", mapping{0x7f1c2a000000, 0x7f1c2a001000, "/my data/spans/000002.vlog"}, true},
		{"7f1c2a000000-7f1c2e000000 rw-p 00000000 fd:01 1234 /data/spans/000001.vlog", mapping{}, false}, // private
		{"c000000000-c004000000 rw-p 00000000 00:00 0", mapping{}, false},                                // anonymous
		{"7ffd1000-7ffd2000 rw-s 00000000 00:00 0 [vvar]", mapping{}, false},                             // not a file
		{"zz-7ffd2000 rw-s 00000000 00:00 0 /x", mapping{}, false},
		{"", mapping{}, false},
	} {
		got, ok := parseMapping(tc.line)
		require.Equal(t, tc.ok, ok, tc.line)
		require.Equal(t, tc.want, got, tc.line)
	}
}

func TestStoreFiles(t *testing.T) {
	maps := []mapping{
		{1, 2, "/d/spans/000003.vlog"},
		{3, 4, "/d/red/00004.mem"},
		{5, 6, "/d/logs/badger/000012.sst"},  // a table: read by every lookup
		{7, 8, "/d/logs/store/00000001.zap"}, // Bleve's, not Badger's
		{9, 10, "/d2/spans/000001.vlog"},     // a sibling sharing the prefix
		{11, 12, "/other/000001.vlog"},
		{13, 14, "/d/kafka/otlp_spans-0/00000000.log"},
	}
	require.Equal(t, maps[:2], storeFiles(maps, "/d"))
}

// TestPageOutBadgerLogs writes a real Badger database's value log, tables
// and write-ahead log through their mappings and checks that one pass
// returns the logs' resident pages to the kernel and that every value reads
// back afterwards.
func TestPageOutBadgerLogs(t *testing.T) {
	dir := t.TempDir()
	abs, err := filepath.EvalSymlinks(dir)
	require.NoError(t, err)
	db, err := badger.Open(badger.DefaultOptions(filepath.Join(dir, "spans")).
		WithLogger(nil).
		WithMemTableSize(1 << 20).
		WithValueLogFileSize(1 << 20).
		WithValueThreshold(1 << 10).
		WithBlockCacheSize(1 << 20))
	require.NoError(t, err)
	defer db.Close()

	value := func(i int) []byte {
		n := 64 // small values stay in the LSM: tables and the memtable's log
		if i%4 == 0 {
			n = 4 << 10 // large ones go to the value log
		}
		return bytes.Repeat(fmt.Appendf(nil, "value %d;", i), n/8)
	}
	const keys = 20000
	for start := 0; start < keys; start += 100 {
		require.NoError(t, db.Update(func(txn *badger.Txn) error {
			for i := start; i < start+100; i++ {
				if err := txn.Set(fmt.Appendf(nil, "key-%06d", i), value(i)); err != nil {
					return err
				}
			}
			return nil
		}))
	}
	// Memtables flush to tables in the background. (Tables are not this
	// package's: the patched Badger keeps their pages out of the resident
	// set itself, see third_party/badger/PATCH.md.)
	require.Eventually(t, func() bool { return len(db.Tables()) > 0 }, 10*time.Second, 20*time.Millisecond)
	before := residentKiB(t, abs)
	for _, suffix := range []string{".vlog", ".mem"} {
		require.Greater(t, before[suffix], 64, "written %s pages are resident (KiB): %v", suffix, before)
	}

	reg := prometheus.NewRegistry()
	p, err := New(dir, slog.Default(), reg)
	require.NoError(t, err)
	err = p.pageOut()
	if errors.Is(err, unix.EINVAL) {
		t.Skipf("kernel without MADV_PAGEOUT: %v", err)
	}
	require.NoError(t, err)
	after := residentKiB(t, abs)
	t.Logf("resident KiB before %v, after %v", before, after)
	for _, suffix := range []string{".vlog", ".mem"} {
		require.Less(t, after[suffix], before[suffix]/4, "%s pages went back to the kernel", suffix)
	}
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, mfs, 1)
	require.Greater(t, mfs[0].GetMetric()[0].GetGauge().GetValue(), float64(3<<20), "the gauge counts the mapped logs")

	// Contents never change: every value reads back, and writes go on.
	require.NoError(t, db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("key-after"), value(1)) }))
	require.NoError(t, db.View(func(txn *badger.Txn) error {
		for i := range keys {
			item, err := txn.Get(fmt.Appendf(nil, "key-%06d", i))
			if err != nil {
				return err
			}
			got, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, value(i)) {
				return fmt.Errorf("key %d reads back %q", i, got[:min(len(got), 20)])
			}
		}
		return nil
	}))
}

// TestRunStopsWithContext checks that Run, ticking at least once, returns
// when its context ends.
func TestRunStopsWithContext(t *testing.T) {
	p, err := New(t.TempDir(), slog.Default(), nil)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), Interval+500*time.Millisecond)
	defer cancel()
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// residentKiB sums, by file suffix, the resident KiB of the mapped files
// under dir, from /proc/self/smaps.
func residentKiB(t *testing.T, dir string) map[string]int {
	t.Helper()
	resident, err := ResidentBytes(dir)
	require.NoError(t, err)
	out := map[string]int{}
	for ext, n := range resident {
		out[ext] = int(n >> 10)
	}
	return out
}
