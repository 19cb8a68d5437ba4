package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	watermillsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// A runtime's Collector, taken before the subscriber and the middleware exist, shows their
// per-topic series once a router ran messages through them: the durable queue "jobs"
// (3 acked, 1 nacked first), and "events" behind the inbox and the dead-letter middleware
// (a message delivered twice is handled once and counted as a duplicate; a poison message
// is dead-lettered as permanent).
func TestRuntimeMetricsPerTopic(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rt, metricsURL := startScrapedRuntime(t, jasper.Config{})

	sub, err := rt.Subscriber(subscriber.Config{NackBackoff: -1})
	if err != nil {
		t.Fatal(err)
	}
	inbox, err := rt.Inbox(middleware.InboxConfig{ConsumerName: "metrics-test"})
	if err != nil {
		t.Fatal(err)
	}
	dl, err := rt.DeadLetter(middleware.DeadLetterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	events := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	var failedOnce atomic.Bool
	router.AddConsumerHandler("jobs", "jobs", sub, func(msg *message.Message) error {
		if msg.UUID == "retry-1" && failedOnce.CompareAndSwap(false, true) {
			return errors.New("first delivery fails")
		}
		return nil
	})
	h := router.AddConsumerHandler("events", "events", events, func(msg *message.Message) error {
		if msg.UUID == "poison" {
			return fault.Permanent(errors.New("poison"))
		}
		return nil
	})
	h.AddMiddleware(inbox.Middleware, dl.Middleware)
	routerDone := make(chan error, 1)
	go func() { routerDone <- router.Run(ctx) }()
	defer func() {
		if err := router.Close(); err != nil {
			t.Error(err)
		}
		if err := <-routerDone; err != nil {
			t.Error(err)
		}
	}()
	<-router.Running()

	queue, err := publisher.NewPublisher(watermillsql.BeginnerFromPgx(testdb.Pool(t)), publisher.Config{
		Schema: rt.Schema(), Table: publisher.Incoming,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"ok-1", "ok-2", "retry-1"} {
		if err := queue.Publish("jobs", message.NewMessage(id, []byte(`{}`))); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"e-1", "e-1", "poison"} {
		if err := events.Publish("events", message.NewMessage(id, []byte(`{}`))); err != nil {
			t.Fatal(err)
		}
	}

	want := []string{
		`watermill_jasper_subscriber_messages_acked_total{topic="jobs"} 3`,
		`watermill_jasper_subscriber_messages_nacked_total{topic="jobs"} 1`,
		`watermill_jasper_subscriber_in_flight{topic="jobs"} 0`,
		`watermill_jasper_inbox_messages_handled_total{topic="events"} 2`,
		`watermill_jasper_inbox_duplicates_total{topic="events"} 1`,
		`watermill_jasper_handler_dead_lettered_total{reason="permanent",topic="events"} 1`,
		`watermill_jasper_handler_dead_lettered_total{reason="exhausted",topic="events"} 0`,
	}
	var text string
	for deadline := time.Now().Add(time.Minute); ; {
		text = scrape(t, metricsURL)
		missing := ""
		for _, w := range want {
			if !strings.Contains(text, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics still lacks %q after a minute:\n%s", missing, text)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}
