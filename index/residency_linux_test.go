package index

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

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

func TestSealedValueLogs(t *testing.T) {
	maps := []mapping{
		{1, 2, "/d/000003.vlog"},
		{3, 4, "/d/000001.vlog"},
		{5, 6, "/d/000004.vlog"}, // newest: Badger appends to it
		{7, 8, "/d/000002.sst"},
		{9, 10, "/other/000001.vlog"},
	}
	require.Equal(t, []mapping{{1, 2, "/d/000003.vlog"}, {3, 4, "/d/000001.vlog"}}, sealedValueLogs(maps, "/d"))
	require.Empty(t, sealedValueLogs(maps[2:3], "/d"), "a lone file is the one being written")
}

// TestPageOutSealedValueLogs writes several value-log files' worth of
// groups and checks that paging out returns the sealed files' resident
// pages to the kernel, leaves the newest alone, and that the data reads
// back afterwards.
func TestPageOutSealedValueLogs(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := openStore(t, dir, func(o *Options) { o.ValueLogFileSize = 1 << 20 })
	w := newWorkload(21)
	var kept []KeptTrace
	for range 40 { // about 4 MiB of groups
		batch := w.kept(500)
		kept = append(kept, batch[0])
		require.NoError(t, st.WriteTraces(ctx, batch))
	}
	abs, err := filepath.EvalSymlinks(dir)
	require.NoError(t, err)

	before := valueLogRSS(t, abs)
	newest := ""
	for name := range before {
		newest = max(newest, name)
	}
	sealed := 0
	for name, kb := range before {
		if name != newest {
			sealed += kb
		}
	}
	require.GreaterOrEqual(t, len(before), 3, "several value-log files are mapped")
	require.Greater(t, sealed, 1024, "written value-log pages are resident (KiB)")

	advised := map[string]time.Time{}
	now := time.Now()
	err = st.pageOutSealed(abs, advised, now)
	if errors.Is(err, unix.EINVAL) {
		t.Skipf("kernel without MADV_PAGEOUT: %v", err)
	}
	require.NoError(t, err)
	require.Len(t, advised, len(before)-1, "every sealed file is advised, the newest is not")

	after := valueLogRSS(t, abs)
	left := 0
	for name, kb := range after {
		if name != newest {
			left += kb
		}
	}
	t.Logf("sealed value-log files resident: %d KiB before, %d KiB after", sealed, left)
	require.Less(t, left, sealed/4, "sealed files' pages went back to the kernel (KiB before %d, after %d)", sealed, left)
	require.Equal(t, before[newest], after[newest], "the file being written keeps its pages")

	// Within pageOutRepeat nothing is advised again; past it, everything is.
	require.NoError(t, st.pageOutSealed(abs, advised, now.Add(time.Minute)))
	for _, at := range advised {
		require.Equal(t, now, at)
	}
	require.NoError(t, st.pageOutSealed(abs, advised, now.Add(pageOutRepeat)))
	for _, at := range advised {
		require.Equal(t, now.Add(pageOutRepeat), at)
	}

	requireTraces(t, st, kept) // read back through the paged-out files
}

// valueLogRSS returns the resident KiB of each mapped value-log file of dir,
// by file name, from /proc/self/smaps.
func valueLogRSS(t *testing.T, dir string) map[string]int {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	require.NoError(t, err)
	defer f.Close()
	out := map[string]int{}
	cur := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if key, _, _ := strings.Cut(line, " "); !strings.HasSuffix(key, ":") { // a mapping's header
			cur = ""
			if m, ok := parseMapping(line); ok && filepath.Dir(m.path) == dir && strings.HasSuffix(m.path, ".vlog") {
				cur = filepath.Base(m.path)
			}
			continue
		}
		if rest, ok := strings.CutPrefix(line, "Rss:"); ok && cur != "" {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			require.NoError(t, err)
			out[cur] += kb
		}
	}
	require.NoError(t, sc.Err())
	return out
}
