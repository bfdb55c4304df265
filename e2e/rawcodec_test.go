package e2e

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// rawMsg sends bytes as they are, to put malformed protobuf on the wire.
type rawMsg struct{ b []byte }

type rawCodecForTest struct{}

func (rawCodecForTest) Name() string { return proto.Name }

func (rawCodecForTest) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*rawMsg); ok {
		return mem.BufferSlice{mem.SliceBuffer(r.b)}, nil
	}
	return encoding.GetCodecV2(proto.Name).Marshal(v)
}

func (rawCodecForTest) Unmarshal(data mem.BufferSlice, v any) error {
	return encoding.GetCodecV2(proto.Name).Unmarshal(data, v)
}
