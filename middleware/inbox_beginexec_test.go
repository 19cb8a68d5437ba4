package middleware_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// The inbox on handles without database.FirstStatementBeginner (BEGIN, then the mark, as on
// database/sql) keeps its guarantees: concurrent duplicates have effects once, a failed
// attempt leaves nothing.
func TestInboxWithoutPipelinedBegin(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		db   func(t *testing.T, pgx database.DB) database.DB
	}{
		{"pgx, capability hidden", func(_ *testing.T, pgx database.DB) database.DB { return struct{ database.DB }{pgx} }},
		{"database/sql", func(t *testing.T, _ database.DB) database.DB {
			db, err := database.FromStdSQL(testdb.StdDB(t))
			if err != nil {
				t.Fatal(err)
			}
			return db
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.db = c.db(t, e.db)
			if _, ok := e.db.(database.FirstStatementBeginner); ok {
				t.Fatal("the handle still pipelines BEGIN")
			}
			in := e.inbox(nil)
			sub := newTestSub()
			var calls atomic.Int32
			entered, release := make(chan struct{}), make(chan struct{})
			startRouter(t, sub, "orders", func(msg *message.Message) error {
				n := calls.Add(1)
				if err := e.writeEffect(msg, int(n)); err != nil {
					return err
				}
				if n == 1 {
					close(entered)
					<-release
					return errors.New("first delivery fails")
				}
				return nil
			}, in.Middleware)

			msg := message.NewMessage(watermill.NewUUID(), nil)
			var wg sync.WaitGroup
			acked := make([]bool, 3)
			for i := range 3 {
				wg.Go(func() { acked[i] = sub.deliver(t, msg.Copy()) })
			}
			<-entered
			e.waitForLockWaiters(2)
			close(release)
			wg.Wait()
			nacks := 0
			for _, a := range acked {
				if !a {
					nacks++
				}
			}
			if nacks != 1 || calls.Load() != 2 || e.effects() != 1 || e.handledMarks() != 1 {
				t.Fatalf("%d nacks, handler ran %d times, %d effects, %d marks; want 1, 2, 1, 1", nacks, calls.Load(), e.effects(), e.handledMarks())
			}
		})
	}
}
