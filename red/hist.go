package red

import (
	"math"
	"sort"
	"time"
)

// Latency histogram: NumBuckets fixed buckets whose upper bounds grow by
// BucketFactor from 1 ms to about 79 s, plus an overflow bucket (+Inf). Fixed
// bounds let every indexer's histograms be summed exactly before any
// percentile is computed.
const (
	// BucketFactor is the ratio of consecutive bucket bounds.
	BucketFactor = 1.6
	// NumBuckets counts the finite bounds plus the overflow bucket.
	NumBuckets = 26
	firstBound = time.Millisecond
)

// bounds are the finite upper bounds (inclusive, as Prometheus' le).
var bounds = func() [NumBuckets - 1]time.Duration {
	var b [NumBuckets - 1]time.Duration
	v := float64(firstBound)
	for i := range b {
		b[i] = time.Duration(math.Round(v))
		v *= BucketFactor
	}
	return b
}()

// Bounds returns the finite upper bounds; bucket i holds durations in
// (Bounds()[i-1], Bounds()[i]], and the last bucket everything above.
func Bounds() []time.Duration { return bounds[:] }

// BoundsSeconds returns Bounds in seconds, the form the read API and the
// Prometheus exposition carry.
func BoundsSeconds() []float64 {
	out := make([]float64, len(bounds))
	for i, b := range bounds {
		out[i] = b.Seconds()
	}
	return out
}

// bucketOf returns the histogram bucket of d.
func bucketOf(d time.Duration) int {
	return sort.Search(len(bounds), func(i int) bool { return bounds[i] >= d })
}

// Quantile estimates the q-quantile (0 < q ≤ 1) of the durations counted in
// hist (non-cumulative counts per bucket, len NumBuckets). It finds the
// bucket holding the sample of rank ceil(q·n) and interpolates
// geometrically inside it.
//
// Error bound: the estimate lies in the same bucket as the true
// (nearest-rank) quantile, so for durations between 1 ms and the last bound
// it is within a factor BucketFactor (1.6) of the truth, i.e. at most 60%
// high or 37.5% low; below 1 ms it is within 1 ms. Samples above the last
// bound (≈79 s) are reported as the last bound.
func Quantile(hist []uint64, q float64) time.Duration {
	var n uint64
	for _, c := range hist {
		n += c
	}
	if n == 0 || q <= 0 || math.IsNaN(q) {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = min(max(rank, 1), n)
	var seen uint64
	for i, c := range hist {
		if c == 0 {
			continue
		}
		if seen+c < rank {
			seen += c
			continue
		}
		if i >= len(bounds) {
			return bounds[len(bounds)-1]
		}
		hi := float64(bounds[i])
		// Position of the rank inside the bucket, centred on each sample.
		frac := (float64(rank-seen) - 0.5) / float64(c)
		if i == 0 {
			return time.Duration(hi * frac)
		}
		lo := float64(bounds[i-1])
		return time.Duration(lo * math.Pow(hi/lo, frac))
	}
	return bounds[len(bounds)-1]
}
