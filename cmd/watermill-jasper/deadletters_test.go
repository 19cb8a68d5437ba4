package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

const testAMQPURL = "amqp://guest:guest@localhost:5672/"

// seedDeadLetters inserts three dead letters: two of topic orders written by this library
// (message_uuid, headers; one with a binary payload) and one written by Jasper (its columns
// only). It returns their ids.
func seedDeadLetters(t *testing.T, s string) (ours, binary, jasper uuid.UUID) {
	t.Helper()
	ours, binary, jasper = uuid.New(), uuid.New(), uuid.New()
	dlq := fmt.Sprintf(`"%s".jasper_dead_letters`, s)
	stmts := []struct {
		q    string
		args []any
	}{
		{`INSERT INTO ` + dlq + ` (id, attempts, body, correlation_id, message_type, content_type, received_at, source,
  explanation, exception_text, exception_type, exception_message, message_uuid, headers, "timestamp")
VALUES ($1, 3, '{"order":42}', 'corr-1', 'OrderPlaced', 'application/json', 'orders', 'place-order',
  'Handler "place-order" failed 3 times (MaxAttempts 3)', E'*fmt.wrapError: save: disk full\n*errors.errorString: disk full',
  '*errors.errorString', E'save: disk full\nsecond line', 'msg-1', '{"tenant":"t1","reason_poisoned":"save: disk full"}',
  now() - interval '1 hour')`, []any{ours.String()}},
		{`INSERT INTO ` + dlq + ` (id, attempts, body, message_type, received_at, source, explanation, exception_type,
  exception_message, message_uuid, headers, "timestamp")
VALUES ($1, 1, '\x00010203ff', 'Blob', 'orders', 'place-order', 'permanent', 'main.badInput', 'bad input', 'msg-2', '{}',
  now() - interval '10 days')`, []any{binary.String()}},
		{`INSERT INTO ` + dlq + ` (id, attempts, body, message_type, content_type, received_at, source, explanation,
  exception_text, exception_type, exception_message)
VALUES ($1, 2, '{"id":9}', 'InvoiceDue', 'application/json', 'rabbitmq://queue/invoices', 'billing',
  'Exception Detected', E'System.InvalidOperationException: nope\n   at Billing.Handle()',
  'System.InvalidOperationException', 'nope')`, []any{jasper.String()}},
	}
	for _, st := range stmts {
		if _, err := testdb.Pool(t).Exec(context.Background(), st.q, st.args...); err != nil {
			t.Fatal(err)
		}
	}
	return ours, binary, jasper
}

func TestDeadLettersListShow(t *testing.T) {
	t.Parallel()
	s := testdb.Schema(t)
	assertSuccess(t, db(t, "", s, "schema", "migrate"))

	r := db(t, "", s, "dead-letters", "list")
	assertSuccess(t, r)
	if r.stdout != "no dead letters in schema "+s+"\n" {
		t.Errorf("empty list: %q", r.stdout)
	}
	ours, binary, jasper := seedDeadLetters(t, s)

	r = db(t, "", s, "dead-letters", "list")
	assertSuccess(t, r)
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "ERROR") ||
		lines[4] != "3 of 3 dead letters in schema "+s {
		t.Fatalf("list:\n%s", r.stdout)
	}
	// Newest first: the Jasper row (written now), ours (1 hour ago), the binary one (10 days).
	for i, want := range []string{
		jasper.String() + " ",
		ours.String() + " ",
		binary.String() + " ",
	} {
		if !strings.HasPrefix(lines[i+1], want) {
			t.Errorf("line %d: %q, want it to start with %q", i+1, lines[i+1], want)
		}
	}
	for _, w := range []string{"System.InvalidOperationException: nope", "*errors.errorString: save: disk full", "place-order", "OrderPlaced"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("list lacks %q:\n%s", w, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "second line") {
		t.Error("list shows more than the first line of an error")
	}

	r = db(t, "", s, "dead-letters", "list", "--topic", "orders", "--limit", "1")
	assertSuccess(t, r)
	if !strings.HasSuffix(r.stdout, "\n1 of 2 dead letters of topic \"orders\" in schema "+s+"\n") || !strings.Contains(r.stdout, ours.String()) {
		t.Errorf("list --topic --limit:\n%s", r.stdout)
	}

	r = db(t, "", s, "dead-letters", "show", ours.String())
	assertSuccess(t, r)
	if !strings.HasPrefix(r.stdout, "ID ") || !strings.Contains(strings.SplitN(r.stdout, "\n", 2)[0], ours.String()) {
		t.Errorf("show does not start with the id:\n%s", r.stdout)
	}
	assertLines(t, r.stdout,
		"Topic (received_at) orders", "Source place-order", "Message UUID msg-1",
		"Message type OrderPlaced", "Attempts 3", "Correlation id corr-1", "Exception type *errors.errorString",
		"Exception text:", " *fmt.wrapError: save: disk full", " *errors.errorString: disk full",
		"Headers (2):", " reason_poisoned save: disk full", " tenant t1",
		"Payload (12 bytes):", ` {"order":42}`)

	r = db(t, "", s, "dead-letters", "show", binary.String())
	assertSuccess(t, r)
	if !strings.Contains(r.stdout, "Payload (5 bytes):\n  00000000  00 01 02 03 ff") {
		t.Errorf("binary payload is not a hex dump:\n%s", r.stdout)
	}
	r = db(t, "", s, "dead-letters", "show", jasper.String())
	assertSuccess(t, r)
	assertLines(t, r.stdout, "Source billing", "Message UUID -", " at Billing.Handle()")
	if !strings.Contains(r.stdout, "Headers: none (a row written by Jasper") {
		t.Errorf("Jasper row headers:\n%s", r.stdout)
	}

	assertFailure(t, db(t, "", s, "dead-letters", "show", uuid.NewString()), 1, "no such dead letter")
	assertFailure(t, db(t, "", s, "dead-letters", "show", "nope"), 2, `"nope" is not a dead letter ID`)
	assertFailure(t, db(t, "", s, "dead-letters", "show"), 2, "takes one dead letter ID")
}

