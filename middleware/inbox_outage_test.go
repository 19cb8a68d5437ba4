package middleware_test

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/tcpproxy"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/middleware"
)

// When the inbox's database is unreachable (its connections cut), the delivery fails with a
// temporary error (fault.Temporary), so that the dead-letter middleware outside retries it
// without counting an attempt: a database outage never dead-letters a good message. Once the
// database is back, the same delivery, retried, is handled once.
func TestInboxDatabaseOutageIsTemporary(t *testing.T) {
	t.Parallel()
	var proxy *tcpproxy.Proxy
	e := newEnv(t, onDriver(func(t *testing.T, _ database.Driver) database.Driver {
		var db database.Driver
		db, proxy = testdb.Proxied(t, 4, time.Second)
		return db
	}))
	in, err := middleware.NewInbox(e.agent, middleware.InboxConfig{ConsumerName: "outage"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ran := 0
	h := in.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		ran++
		return nil, nil
	})
	msg := message.NewMessage("outage-1", []byte(`{}`))

	proxy.Cut()
	_, err = h(msg)
	if err == nil {
		t.Fatal("the inbox handled a message with its database cut off")
	}
	if !fault.IsTemporary(err) {
		t.Errorf("a cut database connection gives %v (kind %v), want a temporary error", err, fault.KindOf(err))
	}
	if ran != 0 {
		t.Errorf("the handler ran %d times without a database", ran)
	}
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	// A pooled connection the cut broke may only be found broken by its next statement: that
	// delivery fails, temporary like the others, and the retry (the dead-letter middleware's)
	// takes a sound connection. The pool holds 4 at most.
	for try := 1; ; try++ {
		_, err := h(msg)
		if err == nil {
			break
		}
		if !fault.IsTemporary(err) || try == 5 {
			t.Fatalf("after the database came back, try %d: %v (kind %v)", try, err, fault.KindOf(err))
		}
		t.Logf("after the database came back, try %d failed (temporary): %v", try, err)
	}
	if _, err := h(msg); err != nil {
		t.Fatalf("the duplicate: %v", err)
	}
	if ran != 1 {
		t.Errorf("the handler ran %d times, want once", ran)
	}
}
