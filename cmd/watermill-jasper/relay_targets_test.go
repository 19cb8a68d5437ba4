package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/jaspernats"
	"github.com/watermill-jasper/watermill-jasper/jasperredis"
	"github.com/watermill-jasper/watermill-jasper/metadata"
)

const (
	startNATS  = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
	startRedis = `redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log`
)

func testNATSURL() string {
	if u := os.Getenv("NATS_URL"); u != "" {
		return u
	}
	return "nats://127.0.0.1:4222"
}

func testRedisURL() string {
	if u := os.Getenv("REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// testJetStream connects to the test NATS server, failing (never skipping) with how to start it.
func testJetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(testNATSURL(), nats.Timeout(3*time.Second))
	if err != nil {
		t.Fatalf("NATS at %s: %v; start it with: %s", testNATSURL(), err, startNATS)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// deadLetterExplanations returns the dead letters of schema s: id -> explanation + exception message.
func deadLetterExplanations(t testing.TB, s string) map[string]string {
	t.Helper()
	rows, err := testdb.Pool(t).Query(context.Background(),
		fmt.Sprintf(`select id::text, coalesce(explanation, '') || ' | ' || coalesce(exception_message, '') from %q.jasper_dead_letters`, s))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var id, text string
		if err := rows.Scan(&id, &text); err != nil {
			t.Fatal(err)
		}
		out[id] = text
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRelayJasperRowsToNATS relays Jasper rows to JetStream: the streams are created, every
// message arrives with its id, payload and headers; a destination with a space (unmappable)
// and one whose stream rejects the message (max message size 1) are dead-lettered with the
// mapper's and JetStream's messages while the others keep flowing.
func TestRelayJasperRowsToNATS(t *testing.T) {
	t.Parallel()
	js := testJetStream(t)
	ctx := context.Background()
	s := migratedSchema(t)
	tag := fmt.Sprintf("jtest%d", time.Now().UnixNano())
	good := "rabbitmq://queue/" + tag + "-orders"
	routed := "rabbitmq://exchange/" + tag + "/routing/order.placed"
	spaced := "rabbitmq://queue/" + tag + " orders"
	small := tag + ".small"
	goodSubject, routedSubject := tag+"-orders", tag+".order.placed"
	streams := []string{jaspernats.StreamName(jaspernats.DefaultStreamPrefix, goodSubject),
		jaspernats.StreamName(jaspernats.DefaultStreamPrefix, routedSubject), tag + "_SMALL"}
	t.Cleanup(func() {
		for _, st := range streams {
			_ = js.DeleteStream(context.Background(), st)
		}
	})
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: tag + "_SMALL", Subjects: []string{small}, MaxMsgSize: 1}); err != nil {
		t.Fatal(err)
	}
	rows := append(makeRows(good, 5), makeRows(routed, 3)...)
	bad := append(makeRows(spaced, 2), makeRows(small, 2)...)
	insertJasperRows(t, s, 0, append(rows, bad...))
	bulkInsertJasperRows(t, s, good, 200)

	p := startRelay(t, s, "--to", testNATSURL(), "--progress", "0", "--max-attempts", "3")
	p.waitFor("an empty outbox", 60*time.Second, func() bool { return outgoingCount(t, s, "") == 0 })
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit status %d:\n%s", code, p)
	}
	_, errs := p.lines()
	if !strings.Contains(errs[0], "to "+testNATSURL()) {
		t.Errorf("first line %q", errs[0])
	}

	got := map[string]*jetstream.RawStreamMsg{}
	for _, st := range streams[:2] {
		stream, err := js.Stream(ctx, st)
		if err != nil {
			t.Fatalf("stream %s: %v", st, err)
		}
		info, _ := stream.Info(ctx)
		for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
			m, err := stream.GetMsg(ctx, seq)
			if err != nil {
				t.Fatal(err)
			}
			got[m.Header.Get("Nats-Msg-Id")] = m
		}
	}
	if len(got) != 208 {
		t.Errorf("%d distinct messages in the streams, want 208", len(got))
	}
	for _, r := range rows {
		m := got[r.id.String()]
		switch {
		case m == nil:
			t.Errorf("message %s (%s) missing", r.id, r.destination)
		case string(m.Data) != string(r.body) || m.Header.Get(metadata.MessageType) != "OrderPlaced" ||
			m.Header.Get(metadata.CorrelationID) != r.correlation:
			t.Errorf("message %s: %q %v", r.id, m.Data, m.Header)
		case r.destination == routed && m.Subject != routedSubject, r.destination == good && m.Subject != goodSubject:
			t.Errorf("message %s on subject %q", r.id, m.Subject)
		}
	}
	dl := deadLetterExplanations(t, s)
	if len(dl) != len(bad) {
		t.Errorf("%d dead letters, want %d: %v", len(dl), len(bad), dl)
	}
	for _, r := range bad {
		want := "whitespace"
		if r.destination == small {
			want = "maximum"
		}
		if !strings.Contains(strings.ToLower(dl[r.id.String()]), want) {
			t.Errorf("dead letter of %s (%s): %q, want it to mention %q", r.id, r.destination, dl[r.id.String()], want)
		}
	}
}