func TestDeadLettersReplayAndPurge(t *testing.T) {
	t.Parallel()
	s := testdb.Schema(t)
	assertSuccess(t, db(t, "", s, "schema", "migrate"))
	ours, binary, jasper := seedDeadLetters(t, s)

	assertFailure(t, db(t, "", s, "dead-letters", "replay"), 2, "exactly one")
	assertFailure(t, db(t, "", s, "dead-letters", "replay", "--all", ours.String()), 2, "exactly one")
	assertFailure(t, db(t, "", s, "dead-letters", "replay", "--all", "--to", "http://x"), 2, "invalid --to")

	// One by id, back to the incoming table.
	r := db(t, "", s, "dead-letters", "replay", ours.String())
	if r.code != 0 || !strings.Contains(r.stderr, "1 of 1 done (100%), 1 replayed") {
		t.Fatalf("replay by id: %s", r)
	}
	if r.stdout != "replayed 1 dead letters to jasper_incoming_envelopes (schema "+s+")\n" {
		t.Errorf("replay stdout %q", r.stdout)
	}
	var status, receivedAt, headers string
	err := testdb.Pool(t).QueryRow(context.Background(), fmt.Sprintf(`SELECT status, received_at, headers FROM "%s".jasper_incoming_envelopes WHERE id = $1`, s), ours.String()).
		Scan(&status, &receivedAt, &headers)
	if err != nil || status != "Incoming" || receivedAt != "orders" || headers != `{"tenant": "t1"}` {
		t.Errorf("replayed row: %q %q %q %v", status, receivedAt, headers, err)
	}
	// Again: not a dead letter any more.
	r = db(t, "", s, "dead-letters", "replay", ours.String())
	assertFailure(t, r, 1, "0 dead letters skipped, 1 not found")
	if !strings.Contains(r.stdout, "not found "+ours.String()) {
		t.Errorf("stdout %q", r.stdout)
	}

	// The rest to RabbitMQ, into a queue named by --to-topic, created by --declare-queues.
	requireRabbitMQ(t)
	queue := testdb.RandomName("wj_cli_replay_")
	t.Cleanup(func() { deleteQueue(t, queue) })
	r = db(t, "", s, "dead-letters", "replay", "--all", "--to", testAMQPURL, "--declare-queues", "--to-topic", queue, "--batch", "1")
	if r.code != 0 || !strings.Contains(r.stderr, "2 of 2 done (100%), 2 replayed") || !strings.Contains(r.stderr, "1 of 2 done (50%)") {
		t.Fatalf("replay to RabbitMQ: %s", r)
	}
	if strings.Contains(r.stdout+r.stderr, "guest:guest") {
		t.Error("the AMQP password was printed")
	}
	got := map[string]string{}
	for _, m := range getMessages(t, queue, 2) {
		got[m.MessageId] = string(m.Body)
	}
	if got["msg-2"] != "\x00\x01\x02\x03\xff" || got[jasper.String()] != `{"id":9}` {
		t.Errorf("RabbitMQ got %q (want msg-2 and the Jasper row's id as message ids)", got)
	}
	_ = binary

	// Purge: asks first; --older-than keeps the recent ones.
	seedDeadLetters(t, s)
	r = db(t, "n\n", s, "dead-letters", "purge", "--older-than", "48h")
	assertFailure(t, r, 1, "aborted: nothing deleted")
	if !strings.Contains(r.stdout, "Delete 1 dead letters written more than 48h0m0s ago in schema "+s+"? [y/N]") {
		t.Errorf("prompt %q", r.stdout)
	}
	r = db(t, "y\n", s, "dead-letters", "purge", "--older-than", "48h")
	if r.code != 0 || !strings.Contains(r.stdout, "deleted 1 dead letters written more than 48h0m0s ago from schema "+s) {
		t.Fatalf("purge --older-than: %s", r)
	}
	r = db(t, "", s, "dead-letters", "purge", "--yes")
	if r.code != 0 || !strings.Contains(r.stdout, "deleted 2 dead letters from schema "+s) || !strings.Contains(r.stderr, "2 deleted") {
		t.Fatalf("purge --yes: %s", r)
	}
	r = db(t, "", s, "dead-letters", "purge")
	assertSuccess(t, r)
	if !strings.Contains(r.stdout, "holds no dead letters: nothing to delete") {
		t.Errorf("purge of nothing: %q", r.stdout)
	}
}

