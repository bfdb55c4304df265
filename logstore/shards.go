package logstore

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/blevesearch/bleve/v2"
	"github.com/blevesearch/bleve/v2/analysis/analyzer/keyword"
	"github.com/blevesearch/bleve/v2/analysis/analyzer/standard"
	"github.com/blevesearch/bleve/v2/index/scorch"
	"github.com/blevesearch/bleve/v2/mapping"
)

// Bleve document fields. text (body and attribute values, full text) is the
// default field a bare query-string term searches; attr holds one exact
// "key=value" term per attribute (attr:"user.id=42"); the rest are
// exact-match keywords, the adjusted time for ranges and sorting, and src,
// the stored-only encoding every hit is decoded from (so a search never
// touches Badger). Bleve's "_all" composite field is disabled: indexing
// every token twice halved ingest for nothing text does not give.
const (
	fieldText    = "text"
	fieldAttr    = "attr"
	fieldService = "service_name"
	fieldLevel   = "level"
	fieldTrace   = "trace_id"
	fieldSpan    = "span_id"
	fieldTime    = "ts"
	fieldSrc     = "src"
)

func newMapping() mapping.IndexMapping {
	text := mapping.NewTextFieldMapping()
	text.Analyzer = standard.Name
	text.Store = false
	text.IncludeInAll = false
	// Term vectors (positions) make phrase queries ("connection refused")
	// work; they cost about 10% of ingest.
	text.IncludeTermVectors = true
	text.DocValues = false
	kw := func(docValues bool) *mapping.FieldMapping {
		f := mapping.NewKeywordFieldMapping()
		f.Store = false
		f.IncludeInAll = false
		f.IncludeTermVectors = false
		f.DocValues = docValues // facets of LabelValues
		return f
	}
	ts := mapping.NewDateTimeFieldMapping()
	ts.Store = false
	ts.IncludeInAll = false
	ts.DocValues = true // sorting
	src := mapping.NewTextFieldMapping()
	src.Analyzer = keyword.Name
	src.Index = false
	src.Store = true
	src.IncludeInAll = false
	src.IncludeTermVectors = false
	src.DocValues = false

	doc := mapping.NewDocumentStaticMapping()
	doc.AddFieldMappingsAt(fieldText, text)
	attr := kw(false)
	attr.IncludeTermVectors = true // attr:"k=v" is a one-term phrase query
	doc.AddFieldMappingsAt(fieldAttr, attr)
	doc.AddFieldMappingsAt(fieldService, kw(true))
	doc.AddFieldMappingsAt(fieldLevel, kw(true))
	doc.AddFieldMappingsAt(fieldTrace, kw(false))
	doc.AddFieldMappingsAt(fieldSpan, kw(false))
	doc.AddFieldMappingsAt(fieldTime, ts)
	doc.AddFieldMappingsAt(fieldSrc, src)
	doc.AddSubDocumentMapping("_all", mapping.NewDocumentDisabledMapping())

	im := mapping.NewIndexMapping()
	im.DefaultMapping = doc
	im.DefaultAnalyzer = standard.Name
	im.DefaultField = fieldText
	im.IndexDynamic = false
	im.StoreDynamic = false
	im.DocValuesDynamic = false
	return im
}

// shard is one Bleve index covering [start, start+ShardDuration) of
// skew-adjusted time.
type shard struct {
	start    int64 // unix ns
	idx      bleve.Index
	refs     int
	lastUsed time.Time
}

// shardSet opens shards lazily, closes idle ones and deletes expired ones.
// A shard in use (refs > 0) is never closed or deleted; maintenance retries
// it on its next run.
type shardSet struct {
	dir     string
	dur     time.Duration
	mapping mapping.IndexMapping
	logger  *slog.Logger

	mu     sync.Mutex
	shards map[int64]*shard
}

func openShardSet(dir string, dur time.Duration, logger *slog.Logger) (*shardSet, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create bleve dir: %w", err)
	}
	ss := &shardSet{dir: dir, dur: dur, mapping: newMapping(), logger: logger, shards: map[int64]*shard{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list bleve shards: %w", err)
	}
	for _, e := range entries {
		start, err := strconv.ParseInt(e.Name(), 10, 64)
		if err != nil || !e.IsDir() {
			continue
		}
		ss.shards[start] = &shard{start: start}
	}
	return ss, nil
}

