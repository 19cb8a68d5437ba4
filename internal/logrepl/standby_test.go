package logrepl_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
	"github.com/watermill-jasper/watermill-jasper/internal/testproc"
)

func TestMain(m *testing.M) {
	testproc.Main(map[string]func() error{"slotreader": slotReaderMain})
	os.Exit(m.Run())
}

// slotReaderMain is a child process holding a reader: it reports "standby" when the slot
// is in use, "active" once it streams, and each transaction ("tx", with its row ids), which
// it then confirms.
func slotReaderMain() error {
	fs := flag.NewFlagSet("slotreader", flag.ContinueOnError)
	dsn := fs.String("dsn", "", "replication DSN")
	schema := fs.String("schema", "", "outbox schema")
	if err := fs.Parse(testproc.Args()); err != nil {
		return err
	}
	ctx := context.Background()
	conn, err := logrepl.Dial(ctx, *dsn)
	if err != nil {
		return err
	}
	cfg := logrepl.Config{Schema: *schema, StatusInterval: 200 * time.Millisecond}
	r, err := logrepl.Start(ctx, conn, cfg)
	if errors.Is(err, logrepl.ErrSlotInUse) {
		testproc.Emit(testproc.Event{"event": "standby"})
		r, err = logrepl.WaitForSlot(ctx, conn, cfg, 50*time.Millisecond)
	}
	if err != nil {
		return err
	}
	testproc.Emit(testproc.Event{"event": "active", "pid": r.PID()})
	for {
		tx, err := r.Next(ctx)
		if err != nil {
			return err
		}
		ids := make([]string, len(tx.Rows))
		for i, row := range tx.Rows {
			ids[i] = row.ID.String()
		}
		testproc.Emit(testproc.Event{"event": "tx", "ids": ids})
		r.Confirm(tx.EndLSN)
	}
}

// collect reads tx events of p until every id of want was seen (or the child fails), and
// returns the ids in the order they came (duplicates included).
func collect(t *testing.T, p *testproc.Proc, want []uuid.UUID, got []uuid.UUID) []uuid.UUID {
	t.Helper()
	seen := map[uuid.UUID]bool{}
	for _, id := range got {
		seen[id] = true
	}
	missing := func() int {
		n := 0
		for _, id := range want {
			if !seen[id] {
				n++
			}
		}
		return n
	}
	deadline := time.After(waitLimit)
	for missing() > 0 {
		select {
		case e, ok := <-p.Events():
			if !ok {
				t.Fatalf("%s exited with %d rows missing", p.Name, missing())
			}
			switch e.Str("event") {
			case "error":
				t.Fatalf("%s: %s", p.Name, e.Str("error"))
			case "tx":
				for _, v := range e["ids"].([]any) {
					id := uuid.MustParse(v.(string))
					got = append(got, id)
					seen[id] = true
				}
			}
		case <-deadline:
			t.Fatalf("%s: %d rows missing after %s", p.Name, missing(), waitLimit)
		}
	}
	return got
}

