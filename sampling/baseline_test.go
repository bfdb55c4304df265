package sampling

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/threadline/threadline/span"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBaselineFraction(t *testing.T) {
	f := func(p float64) {
		t.Helper()
		b, err := NewBaseline(p)
		require.NoError(t, err)
		r := rand.New(rand.NewPCG(1, 2))
		kept := 0
		const n = 100000
		for range n {
			var id span.TraceID
			binary.BigEndian.PutUint64(id[:8], r.Uint64())
			binary.BigEndian.PutUint64(id[8:], r.Uint64())
			if b.Keep(id) {
				kept++
			}
			require.Equal(t, b.Keep(id), b.Keep(id), "deterministic")
		}
		require.InDelta(t, p, float64(kept)/n, 0.01)
	}
	f(0)
	f(0.1)
	f(0.5)
	f(1)
}

func TestBaselineRejectsBadFraction(t *testing.T) {
	for _, p := range []float64{-0.1, 1.5} {
		_, err := NewBaseline(p)
		require.ErrorContains(t, err, "within [0,1]")
	}
}
