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
// and skips the others. It parses with consumeField (one call per field,
// one-byte tags and lengths inline: it runs for every record the indexer
// consumes) and falls back to protowire for what that refuses, groups.
func eachField(b []byte, num protowire.Number, fn func([]byte) error) error {
	for len(b) > 0 {
		fnum, typ, _, v, n := consumeField(b)
		if n < 0 {
			var tn int
			if fnum, typ, tn = protowire.ConsumeTag(b); tn < 0 {
				return fmt.Errorf("count spans: %w", ErrMalformed)
			}
			if n = protowire.ConsumeFieldValue(fnum, typ, b[tn:]); n < 0 {
				return fmt.Errorf("count spans: %w", ErrMalformed)
			}
			n += tn
		}
		b = b[n:]
		if fnum == num && typ == protowire.BytesType {
			if err := fn(v); err != nil {
				return err
			}
		}
	}
	return nil
}