// TestStandByTakesOverAfterSIGKILL: two processes on one slot, one active and one standing
// by; the active one is killed with SIGKILL mid-stream; the stand-by takes the slot within
// seconds and resumes from the confirmed position: every row arrives, in commit order per
// reader, redelivery allowed.
func TestStandByTakesOverAfterSIGKILL(t *testing.T) {
	srv := startLogicalServer(t)
	e := newEnv(t, srv, true)
	args := []string{"-dsn", srv.dsnAs("postgres"), "-schema", e.cfg.Schema}
	a := testproc.Start(t, "reader A", "slotreader", args...)
	a.Await(waitLimit, func(ev testproc.Event) bool { return ev.Str("event") == "active" })
	b := testproc.Start(t, "reader B", "slotreader", args...)
	b.Await(waitLimit, func(ev testproc.Event) bool { return ev.Str("event") == "standby" })

	var before []uuid.UUID
	for i := range 30 {
		before = append(before, e.commitTx(fmt.Sprintf("before-%d", i), 1)...)
	}
	gotA := collect(t, a, before, nil)
	if fmt.Sprint(gotA) != fmt.Sprint(before) {
		t.Fatalf("A: rows out of commit order or repeated:\n got %v\nwant %v", gotA, before)
	}
	// More rows while A streams, then SIGKILL: A may have sent some of them, confirmed or
	// not.
	var during []uuid.UUID
	for i := range 20 {
		during = append(during, e.commitTx(fmt.Sprintf("during-%d", i), 1)...)
	}
	a.Kill()
	killed := time.Now()
	// What A reported before it died (it reports a transaction before confirming it, so
	// every row it confirmed is among them).
	var lateA []uuid.UUID
	for ev := range a.Events() {
		if ev.Str("event") == "tx" {
			for _, v := range ev["ids"].([]any) {
				lateA = append(lateA, uuid.MustParse(v.(string)))
			}
		}
	}
	b.Await(waitLimit, func(ev testproc.Event) bool { return ev.Str("event") == "active" })
	took := time.Since(killed)
	t.Logf("B took the slot %s after A was killed", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Fatalf("B took %s to take over", took)
	}
	var after []uuid.UUID
	for i := range 20 {
		after = append(after, e.commitTx(fmt.Sprintf("after-%d", i), 1)...)
	}
	all := append(append([]uuid.UUID(nil), during...), after...)
	if fmt.Sprint(lateA) != fmt.Sprint(during[:len(lateA)]) {
		t.Fatalf("A's last rows are not a prefix of the commit order:\n got %v\nwant a prefix of %v", lateA, during)
	}
	// B must bring every row A did not report; it may repeat some A reported.
	gotB := collect(t, b, all[len(lateA):], nil)
	// B resumes at A's confirmed position: what it gets is a suffix of the commit order
	// (rows A confirmed are not sent again; nothing of "before" that A confirmed comes back
	// except what A had not confirmed yet), then the rows after.
	commitOrder := append(append([]uuid.UUID(nil), before...), all...)
	start := -1
	for i, id := range commitOrder {
		if id == gotB[0] {
			start = i
		}
	}
	if start < 0 || fmt.Sprint(gotB) != fmt.Sprint(commitOrder[start:]) {
		t.Fatalf("B's rows are not a suffix of the commit order:\n got %v\nwant a suffix of %v", gotB, commitOrder)
	}
	if start > len(before)+len(lateA) {
		t.Fatalf("B started at row %d of the commit order, after the first row nobody reported (%d)", start, len(before)+len(lateA))
	}
	t.Logf("A reported %d of the %d rows committed just before the kill; B redelivered %d rows A had reported (their confirmation had not reached the server)", len(lateA), len(during), len(before)+len(lateA)-start)
}

// TestDatabaseCrash: PostgreSQL crashes (immediate stop) under a streaming reader and starts
// again; a new reader resumes from the slot's confirmed position as the server recovered it
// (the last checkpoint's, maybe older than the last confirmation): every row arrives, in
// commit order, redelivery allowed.
func TestDatabaseCrash(t *testing.T) {
	srv := startLogicalServer(t)
	e := newEnv(t, srv, true)
	r, _ := e.start()
	var committed [][]uuid.UUID
	for i := range 10 {
		committed = append(committed, e.commitTx(fmt.Sprintf("before-%d", i), 2))
	}
	for i := range 5 {
		r.Confirm(expect(t, r, fmt.Sprintf("transaction %d", i), committed[i]).EndLSN)
	}
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.cluster.Crash()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	for {
		if _, err := r.Next(ctx); err != nil {
			if ctx.Err() != nil {
				t.Fatal("the reader did not notice the crash")
			}
			t.Logf("the reader saw the crash: %v", err)
			break
		}
	}
	srv.cluster.Start()
	srv.pool.Reset() // its connections died with the server
	r2, _ := e.start()
	for i := range 5 {
		committed = append(committed, e.commitTx(fmt.Sprintf("after-%d", i), 2))
	}
	// The first transaction r2 sends is at most the first one not confirmed; then every
	// transaction follows in commit order.
	first := rowIDs(next(t, r2))
	at := -1
	for i, ids := range committed {
		if fmt.Sprint(ids) == fmt.Sprint(first) {
			at = i
		}
	}
	if at < 0 || at > 5 {
		t.Fatalf("after the crash the first transaction is %v (index %d), want one of the first six", first, at)
	}
	for i := at + 1; i < len(committed); i++ {
		expect(t, r2, fmt.Sprintf("transaction %d after the crash", i), committed[i])
	}
	t.Logf("after the crash the slot resumed at transaction %d (5 were confirmed before it)", at)
}
