package query

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// tracesJSON encodes OTLP TracesData as Tempo's JSON does: protobuf JSON field
// names, enum names, 64-bit integers as strings, and trace and span IDs in hex
// (Tempo's ID types marshal as hex, unlike protojson's base64 for bytes).
func tracesJSON(td *tracepb.TracesData) (json.RawMessage, error) {
	raw, err := protojson.MarshalOptions{}.Marshal(td)
	if err != nil {
		return nil, fmt.Errorf("encode trace JSON: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("re-read trace JSON: %w", err)
	}
	hexIDs(doc)
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encode trace JSON: %w", err)
	}
	return out, nil
}

// hexIDs rewrites, in place, every base64 traceId/spanId/parentSpanId string
// to lowercase hex.
func hexIDs(v any) {
	switch t := v.(type) {
	case map[string]any:
		for k, child := range t {
			if s, ok := child.(string); ok && (k == "traceId" || k == "spanId" || k == "parentSpanId") {
				if b, err := base64.StdEncoding.DecodeString(s); err == nil {
					t[k] = hex.EncodeToString(b)
				}
				continue
			}
			hexIDs(child)
		}
	case []any:
		for _, child := range t {
			hexIDs(child)
		}
	}
}