// TestRelayJasperRowsToRedis relays Jasper rows to Redis streams; a destination with a space
// and one whose key holds a string (WRONGTYPE) are dead-lettered with the mapper's and Redis's
// messages while the others keep flowing. The password of --to is never printed.
func TestRelayJasperRowsToRedis(t *testing.T) {
	t.Parallel()
	o, err := redis.ParseURL(testRedisURL())
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() }) // after the cleanup below, which deletes the keys
	ctx := context.Background()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("Redis at %s: %v; start it with: %s", testRedisURL(), err, startRedis)
	}
	s := migratedSchema(t)
	tag := fmt.Sprintf("jtest%d", time.Now().UnixNano())
	good, routed := "rabbitmq://queue/"+tag+"-orders", "rabbitmq://exchange/"+tag+"/routing/k"
	spaced, wrong := "local://"+tag+" x", tag+".wrongtype"
	goodKey, routedKey := tag+"-orders", tag+".k"
	t.Cleanup(func() { c.Del(context.Background(), goodKey, routedKey, wrong) })
	if err := c.Set(ctx, wrong, "a string", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	rows := append(makeRows(good, 5), makeRows(routed, 3)...)
	bad := append(makeRows(spaced, 2), makeRows(wrong, 2)...)
	insertJasperRows(t, s, 0, append(rows, bad...))
	bulkInsertJasperRows(t, s, good, 200)

	// The test server needs no password; a wrong one in the URL is accepted by Redis without
	// ACLs only as AUTH default, so use none but check the redaction of the status line.
	p := startRelay(t, s, "--to", testRedisURL(), "--progress", "0", "--max-attempts", "3")
	p.waitFor("an empty outbox", 60*time.Second, func() bool { return outgoingCount(t, s, "") == 0 })
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit status %d:\n%s", code, p)
	}
	got := map[string]map[string]any{}
	for _, k := range []string{goodKey, routedKey} {
		entries, err := c.XRange(ctx, k, "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			e.Values["key"] = k
			got[fmt.Sprint(e.Values[jasperredis.UUIDField])] = e.Values
		}
	}
	if len(got) != 208 {
		t.Errorf("%d distinct entries, want 208", len(got))
	}
	for _, r := range rows {
		v := got[r.id.String()]
		wantKey := goodKey
		if r.destination == routed {
			wantKey = routedKey
		}
		if v == nil || v[jasperredis.PayloadField] != string(r.body) || v[metadata.MessageType] != "OrderPlaced" ||
			v[metadata.CorrelationID] != r.correlation || v["key"] != wantKey {
			t.Errorf("entry of %s: %v", r.id, v)
		}
	}
	dl := deadLetterExplanations(t, s)
	if len(dl) != len(bad) {
		t.Errorf("%d dead letters, want %d: %v", len(dl), len(bad), dl)
	}
	for _, r := range bad {
		want := "whitespace"
		if r.destination == wrong {
			want = "WRONGTYPE"
		}
		if !strings.Contains(dl[r.id.String()], want) {
			t.Errorf("dead letter of %s (%s): %q, want it to mention %q", r.id, r.destination, dl[r.id.String()], want)
		}
	}
}

// TestRelayTargetURLsRedacted: a password in a nats:// or redis:// --to is never printed, also
// when the server cannot be reached.
func TestRelayTargetURLsRedacted(t *testing.T) {
	t.Parallel()
	m := migratedSchema(t)
	const secret = "Wr0ngS3cret"
	for _, to := range []string{"nats://u:" + secret + "@127.0.0.1:1", "redis://u:" + secret + "@127.0.0.1:1/0"} {
		r := cli(t, "", nil, "relay", "--to", to, "--dsn", testdb.PostgresDSN(), "--schema", m)
		assertFailure(t, r, 1, "127.0.0.1:1")
		if strings.Contains(r.stderr, secret) {
			t.Errorf("stderr shows the password: %s", r.stderr)
		}
	}
	assertFailure(t, cli(t, "", nil, "relay", "--to", "nats://127.0.0.1:4222", "--declare-queues"), 2, "--declare-queues needs an AMQP --to")
}
