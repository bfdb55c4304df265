package loadgen

import (
	"math/bits"
	"time"
)

// histogram records Export latencies in log-linear buckets: 8 sub-buckets per
// power of two, so a quantile is within about 9% of the true value. Fixed
// size, so recording never allocates however long the run; each worker owns
// one and they are merged at the end.
type histogram struct {
	counts [64 * subBuckets]uint64
	max    time.Duration
	n      uint64
}

const subBucketBits = 3
const subBuckets = 1 << subBucketBits

func bucketOf(d time.Duration) int {
	v := uint64(max(d, 1))
	exp := bits.Len64(v) - 1 // v in [2^exp, 2^(exp+1))
	if exp < subBucketBits {
		return int(v)
	}
	mant := (v >> (exp - subBucketBits)) & (subBuckets - 1)
	return (exp-subBucketBits+1)*subBuckets + int(mant)
}

// upperBound is the largest duration that falls into bucket i.
func upperBound(i int) time.Duration {
	if i < subBuckets {
		return time.Duration(i) // the first buckets hold one value each
	}
	exp := i/subBuckets + subBucketBits - 1
	mant := uint64(i % subBuckets)
	lo := (1<<subBucketBits | mant) << (exp - subBucketBits)
	return time.Duration(lo + (1 << (exp - subBucketBits)) - 1)
}

func (h *histogram) record(d time.Duration) {
	h.counts[bucketOf(d)]++
	h.n++
	h.max = max(h.max, d)
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the upper bound of the bucket holding quantile q, capped
// at the largest recorded value.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n-1)) + 1
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(upperBound(i), h.max)
		}
	}
	return h.max
}
