package index

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"
)

func TestProbe(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), nil, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	w := newWorkload(42)
	t0 := time.Now()
	for i := 0; i < 100; i++ {
		t1 := time.Now()
		if err := st.WriteTraces(context.Background(), w.kept(100)); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(t1); d > 50*time.Millisecond {
			t.Logf("batch %d took %s", i, d)
		}
	}
	t.Logf("writes %s", time.Since(t0))
	t0 = time.Now()
	st.Close()
	t.Logf("close %s", time.Since(t0))
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		i, _ := e.Info()
		t.Logf("%s %d", e.Name(), i.Size())
	}
}
