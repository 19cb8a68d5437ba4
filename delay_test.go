package jasper_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/publisher"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

const (
	// delayedMessages is how many delayed messages each timing test publishes, with delays
	// spread evenly over [0, delaySpread].
	delayedMessages = 50
	delaySpread     = 1500 * time.Millisecond
)

// Delayed messages of a durable local queue (components/delay through the runtime's
// publisher, delivered by the runtime's subscriber) never arrive before their due time: the
// time of the Publish call plus the delay. How late they arrive is logged, not asserted.
func TestDelayedLocalMessagesNeverArriveEarly(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	rt, err := jasper.NewRuntime(db, jasper.Config{
		Schema:    cfg.Schema,
		Publisher: publisher.Config{Table: publisher.Incoming},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	startRuntime(t, rt)
	sub, err := rt.Subscriber(subscriber.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const topic = "delayed-local"
	out, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	warmUp(t, rt.Publisher(), topic, out)
	arrivals := collectArrivals(out, delayedMessages)
	due := publishDelayed(t, rt.Publisher(), topic, "local")
	checkArrivals(t, due, arrivals)
}

// Scheduled sends (delayed messages of the outbox, relayed by the runtime's forwarder to a
// GoChannel) never reach the broker before their due time.
func TestScheduledSendsNeverArriveEarly(t *testing.T) {
	t.Parallel()
	db, cfg := testdb.Migrated(t)
	sink := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: delayedMessages}, nil)
	t.Cleanup(func() { _ = sink.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const topic = "delayed-send"
	out, err := sink.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := jasper.NewRuntime(db, jasper.Config{
		Schema:     cfg.Schema,
		Forwarders: []forwarder.Config{{Publisher: sink}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	startRuntime(t, rt)
	warmUp(t, rt.Publisher(), topic, out)
	arrivals := collectArrivals(out, delayedMessages)
	due := publishDelayed(t, rt.Publisher(), topic, "send")
	checkArrivals(t, due, arrivals)
}

// warmUp sends one message delayed by a millisecond through pub and waits for it on out, so
// that the lateness logged is not the first use of the schema's statements on fresh
// connections. (A delayed message sends no coalesced notification, so the next undelayed
// one still gets its own.)
func warmUp(t *testing.T, pub message.Publisher, topic string, out <-chan *message.Message) {
	t.Helper()
	msg := message.NewMessage("warm-up", []byte(`{}`))
	delay.Message(msg, delay.For(time.Millisecond))
	if err := pub.Publish(topic, msg); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-out:
		m.Ack()
	case <-time.After(crashTimeout):
		t.Fatalf("the warm-up message did not arrive within %s", crashTimeout)
	}
}

// publishDelayed publishes delayedMessages messages to topic, one Publish call each, delayed
// with delay.For by delays spread over [0, delaySpread] in a shuffled order (so that a later
// due time is often asked for before an earlier one), and returns the due time of each
// message UUID: the time the Publish call started plus the delay, never earlier than the
// due time components/delay meant.
func publishDelayed(t *testing.T, pub message.Publisher, topic, prefix string) map[string]time.Time {
	t.Helper()
	due := make(map[string]time.Time, delayedMessages)
	for i := range delayedMessages {
		k := (i * 17) % delayedMessages // a permutation: 17 and 50 are coprime
		d := delaySpread * time.Duration(k) / (delayedMessages - 1)
		msg := message.NewMessage(fmt.Sprintf("%s-%02d", prefix, k), []byte(`{}`))
		delay.Message(msg, delay.For(d))
		start := time.Now()
		if err := pub.Publish(topic, msg); err != nil {
			t.Fatal(err)
		}
		due[msg.UUID] = start.Add(d)
	}
	return due
}

// collectArrivals acks every message of out, from now on and while the test publishes, and
// records when each message UUID first arrived; the channel it returns yields them once n
// distinct messages have arrived (or out was closed).
func collectArrivals(out <-chan *message.Message, n int) <-chan map[string]time.Time {
	done := make(chan map[string]time.Time, 1)
	go func() {
		arrived := make(map[string]time.Time, n)
		for len(arrived) < n {
			m, ok := <-out
			if !ok {
				break
			}
			now := time.Now()
			m.Ack()
			if _, dup := arrived[m.UUID]; !dup { // at-least-once allows a redelivery
				arrived[m.UUID] = now
			}
		}
		done <- arrived
	}()
	return done
}

// checkArrivals waits for the arrival of every message of due, fails the test for any that
// arrived before its due time, and logs the lateness.
func checkArrivals(t *testing.T, due map[string]time.Time, arrivals <-chan map[string]time.Time) {
	t.Helper()
	var arrived map[string]time.Time
	select {
	case arrived = <-arrivals:
	case <-time.After(crashTimeout):
		t.Fatalf("the %d delayed messages did not all arrive within %s", len(due), crashTimeout)
	}
	late := make([]time.Duration, 0, len(due))
	for id, when := range due {
		at, ok := arrived[id]
		if !ok {
			t.Errorf("message %s did not arrive", id)
			continue
		}
		if early := when.Sub(at); early > 0 {
			t.Errorf("message %s arrived %s before its due time", id, early)
		}
		late = append(late, at.Sub(when))
	}
	if len(late) == 0 {
		return
	}
	slices.Sort(late)
	t.Logf("%d delayed messages: lateness p50 %s, p99 %s, max %s (min %s)", len(late),
		pct(late, 50), pct(late, 99), late[len(late)-1], late[0])
}

// pct is the p-th percentile of sorted (nearest rank).
func pct(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(i-1, 0)]
}
