package badger

import (
	"time"

	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/ristretto/v2/z"
)

// Threadline patch (see PATCH.md): tables stay out of the process's resident
// set. CreateTable drops a new table's pages as it writes them; reads then
// fault back in what they touch (compactions read whole tables, lookups the
// blocks their bloom filters let through, opening a table its index) and
// those pages stayed, so on a long run the resident part of the tables grew
// with the LSM (110 MiB after 6M spans in the end-to-end benchmark). Once a
// tablePagesInterval, every live table's pages are dropped again. Each table
// is held by a reference while its pages are dropped, so its mapping cannot
// be unmapped meanwhile; the pages stay in the page cache and the next read
// takes a minor fault.

// tablePagesInterval is how often live tables' pages are dropped.
const tablePagesInterval = time.Second

func (db *DB) dropTablePagesLoop(lc *z.Closer) {
	defer lc.Done()
	tick := time.NewTicker(tablePagesInterval)
	defer tick.Stop()
	for {
		select {
		case <-lc.HasBeenClosed():
			return
		case <-tick.C:
			db.dropTablePages()
		}
	}
}

// dropTablePages drops the resident pages of every table in the LSM.
func (db *DB) dropTablePages() {
	var tables []*table.Table
	for _, l := range db.lc.levels {
		l.RLock()
		for _, t := range l.tables {
			t.IncrRef()
			tables = append(tables, t)
		}
		l.RUnlock()
	}
	for _, t := range tables {
		if err := t.DropResident(); err != nil {
			db.opt.Warningf("dropping the resident pages of table %d: %v", t.ID(), err)
		}
		if err := t.DecrRef(); err != nil {
			db.opt.Errorf("releasing table %d: %v", t.ID(), err)
		}
	}
}
