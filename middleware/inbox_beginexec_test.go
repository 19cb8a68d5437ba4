package middleware_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// The inbox on drivers without database.FirstStatementBeginner (BEGIN, then the mark, as on
// database/sql) keeps its guarantees: concurrent duplicates have effects once, a failed
// attempt leaves nothing.
func TestInboxWithoutPipelinedBegin(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		db   func(t *testing.T, pgx database.Driver) database.Driver
	}{
		{"pgx, capability hidden", func(t *testing.T, _ database.Driver) database.Driver {
			d, err := postgres.New(struct{ dbx.DB }{dbx.FromPgx(testdb.Pool(t))})
			if err != nil {
				t.Fatal(err)
			}
			return d
		}},
		{"database/sql", func(t *testing.T, _ database.Driver) database.Driver { return testdb.StdDriver(t) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, onDriver(c.db))
			if _, ok := e.agent.Store().DB().(database.FirstStatementBeginner); ok {
				t.Fatal("the driver still pipelines BEGIN")
			}
			in := e.inbox(nil)
			sub := newTestSub()
			var calls atomic.Int32
			g := newGate()
			defer g.open() // also when the test fails: the first delivery must not hold its transaction
			startRouter(t, sub, "orders", func(msg *message.Message) error {
				n := calls.Add(1)
				if err := e.writeEffect(msg, int(n)); err != nil {
					return err
				}
				if n == 1 {
					close(g.entered)
					<-g.release
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
			g.waitEntered(t)
			e.waitForLockWaiters(2)
			g.open()
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
