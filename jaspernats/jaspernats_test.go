package jaspernats_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/jaspernats"
)

const startNATS = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"

func natsURL() string {
	if u := os.Getenv("NATS_URL"); u != "" {
		return u
	}
	return "nats://127.0.0.1:4222"
}

// natsJS connects to the test server, failing (never skipping) with how to start it.
func natsJS(t testing.TB) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(natsURL(), nats.Timeout(3*time.Second))
	if err != nil {
		t.Fatalf("NATS at %s: %v; start it with: %s", natsURL(), err, startNATS)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func TestPublishCreatesStreamAndRefusesPerDestination(t *testing.T) {
	js := natsJS(t)
	prefix := fmt.Sprintf("JTEST%d_", time.Now().UnixNano())
	p, err := jaspernats.NewPublisher(jaspernats.Config{URL: natsURL(), CreateStreams: true, StreamPrefix: prefix}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	subject := fmt.Sprintf("jtest%d.orders", time.Now().UnixNano())
	stream := jaspernats.StreamName(prefix, subject)
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), stream) })

	m := message.NewMessage(watermill.NewUUID(), []byte(`{"n":1}`))
	m.Metadata.Set("message-type", "OrderPlaced")
	if err := p.Publish(subject, m); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(subject, m); err != nil { // duplicate: acknowledged, dropped
		t.Fatal(err)
	}
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if string(raw.Data) != `{"n":1}` || raw.Header.Get("message-type") != "OrderPlaced" || raw.Header.Get("Nats-Msg-Id") != m.UUID {
		t.Errorf("stored %q %v", raw.Data, raw.Header)
	}
	if info, _ := s.Info(context.Background()); info.State.Msgs != 1 {
		t.Errorf("%d messages, want 1 (the duplicate is dropped)", info.State.Msgs)
	}

	// Unmappable destinations are permanent errors; the connection keeps working.
	for _, d := range []string{"rabbitmq://queue/my orders", "a..b", "x.*"} {
		if _, err := jaspernats.Subject(d); !fault.IsPermanent(err) {
			t.Errorf("Subject(%q): %v, want a permanent error", d, err)
		}
	}
	// A subject with a space reaches the server as a bad subject: permanent, connection kept.
	if err := p.Publish("bad subject", m); !fault.IsPermanent(err) {
		t.Errorf("publish to a bad subject: %v, want permanent", err)
	}
	if err := p.Publish(subject, message.NewMessage(watermill.NewUUID(), []byte("2"))); err != nil {
		t.Fatalf("after a refused subject: %v", err)
	}

	// Without CreateStreams a subject no stream captures is permanent, naming the cause.
	q, err := jaspernats.NewPublisher(jaspernats.Config{URL: natsURL()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = q.Publish(fmt.Sprintf("jtest%d.nostream", time.Now().UnixNano()), m)
	if !fault.IsPermanent(err) || !errors.Is(err, jaspernats.ErrNoStream) {
		t.Errorf("publish without stream: %v", err)
	}
	if err := q.Close(); err != nil {
		t.Error(err)
	}
	if err := q.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestStreamName(t *testing.T) {
	a, b := jaspernats.StreamName("J_", "a.b"), jaspernats.StreamName("J_", "a_b")
	if a == b || strings.ContainsAny(a, ". *>/\\") || !strings.HasPrefix(a, "J_a_b_") {
		t.Errorf("%q %q", a, b)
	}
	if jaspernats.StreamName("J_", "a.b") != a {
		t.Error("not deterministic")
	}
}
