// Package sampling decides which assembled traces the indexer keeps, and
// records why. Decisions depend only on the trace's content, never on arrival
// timing or randomness, so a replay after a crash decides exactly as before.
package sampling

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/threadline/threadline/span"
)

// Reasons a trace is kept, stored with it and shown by the APIs.
const (
	ReasonError       = "error"
	ReasonLatencyTopN = "latency_topn"
	ReasonExemplar    = "exemplar"
	ReasonAlert       = "alert"
	ReasonBaseline    = "baseline"
)

// Baseline keeps a fixed fraction of traces, chosen by the trace ID so every
// indexer (and every replay) agrees.
type Baseline struct {
	threshold uint64
	all       bool
}

// NewBaseline keeps fraction p of traces, p in [0,1].
func NewBaseline(p float64) (*Baseline, error) {
	if math.IsNaN(p) || p < 0 || p > 1 {
		return nil, fmt.Errorf("baseline sampling fraction must be within [0,1], got %v", p)
	}
	return &Baseline{threshold: uint64(p * math.MaxUint64), all: p == 1}, nil
}

// Keep reports whether the baseline keeps the trace. It reads the ID's low 8
// bytes, which W3C trace context requires to be random.
func (b *Baseline) Keep(id span.TraceID) bool {
	return b.all || binary.BigEndian.Uint64(id[8:]) < b.threshold
}
