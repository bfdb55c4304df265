package span

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// CountSpans counts the spans in an encoded TracesData without decoding them,
// so the indexer can bound its buffer while keeping records encoded (a decoded
// span costs several times its wire size in memory).
func CountSpans(data []byte) (int, error) {
	n := 0
	err := eachField(data, 1, func(rs []byte) error { // ResourceSpans
		return eachField(rs, 2, func(ss []byte) error { // ScopeSpans
			return eachField(ss, 2, func([]byte) error { n++; return nil }) // Span
		})
	})
	return n, err
}

// eachField calls fn with the value of every length-delimited field num in b
// and skips the others.
func eachField(b []byte, num protowire.Number, fn func([]byte) error) error {
	for len(b) > 0 {
		fnum, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("count spans: %w", ErrMalformed)
		}
		b = b[n:]
		if fnum == num && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return fmt.Errorf("count spans: %w", ErrMalformed)
			}
			if err := fn(v); err != nil {
				return err
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(fnum, typ, b)
		if m < 0 {
			return fmt.Errorf("count spans: %w", ErrMalformed)
		}
		b = b[m:]
	}
	return nil
}
