package loadgen

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// rawMessage is an already-encoded protobuf message. The client sends and
// receives rawMessages through rawCodec so that no request is marshalled
// while the clock runs.
type rawMessage struct {
	b []byte
}

// rawCodec is a gRPC codec that passes bytes through. It is forced per call
// (grpc.ForceCodecV2) without changing the content-subtype, so the server
// still sees application/grpc and decodes with its protobuf codec.
type rawCodec struct{}

var _ encoding.CodecV2 = rawCodec{}

// Marshal returns the message's bytes without copying. gRPC holds them until
// the frames are written; callers reuse the buffer only after the call
// returns successfully, by which time the server has read the whole request.
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*rawMessage)
	if !ok {
		return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(m.b)}, nil
}

// Unmarshal copies the response into the message's buffer, reusing its
// capacity; gRPC frees data when Unmarshal returns.
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*rawMessage)
	if !ok {
		return fmt.Errorf("raw codec: cannot unmarshal into %T", v)
	}
	m.b = m.b[:0]
	for _, b := range data {
		m.b = append(m.b, b.ReadOnlyData()...)
	}
	return nil
}

// Name is reported for diagnostics only: a forced codec does not set the
// content-subtype.
func (rawCodec) Name() string { return "raw" }

// rejectedSpans reads partial_success.rejected_spans from an encoded
// ExportTraceServiceResponse without a protobuf runtime: the response is
// usually empty, and parsing it by hand keeps the hot path allocation-free.
func rejectedSpans(resp []byte) (int64, error) {
	var rejected int64
	err := walkMessage(resp, 0, func(num protowire.Number, typ protowire.Type, val []byte, _ int) error {
		// ExportTraceServiceResponse.partial_success = 1.
		if num != 1 || typ != protowire.BytesType {
			return nil
		}
		return walkMessage(val, 0, func(num protowire.Number, typ protowire.Type, val []byte, _ int) error {
			// ExportTracePartialSuccess.rejected_spans = 1.
			if num != 1 || typ != protowire.VarintType {
				return nil
			}
			v, n := protowire.ConsumeVarint(val)
			if n < 0 {
				return fmt.Errorf("rejected_spans: %w", errMalformed)
			}
			rejected = int64(v)
			return nil
		})
	})
	if err != nil {
		return 0, err
	}
	return rejected, nil
}