func (ss *shardSet) bucket(ns int64) int64 {
	d := int64(ss.dur)
	b := ns - ns%d
	if ns < 0 && ns%d != 0 {
		b -= d
	}
	return b
}

func (ss *shardSet) path(start int64) string {
	return filepath.Join(ss.dir, strconv.FormatInt(start, 10))
}

// acquire returns the open shard starting at start, creating it when create
// is set; nil when it does not exist. Release it with release.
func (ss *shardSet) acquire(start int64, create bool, now time.Time) (*shard, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	sh := ss.shards[start]
	if sh == nil {
		if !create {
			return nil, nil
		}
		sh = &shard{start: start}
	}
	if sh.idx == nil {
		idx, err := ss.open(start)
		if err != nil {
			return nil, err
		}
		sh.idx = idx
		ss.shards[start] = sh
	}
	sh.refs++
	sh.lastUsed = now
	return sh, nil
}

func (ss *shardSet) open(start int64) (bleve.Index, error) {
	p := ss.path(start)
	if _, err := os.Stat(filepath.Join(p, "index_meta.json")); err == nil {
		idx, err := bleve.Open(p)
		if err != nil {
			return nil, fmt.Errorf("open log shard %s: %w", p, err)
		}
		return idx, nil
	}
	// A directory without metadata is a shard whose creation was cut short:
	// start it again.
	if err := os.RemoveAll(p); err != nil {
		return nil, fmt.Errorf("clear partial log shard %s: %w", p, err)
	}
	idx, err := bleve.NewUsing(p, ss.mapping, scorch.Name, scorch.Name, nil)
	if err != nil {
		return nil, fmt.Errorf("create log shard %s: %w", p, err)
	}
	return idx, nil
}

func (ss *shardSet) release(shards ...*shard) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for _, sh := range shards {
		sh.refs--
	}
}

// acquireRange opens every existing shard overlapping [from, to] (unix ns),
// oldest first.
func (ss *shardSet) acquireRange(from, to int64, now time.Time) ([]*shard, error) {
	ss.mu.Lock()
	var starts []int64
	for start := range ss.shards {
		if start <= to && start+int64(ss.dur) > from {
			starts = append(starts, start)
		}
	}
	ss.mu.Unlock()
	slices.Sort(starts)
	out := make([]*shard, 0, len(starts))
	for _, st := range starts {
		sh, err := ss.acquire(st, false, now)
		if err != nil {
			ss.release(out...)
			return nil, err
		}
		if sh != nil {
			out = append(out, sh)
		}
	}
	return out, nil
}

// maintain closes shards idle longer than idle and deletes shards whose end
// is at or before cutoff. It returns how many shards it deleted.
func (ss *shardSet) maintain(now time.Time, idle time.Duration, cutoff int64) (deleted int, err error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var errs []error
	for start, sh := range ss.shards {
		if sh.refs > 0 {
			continue
		}
		expired := start+int64(ss.dur) <= cutoff
		if sh.idx != nil && (expired || now.Sub(sh.lastUsed) >= idle) {
			if cerr := sh.idx.Close(); cerr != nil {
				errs = append(errs, fmt.Errorf("close log shard %d: %w", start, cerr))
			}
			sh.idx = nil
		}
		if expired {
			if rerr := os.RemoveAll(ss.path(start)); rerr != nil {
				errs = append(errs, fmt.Errorf("delete log shard %d: %w", start, rerr))
				continue
			}
			delete(ss.shards, start)
			deleted++
		}
	}
	return deleted, errors.Join(errs...)
}

// counts returns the number of shards known and open.
func (ss *shardSet) counts() (known, open int) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for _, sh := range ss.shards {
		if sh.idx != nil {
			open++
		}
	}
	return len(ss.shards), open
}

func (ss *shardSet) close() error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var errs []error
	for start, sh := range ss.shards {
		if sh.idx != nil {
			if err := sh.idx.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close log shard %d: %w", start, err))
			}
			sh.idx = nil
		}
	}
	return errors.Join(errs...)
}
