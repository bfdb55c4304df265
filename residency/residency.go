// Package residency keeps the files Badger appends to out of the process's
// resident set.
//
// Badger maps its files with shared file mappings and keeps each one mapped
// until it deletes the file: the value log (the span store's chunk groups),
// the memtables' write-ahead logs (.mem) and the LSM's tables (.sst). Every
// page written or read through a mapping stays resident in this process
// until the kernel needs the memory. Those pages count in the process's RSS
// and in a container's working set, which is what alerts, OOM decisions and
// an on-call engineer look at, though the kernel holds them as page cache
// and the files are the only copy that matters.
//
// The value log and the write-ahead logs are only appended to, and read
// back rarely (a trace fetched by ID, a restart). So a Pager asks the kernel
// every second to unmap the resident pages of every mapped value log and
// write-ahead log under a directory (madvise MADV_PAGEOUT, Linux 5.4+), the
// files being written included. Contents never change: a dirty page stays
// in the page cache until writeback, a clean one may be dropped, and the
// next access faults the page back in from the page cache or the disk; the
// page being appended to faults back once per pass.
//
// Tables are not paged out. Every write's summary lookup and every
// compaction reads them, and paging out drops their clean pages from the
// page cache as well: at 6M spans the end-to-end benchmark then spent 39%
// more CPU per span (compactions and lookups reading tables back from disk)
// for its lower peak. Instead the patched Badger (third_party/badger,
// PATCH.md) drops a table's pages from the process as it writes the table
// and once a second after, with MADV_DONTNEED, which keeps them in the page
// cache. That is safe there, where a reference to the table keeps its
// mapping alive, and would not be from here (see pageOut).
package residency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Interval is how often a Pager pages out.
const Interval = time.Second

// errUnsupported is the answer of fileMappings and pageOut where the
// platform has no /proc/self/maps or MADV_PAGEOUT: the pager then stops
// quietly.
var errUnsupported = errors.New("paging out mapped files needs Linux")

// mapping is one shared file mapping of this process: [start, end) and its
// path.
type mapping struct {
	start, end uintptr
	path       string
}

// badgerSuffixes name the files Badger appends to through a mapping: value
// log, memtable write-ahead log.
var badgerSuffixes = []string{".vlog", ".mem"}

// storeFiles returns the mappings of Badger's logs anywhere under dir.
func storeFiles(maps []mapping, dir string) []mapping {
	var out []mapping
	for _, m := range maps {
		if !strings.HasPrefix(m.path, dir+string(filepath.Separator)) {
			continue
		}
		for _, s := range badgerSuffixes {
			if strings.HasSuffix(m.path, s) {
				out = append(out, m)
				break
			}
		}
	}
	return out
}

// Pager pages out the mapped Badger logs under one directory.
type Pager struct {
	dir    string
	logger *slog.Logger
	mapped prometheus.Gauge
}

// New returns a pager for the Badger logs under dir (every store of a data
// directory) and registers its gauge with reg (when not nil).
func New(dir string, logger *slog.Logger, reg prometheus.Registerer) (*Pager, error) {
	abs, err := filepath.Abs(dir)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return nil, fmt.Errorf("resolve data dir %s: %w", dir, err)
	}
	p := &Pager{
		dir:    abs,
		logger: logger,
		mapped: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "threadline_store_mapped_bytes",
			Help: "Bytes of Badger files this process maps (value logs and write-ahead logs), whose pages are handed back to the kernel every second instead of staying resident.",
		}),
	}
	if reg != nil {
		if err := reg.Register(p.mapped); err != nil {
			return nil, fmt.Errorf("register residency metrics: %w", err)
		}
	}
	return p, nil
}

// Run pages out every Interval until ctx ends. Where the platform cannot,
// or an advice fails, it logs why and returns: paging out saves memory,
// nothing depends on it.
func (p *Pager) Run(ctx context.Context) {
	t := time.NewTicker(Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			err := p.pageOut()
			if errors.Is(err, errUnsupported) {
				return
			}
			if err != nil {
				p.logger.Warn("paging out mapped store files disabled", "err", err)
				return
			}
		}
	}
}

// pageOut advises every mapped Badger log under the directory once.
func (p *Pager) pageOut() error {
	maps, err := fileMappings()
	if err != nil {
		return err
	}
	var mapped uintptr
	for _, m := range storeFiles(maps, p.dir) {
		if err := pageOut(m); err != nil {
			return err
		}
		mapped += m.end - m.start
	}
	p.mapped.Set(float64(mapped))
	return nil
}