func requireRabbitMQ(t *testing.T) {
	t.Helper()
	conn, err := amqp091.DialConfig(testAMQPURL, amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("RabbitMQ at localhost:5672 is not reachable (%v); start it with: rabbitmq-server -detached", err)
	}
	_ = conn.Close()
}

func amqpChannel(t *testing.T) (*amqp091.Connection, *amqp091.Channel) {
	t.Helper()
	conn, err := amqp091.Dial(testAMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		_ = conn.Close()
		t.Fatal(err)
	}
	return conn, ch
}

func deleteQueue(t *testing.T, queue string) {
	conn, ch := amqpChannel(t)
	defer conn.Close()
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		t.Errorf("delete queue %s: %v", queue, err)
	}
}

// getMessages takes n messages from the queue (they were confirmed before the CLI exited).
func getMessages(t *testing.T, queue string, n int) []amqp091.Delivery {
	t.Helper()
	conn, ch := amqpChannel(t)
	defer conn.Close()
	var out []amqp091.Delivery
	for range n {
		d, ok, err := ch.Get(queue, true)
		if err != nil || !ok {
			t.Fatalf("get from %s: ok=%v err=%v (got %d of %d)", queue, ok, err, len(out), n)
		}
		out = append(out, d)
	}
	return out
}

// --output json: dead-letters list and show, and storage counts, print one JSON document with
// every field (show: the whole exception message and text, however long, and the payload);
// another format is a usage error.
func TestOutputJSON(t *testing.T) {
	t.Parallel()
	s := testdb.Schema(t)
	assertSuccess(t, db(t, "", s, "schema", "migrate"))
	ours, _, _ := seedDeadLetters(t, s)
	long := strings.Repeat("a very long exception message line; ", 40) + "\nsecond line"
	if _, err := testdb.Pool(t).Exec(context.Background(), fmt.Sprintf(`UPDATE "%s".jasper_dead_letters SET exception_message = $1 WHERE id = $2`, s), long, ours); err != nil {
		t.Fatal(err)
	}

	r := db(t, "", s, "dead-letters", "list", "--output", "json")
	assertSuccess(t, r)
	var list struct {
		Schema      string `json:"schema"`
		Total       int64  `json:"total"`
		DeadLetters []struct {
			ID               string `json:"id"`
			Topic            string `json:"topic"`
			ExceptionMessage string `json:"exception_message"`
		} `json:"dead_letters"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("list --output json is not JSON: %v\n%s", err, r.stdout)
	}
	if list.Schema != s || list.Total != 3 || len(list.DeadLetters) != 3 {
		t.Errorf("list --output json: %+v", list)
	}

	r = db(t, "", s, "dead-letters", "show", ours.String(), "--output", "json")
	assertSuccess(t, r)
	var show struct {
		ID               string            `json:"id"`
		ExceptionMessage string            `json:"exception_message"`
		ExceptionText    string            `json:"exception_text"`
		Headers          map[string]string `json:"headers"`
		Body             []byte            `json:"body_base64"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &show); err != nil {
		t.Fatalf("show --output json is not JSON: %v\n%s", err, r.stdout)
	}
	if show.ID != ours.String() || show.ExceptionMessage != long || !strings.Contains(show.ExceptionText, "disk full") ||
		show.Headers["tenant"] != "t1" || string(show.Body) != `{"order":42}` {
		t.Errorf("show --output json: %+v", show)
	}
	// The text form prints the whole message too.
	r = db(t, "", s, "dead-letters", "show", ours.String())
	assertSuccess(t, r)
	if !strings.Contains(r.stdout, strings.Repeat("a very long exception message line; ", 40)) || !strings.Contains(r.stdout, "  second line") {
		t.Errorf("show does not print the whole exception message:\n%s", r.stdout)
	}

	r = db(t, "", s, "storage", "counts", "--output", "json")
	assertSuccess(t, r)
	var counts struct {
		Schema      string           `json:"schema"`
		Incoming    map[string]int64 `json:"incoming"`
		DeadLetters int64            `json:"dead_letters"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &counts); err != nil {
		t.Fatalf("storage counts --output json is not JSON: %v\n%s", err, r.stdout)
	}
	if counts.Schema != s || counts.DeadLetters != 3 || counts.Incoming["Incoming"] != 0 {
		t.Errorf("storage counts --output json: %+v", counts)
	}
	assertFailure(t, db(t, "", s, "storage", "counts", "--output", "xml"), 2, "want text or json")
}
