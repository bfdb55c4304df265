package index

import (
	"errors"
	"path/filepath"
	"strings"
	"time"
)

// Value-log residency.
//
// Badger writes the value log, which holds the chunk groups (group.go),
// through a shared memory mapping and keeps every file mapped until it is
// deleted. Every page written therefore stays in the process's resident set:
// about 100 MB per million stored spans, growing for as long as the store
// does (the retention is days). The kernel would drop those pages under
// memory pressure, but until then they count in RSS and in a container's
// working set, which is what alerts, OOM decisions and an on-call engineer
// look at.
//
// A sealed value-log file (every one but the newest) is never written
// again and is read only when a trace is fetched or searched, one group at
// a time. So the store asks the kernel to reclaim the pages of sealed files
// (madvise MADV_PAGEOUT, Linux 5.4+): the bytes stay on disk, a later read
// faults in just the group it needs, and resident memory no longer grows
// with the data. A file is advised when it is first seen sealed and again
// every pageOutRepeat, which returns the pages reads brought back. The
// check reads /proc/self/maps (well under a millisecond for hundreds of
// mappings), so it runs often enough that a just-sealed file does not add
// a second file's worth of pages to the peak.
const (
	pageOutInterval = 2 * time.Second
	pageOutRepeat   = 10 * time.Minute
)

// errNoPageOut is fileMappings' answer where the platform has no
// /proc/self/maps or MADV_PAGEOUT: the loop then stops quietly.
var errNoPageOut = errors.New("paging out value-log files needs Linux")

// mapping is one file mapping of this process: [start, end) and its path.
type mapping struct {
	start, end uintptr
	path       string
}

// sealedValueLogs returns the mappings of dir's value-log files except the
// newest, the one Badger appends to. Badger names them %06d.vlog, so name
// order is creation order.
func sealedValueLogs(maps []mapping, dir string) []mapping {
	var logs []mapping
	newest := ""
	for _, m := range maps {
		if filepath.Dir(m.path) != dir || !strings.HasSuffix(m.path, ".vlog") {
			continue
		}
		logs = append(logs, m)
		newest = max(newest, filepath.Base(m.path))
	}
	sealed := logs[:0]
	for _, m := range logs {
		if filepath.Base(m.path) != newest {
			sealed = append(sealed, m)
		}
	}
	return sealed
}

// pageOutLoop pages out sealed value-log files until Close.
func (s *Store) pageOutLoop() {
	defer s.wg.Done()
	dir, err := filepath.Abs(s.dir)
	if err == nil {
		dir, err = filepath.EvalSymlinks(dir)
	}
	if err != nil {
		s.logger.Warn("value-log page-out disabled: cannot resolve the store directory", "dir", s.dir, "err", err)
		return
	}
	advised := map[string]time.Time{}
	t := time.NewTicker(pageOutInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			err := s.pageOutSealed(dir, advised, now)
			if errors.Is(err, errNoPageOut) {
				return
			}
			if err != nil {
				s.logger.Warn("value-log page-out disabled", "err", err)
				return
			}
		}
	}
}

// pageOutSealed advises the sealed value-log files of dir not advised
// within pageOutRepeat, recording when in advised.
func (s *Store) pageOutSealed(dir string, advised map[string]time.Time, now time.Time) error {
	maps, err := fileMappings()
	if err != nil {
		return err
	}
	sealed := sealedValueLogs(maps, dir)
	due := map[string]bool{} // by path: a file may span several mappings
	for _, m := range sealed {
		last, ok := advised[m.path]
		due[m.path] = !ok || now.Sub(last) >= pageOutRepeat
	}
	for p := range advised {
		if _, ok := due[p]; !ok {
			delete(advised, p) // deleted by value-log GC or expiry
		}
	}
	for _, m := range sealed {
		if !due[m.path] {
			continue
		}
		if err := pageOut(m); err != nil {
			return err
		}
		advised[m.path] = now
		s.metrics.pagedOut.Add(float64(m.end - m.start))
	}
	return nil
}
