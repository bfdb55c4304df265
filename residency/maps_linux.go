package residency

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// fileMappings lists this process's shared file mappings from
// /proc/self/maps.
func fileMappings() ([]mapping, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil, fmt.Errorf("read mappings: %w", err)
	}
	defer f.Close()
	var out []mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m, ok := parseMapping(sc.Text()); ok {
			out = append(out, m)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mappings: %w", err)
	}
	return out, nil
}

// parseMapping reads one line of /proc/self/maps ("start-end perms offset
// dev inode path"), keeping shared mappings of files.
func parseMapping(line string) (mapping, bool) {
	fields := strings.Fields(line)
	if len(fields) < 6 || len(fields[1]) != 4 || fields[1][3] != 's' || !strings.HasPrefix(fields[5], "/") {
		return mapping{}, false
	}
	lo, hi, ok := strings.Cut(fields[0], "-")
	if !ok {
		return mapping{}, false
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || end <= start {
		return mapping{}, false
	}
	// The path is the rest of the line: it may hold spaces.
	path := strings.TrimSpace(line[strings.Index(line, fields[5]):])
	return mapping{start: uintptr(start), end: uintptr(end), path: path}, true
}

// pageOut asks the kernel to reclaim the mapping's resident pages. The
// advice never changes memory contents, whatever the range holds by the
// time it runs (unlike MADV_DONTNEED, which would zero anonymous memory
// mapped there after a concurrent unmap). A range Badger unmapped since
// /proc/self/maps was read (a table deleted by a compaction, a flushed
// memtable's log) answers ENOMEM: there is nothing left to page out.
func pageOut(m mapping) error {
	_, _, errno := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, unix.MADV_PAGEOUT)
	if errno != 0 && errno != unix.ENOMEM {
		return fmt.Errorf("madvise(MADV_PAGEOUT) %s: %w", m.path, errno)
	}
	return nil
}

// ResidentBytes reports how many bytes of this process's shared file
// mappings under dir are resident, by file extension (".vlog", ".sst"...),
// from /proc/self/smaps. It is for tests and diagnostics: reading smaps
// walks every mapping of the process.
func ResidentBytes(dir string) (map[string]int64, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return nil, fmt.Errorf("read resident set: %w", err)
	}
	defer f.Close()
	out := map[string]int64{}
	cur := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if key, _, _ := strings.Cut(line, " "); !strings.HasSuffix(key, ":") { // a mapping's header
			cur = ""
			if m, ok := parseMapping(line); ok && strings.HasPrefix(m.path, dir+string(filepath.Separator)) {
				cur = filepath.Ext(m.path)
			}
			continue
		}
		if rest, ok := strings.CutPrefix(line, "Rss:"); ok && cur != "" {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("read resident set: %q: %w", line, err)
			}
			out[cur] += kb << 10
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read resident set: %w", err)
	}
	return out, nil
}
