package index

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv("INDEX_BADGER_WRITER_CHILD"); dir != "" {
		badgerWriterChild(dir)
		return
	}
	goleak.VerifyTestMain(m)
}
