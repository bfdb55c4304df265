package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// ErrRecordsGone is returned by Fetcher.Fetch when a wanted offset is below
// the partition's log start: retention (or compaction) removed the record.
var ErrRecordsGone = errors.New("records no longer in the log")

// Fetcher reads single records back by partition and offset, outside the
// consumer group, for the indexer's rare second look at a trace it already
// dropped (an exemplar of an alerting metric named it afterwards).
//
// Each Fetch uses its own short-lived client with direct partition
// consuming: refetches are rare (one per exemplar of a dropped trace), so a
// client per call costs a connection but holds no fetch buffers or
// goroutines between calls, and cannot interfere with the group consumer.
type Fetcher struct {
	cfg Config
}

// NewFetcher returns a fetcher for the brokers of cfg.
func NewFetcher(cfg Config) (*Fetcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if _, err := cfg.clientOpts(); err != nil {
		return nil, err
	}
	return &Fetcher{cfg: cfg}, nil
}

// Fetch returns the records of topic/partition at the given offsets, in
// offset order. An offset whose record no longer exists (below the log start)
// makes it fail with ErrRecordsGone; offsets that hold no record (transaction
// markers, compacted away) are skipped. ctx bounds the whole call.
func (f *Fetcher) Fetch(ctx context.Context, topic string, partition int32, offsets []int64) ([]*kgo.Record, error) {
	if len(offsets) == 0 {
		return nil, nil
	}
	want := slices.Clone(offsets)
	slices.Sort(want)
	want = slices.Compact(want)
	opts, err := f.cfg.clientOpts()
	if err != nil {
		return nil, err
	}
	opts = append(opts,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {partition: kgo.NewOffset().At(want[0])}}),
		// Out of range must be an error, not a silent jump to the log start
		// or end: the records are simply gone.
		kgo.ConsumeResetOffset(kgo.NoResetOffset()),
		kgo.FetchMaxBytes(8<<20),
		kgo.FetchMaxPartitionBytes(4<<20),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("create kafka fetch client: %w", err)
	}
	defer cl.Close()

	var out []*kgo.Record
	next := 0 // index in want of the first offset not yet passed
	for next < len(want) {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return out, fmt.Errorf("fetch %s/%d at %d: %w", topic, partition, want[next], err)
		}
		var ferr error
		fetches.EachError(func(_ string, _ int32, err error) {
			if errors.Is(err, kerr.OffsetOutOfRange) {
				err = fmt.Errorf("%w: %w", ErrRecordsGone, err)
			}
			if ferr == nil {
				ferr = err
			}
		})
		if ferr != nil {
			return out, fmt.Errorf("fetch %s/%d at %d: %w", topic, partition, want[next], ferr)
		}
		last := int64(-1)
		fetches.EachRecord(func(r *kgo.Record) {
			last = max(last, r.Offset)
			for next < len(want) && want[next] < r.Offset {
				next++ // no record at that offset (a control record, say)
			}
			if next < len(want) && want[next] == r.Offset {
				out = append(out, r)
				next++
			}
		})
		// Jump over the gap to the next wanted offset instead of reading
		// every record between: a trace's records are usually close, but
		// a long trace's may be a minute of partition traffic apart.
		if next < len(want) && last >= 0 && want[next] > last+1 {
			cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{topic: {partition: {Epoch: -1, Offset: want[next]}}})
		}
	}
	return out, nil
}
