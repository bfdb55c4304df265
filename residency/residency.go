// Package residency keeps the files Badger maps into memory out of the
// process's resident set.
//
// Badger maps its files with shared file mappings and keeps each one mapped
// until it deletes the file: the value log (the span store's chunk groups),
// the memtables' write-ahead logs (.mem) and the LSM's tables (.sst). Every
// page written or read through a mapping stays resident in this process
// until the kernel needs the memory. Those pages count in the process's RSS
// and in a container's working set, which is what alerts, OOM decisions and
// an on-call engineer look at, though the kernel holds them as page cache
// and the files are the only copy that matters: under the benchmark's load
// they were 150–180 MiB of the all-in-one's peak RSS.
//
// Nothing a mapping holds is needed in this process's page tables: the
// value log and the write-ahead logs are appended to and read back rarely
// (a trace fetched by ID, a restart), and an LSM table is read a block at a
// time. So a Pager asks the kernel every second to unmap the resident pages
// of every mapped Badger file under a directory (madvise MADV_PAGEOUT,
// Linux 5.4+). Contents never change: a dirty page stays in the page cache
// until writeback, a clean one may be dropped, and the next access faults
// the page back in from the page cache or the disk. The page being appended
// to faults back on the next write, once per pass. Interleaved runs of the
// end-to-end benchmark showed no CPU difference.
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

// badgerSuffixes name the files Badger maps: value log, memtable
// write-ahead log, LSM table.
var badgerSuffixes = []string{".vlog", ".mem", ".sst"}

// storeFiles returns the mappings of Badger's files anywhere under dir.
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

// Pager pages out the mapped Badger files under one directory.
type Pager struct {
	dir    string
	logger *slog.Logger
	mapped prometheus.Gauge
}

// New returns a pager for the Badger files under dir (every store of a data
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
			Help: "Bytes of Badger files this process maps (value logs, write-ahead logs, tables), whose pages are handed back to the kernel every second instead of staying resident.",
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

// pageOut advises every mapped Badger file under the directory once.
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
