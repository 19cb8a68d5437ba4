package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/fault/faulttest"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// fullMessage sets every metadata key that fills a Jasper column.
func fullMessage() *message.Message {
	m := message.NewMessage(watermill.NewUUID(), []byte(`{"order":42}`))
	m.Metadata = message.Metadata{
		metadata.MessageType:    "OrderPlaced",
		metadata.ContentType:    "application/json",
		metadata.CorrelationID:  "corr-1",
		metadata.TraceParent:    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		metadata.ConversationID: uuid.NewString(),
		metadata.SagaID:         "saga-1",
		metadata.ReplyURI:       "rabbitmq://queue/replies",
		metadata.ReplyRequested: "OrderAccepted",
		metadata.AckRequested:   "true",
		"tenant":                "t1",
	}
	return m
}

// brokenError has a chain: wrapped -> *fs.PathError -> errNoDisk.
var errNoDisk = errors.New("no space left on device")

func handlerError(attempt int) error {
	return fmt.Errorf("attempt %d: save order: %w", attempt, &fs.PathError{Op: "write", Path: "/orders", Err: errNoDisk})
}

// A handler that always fails: exactly one dead letter with every field filled, the
// original acked with Watermill's poison keys, nothing left of the attempts; after a
// replay, a fixed handler handles it once. For both compositions, and both replay paths.
func TestDeadLetterAlwaysFailingHandlerThenReplay(t *testing.T) {
	t.Parallel()
	for _, o := range orders {
		for _, viaPublisher := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/replay via publisher=%v", o.name, viaPublisher), func(t *testing.T) {
				t.Parallel()
				e := newEnv(t)
				in := e.inbox(nil)
				dl := e.deadLetterMW(nil)
				sub := newTestSub()
				var calls atomic.Int32
				var fixed atomic.Bool
				startRouter(t, sub, "orders", func(msg *message.Message) error {
					n := int(calls.Add(1))
					if err := e.writeEffect(msg, n); err != nil {
						return err
					}
					if !fixed.Load() {
						return handlerError(n)
					}
					return nil
				}, o.mws(in, dl)...)

				msg := fullMessage()
				delivered := msg.Copy()
				if !sub.deliver(t, delivered) {
					t.Fatal("the dead-lettered message was nacked")
				}
				if calls.Load() != 3 || e.effects() != 0 || e.handledMarks() != 0 || e.deadLetters() != 1 {
					t.Fatalf("calls %d effects %d marks %d dead letters %d; want 3 0 0 1", calls.Load(), e.effects(), e.handledMarks(), e.deadLetters())
				}
				for k, want := range map[string]string{
					middleware.ReasonForPoisonedKey: handlerError(3).Error(),
					middleware.PoisonedTopicKey:     "orders",
					middleware.PoisonedHandlerKey:   "handler",
				} {
					if got := delivered.Metadata.Get(k); got != want {
						t.Errorf("poison key %s = %q, want %q", k, got, want)
					}
				}
				if delivered.Metadata.Get(middleware.PoisonedSubscriberKey) == "" {
					t.Error("subscriber_poisoned not set")
				}
				checkDeadLetterRow(t, e, msg)

				// Fix the handler and replay.
				fixed.Store(true)
				id := row.EnvelopeID("orders", msg.UUID)
				if viaPublisher {
					pub := &publishToSub{t: t, sub: sub}
					res, err := admin.ReplayDeadLetters(context.Background(), e.db, e.cfg, admin.ReplaySelection{IDs: []uuid.UUID{id}}, admin.ReplayOptions{Publisher: pub})
					if err != nil || res.Replayed != 1 || len(res.Skipped) != 0 || len(res.NotFound) != 0 {
						t.Fatalf("replay: %+v, %v", res, err)
					}
					if len(pub.got) != 1 || pub.got[0] != "orders/"+msg.UUID {
						t.Errorf("published %v", pub.got)
					}
				} else {
					res, err := admin.ReplayDeadLetters(context.Background(), e.db, e.cfg, admin.ReplaySelection{IDs: []uuid.UUID{id}}, admin.ReplayOptions{})
					if err != nil || res.Replayed != 1 {
						t.Fatalf("replay: %+v, %v", res, err)
					}
					// What this library's subscriber does: claim the Incoming row of the topic
					// and deliver it.
					deliverIncomingRow(t, e, sub, id, "orders")
				}
				if calls.Load() != 4 || e.effects() != 1 || e.deadLetters() != 0 || e.handledMarks() != 1 {
					t.Fatalf("after replay: calls %d effects %d dead letters %d marks %d; want 4 1 0 1", calls.Load(), e.effects(), e.deadLetters(), e.handledMarks())
				}
				// Replayed twice (or delivered again): still once.
				again := msg.Copy()
				if !viaPublisher {
					again.Metadata.Set(metadata.EnvelopeID, id.String())
				}
				if !sub.deliver(t, again) || calls.Load() != 4 {
					t.Errorf("a second delivery after the replay ran the handler (calls %d)", calls.Load())
				}
			})
		}
	}
}

// deliverIncomingRow claims the incoming row id of topic as the subscriber does and
// delivers it as the subscriber would.
func deliverIncomingRow(t *testing.T, e *env, sub *testSub, id uuid.UUID, topic string) {
	t.Helper()
	rows, err := e.db.Query(context.Background(), fmt.Sprintf(`UPDATE %s SET owner_id = 7 WHERE id = $1 AND received_at = $2 AND status = 'Incoming' RETURNING %s`,
		e.table(schema.IncomingTable), strings.Join(row.IncomingColumns, ", ")), id.String(), topic)
	if err != nil {
		t.Fatal(err)
	}
	if !rows.Next() {
		_ = rows.Close()
		t.Fatalf("no Incoming row %s of topic %q", id, topic)
	}
	env, err := row.ScanIncoming(rows, uuidText{})
	_ = rows.Close()
	if err != nil {
		t.Fatal(err)
	}
	msg, err := env.ToMessage()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{middleware.ReasonForPoisonedKey, middleware.PoisonedTopicKey, middleware.PoisonedHandlerKey, middleware.PoisonedSubscriberKey} {
		if msg.Metadata.Get(k) != "" {
			t.Errorf("the replayed message still carries %s", k)
		}
	}
	if !sub.deliver(t, msg) {
		t.Fatal("replayed message nacked")
	}
}

func checkDeadLetterRow(t *testing.T, e *env, msg *message.Message) {
	t.Helper()
	id := row.EnvelopeID("orders", msg.UUID)
	var nulls []string
	var cols []string
	for _, c := range []string{"id", "attempts", "body", "conversation_id", "correlation_id", "parent_id", "saga_id",
		"message_type", "content_type", "reply_requested", "ack_requested", "reply_uri", "received_at", "source",
		"explanation", "exception_text", "exception_type", "exception_message", "message_uuid", "headers", `"timestamp"`, "replayable"} {
		cols = append(cols, fmt.Sprintf("CASE WHEN %s IS NULL THEN '%s' END", c, strings.Trim(c, `"`)))
	}
	rows, err := e.db.Query(context.Background(), fmt.Sprintf("SELECT concat_ws(',', %s) FROM %s WHERE id = $1", strings.Join(cols, ", "), e.table(schema.DeadLetterTable)), id.String())
	if err != nil {
		t.Fatal(err)
	}
	var missing string
	if !rows.Next() {
		t.Fatalf("no dead letter with id %s", id)
	}
	if err := rows.Scan(&missing); err != nil {
		t.Fatal(err)
	}
	_ = rows.Close()
	if missing != "" {
		nulls = append(nulls, missing)
		t.Errorf("dead letter columns left NULL: %v", nulls)
	}

	d, err := admin.GetDeadLetter(context.Background(), e.db, e.cfg, id)
	if err != nil {
		t.Fatal(err)
	}
	if d.ReceivedAt != "orders" || d.Source != "handler" || d.Attempts != 3 || d.MessageUUID != msg.UUID ||
		string(d.Body) != `{"order":42}` || d.MessageType != "OrderPlaced" || d.CorrelationID != "corr-1" || !d.AckRequested ||
		d.ConversationID == nil || d.ConversationID.String() != msg.Metadata.Get(metadata.ConversationID) {
		t.Errorf("dead letter %+v", d)
	}
	if d.ExceptionType != "*errors.errorString" {
		t.Errorf("exception_type %q, want the root cause's Go type *errors.errorString", d.ExceptionType)
	}
	if d.ExceptionMessage != handlerError(3).Error() {
		t.Errorf("exception_message %q", d.ExceptionMessage)
	}
	if !strings.Contains(d.ExceptionText, "*fmt.wrapError: attempt 3") || !strings.Contains(d.ExceptionText, "*fs.PathError: write /orders") ||
		!strings.Contains(d.ExceptionText, "*errors.errorString: no space left on device") {
		t.Errorf("exception_text is not the whole chain:\n%s", d.ExceptionText)
	}
	if !strings.Contains(d.Explanation, `"handler" failed 3 times`) {
		t.Errorf("explanation %q", d.Explanation)
	}
	if d.Headers["tenant"] != "t1" || d.Headers[middleware.ReasonForPoisonedKey] == "" {
		t.Errorf("headers %v", d.Headers)
	}
	if d.Timestamp == nil || time.Since(*d.Timestamp) > time.Hour {
		t.Errorf("timestamp %v", d.Timestamp)
	}
}

// A permanent error is dead-lettered on the first attempt; a dead letter of the same
// message written again replaces the first (one row per message).
func TestDeadLetterPermanentErrorIsNotRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	errBadInput := errors.New("bad input")
	dl := e.deadLetterMW(func(c *middleware.DeadLetterConfig) {
		c.MaxAttempts = 10
		c.IsPermanent = func(err error) bool { return errors.Is(err, errBadInput) }
	})
	sub := newTestSub()
	var calls atomic.Int32
	startRouter(t, sub, "orders", func(msg *message.Message) error {
		calls.Add(1)
		if msg.Metadata.Get("kind") == "marked" {
			return fault.Permanent(errors.New("cannot parse"))
		}
		return fmt.Errorf("validate: %w", errBadInput)
	}, dl.Middleware)

	for _, kind := range []string{"marked", "classified"} {
		calls.Store(0)
		m := message.NewMessage(watermill.NewUUID(), nil)
		m.Metadata.Set("kind", kind)
		for range 2 {
			if !sub.deliver(t, m.Copy()) {
				t.Fatal("nacked")
			}
		}
		if calls.Load() != 2 {
			t.Errorf("%s: handler ran %d times for two deliveries, want 2 (no retry)", kind, calls.Load())
		}
		d, err := admin.GetDeadLetter(context.Background(), e.db, e.cfg, row.EnvelopeID("orders", m.UUID))
		if err != nil {
			t.Fatal(err)
		}
		if d.Attempts != 1 || !strings.Contains(d.Explanation, "permanent") {
			t.Errorf("%s: attempts %d explanation %q", kind, d.Attempts, d.Explanation)
		}
	}
	if e.deadLetters() != 2 {
		t.Errorf("%d dead letters, want 2 (one per message)", e.deadLetters())
	}
	if fault.Permanent(nil) != nil || !fault.IsPermanent(fmt.Errorf("x: %w", fault.Permanent(errBadInput))) {
		t.Error("Permanent / IsPermanent")
	}
}

// A message whose context ends while it waits for its next attempt is not dead-lettered:
// it is nacked, for its redelivery.
func TestDeadLetterShutdownLeavesMessageToRedelivery(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dl := e.deadLetterMW(func(c *middleware.DeadLetterConfig) { c.InitialInterval = time.Hour; c.MaxInterval = time.Hour })
	ctx, cancel := context.WithCancel(context.Background())
	m := message.NewMessage(watermill.NewUUID(), nil)
	m.SetContext(ctx)
	_, err := dl.Middleware(func(*message.Message) ([]*message.Message, error) {
		cancel() // the subscriber closes during the attempt
		return nil, errors.New("fails")
	})(m)
	if err == nil || e.deadLetters() != 0 {
		t.Fatalf("err %v, dead letters %d; want the error and none", err, e.deadLetters())
	}
}

// Attempts counted by this library's subscriber (earlier deliveries) add up.
func TestDeadLetterCountsEarlierDeliveries(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dl := e.deadLetterMW(func(c *middleware.DeadLetterConfig) { c.MaxAttempts = 2; c.InitialInterval = -1 })
	m := message.NewMessage(watermill.NewUUID(), nil)
	m.Metadata.Set(metadata.Attempts, "4")
	m.Metadata.Set(metadata.ConversationID, "not a uuid") // cannot fill its column: kept in the headers
	if _, err := dl.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, errors.New("x") })(m); err != nil {
		t.Fatal(err)
	}
	var attempts int
	var headers, explanation string
	if err := database.QueryRow(context.Background(), e.db, "SELECT attempts, headers, explanation FROM "+e.table(schema.DeadLetterTable), nil, &attempts, &headers, &explanation); err != nil {
		t.Fatal(err)
	}
	if attempts != 6 || !strings.Contains(headers, "not a uuid") || !strings.Contains(explanation, "metadata") {
		t.Errorf("attempts %d headers %s explanation %q", attempts, headers, explanation)
	}
}

// errPermanent is the one permanent error value of the fault vocabulary's tests: the
// forwarder's, jasperamqp's and the middleware's tests read it the same way.
var errPermanent = faulttest.Permanent

// compositions are the dead-letter middleware alone and both orders with the inbox.
func compositions() []order {
	return append([]order{{"dead letters alone", func(_ *middleware.Inbox, dl *middleware.DeadLetter) []message.HandlerMiddleware {
		return []message.HandlerMiddleware{dl.Middleware}
	}}}, orders...)
}

// runFailing runs a router whose handler writes its effect and returns err, behind the
// composition c with MaxAttempts 3; it returns the subscriber feeding it and the count of
// handler runs.
func runFailing(t *testing.T, e *env, c order, err error) (*testSub, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	sub := newTestSub()
	startRouter(t, sub, "orders", func(msg *message.Message) error {
		n := int(calls.Add(1))
		if _, inInbox := middleware.TxFromContext(msg.Context()); inInbox {
			if err := e.writeEffect(msg, n); err != nil {
				return err
			}
		}
		return err
	}, c.mws(e.inbox(nil), e.deadLetterMW(nil))...)
	return sub, &calls
}

// A handler returning an error marked permanent is dead-lettered at once: one attempt,
// acknowledged, nothing of the attempt left.
func TestDeadLetterPermanentErrorIsDeadLetteredAtOnce(t *testing.T) {
	t.Parallel()
	for _, c := range compositions() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			sub, calls := runFailing(t, e, c, fmt.Errorf("handle order: %w", errPermanent))
			msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
			if !sub.deliver(t, msg) {
				t.Fatal("the dead-lettered message was nacked")
			}
			if calls.Load() != 1 || e.deadLetters() != 1 || e.effects() != 0 || e.handledMarks() != 0 {
				t.Fatalf("calls %d dead letters %d effects %d marks %d; want 1 1 0 0", calls.Load(), e.deadLetters(), e.effects(), e.handledMarks())
			}
			d, err := admin.GetDeadLetter(context.Background(), e.db, e.cfg, row.EnvelopeID("orders", msg.UUID))
			if err != nil {
				t.Fatal(err)
			}
			if d.Attempts != 1 || !strings.Contains(d.Explanation, "permanent") || d.ExceptionMessage != "handle order: "+errPermanent.Error() ||
				d.ExceptionType != "*errors.errorString" || !strings.Contains(d.ExceptionText, "*fault.Error: "+errPermanent.Error()) {
				t.Errorf("dead letter: attempts %d explanation %q exception %s %q\n%s", d.Attempts, d.Explanation, d.ExceptionType, d.ExceptionMessage, d.ExceptionText)
			}
		})
	}
}

// A handler returning an error marked temporary is never dead-lettered: each delivery runs
// the handler once (no retry in process, no attempt counted, whatever the earlier
// deliveries) and is nacked, for its redelivery.
func TestDeadLetterTemporaryErrorIsNackedNeverDeadLettered(t *testing.T) {
	t.Parallel()
	for _, c := range compositions() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			sub, calls := runFailing(t, e, c, fmt.Errorf("publish the receipt: %w", fault.Temporary(errors.New("broker restarting"))))
			msg := message.NewMessage(watermill.NewUUID(), []byte("x"))
			msg.Metadata.Set(metadata.Attempts, "10") // earlier deliveries, as this library's subscriber counts them
			const deliveries = 4                      // more than MaxAttempts (3)
			for i := 1; i <= deliveries; i++ {
				if sub.deliver(t, msg.Copy()) {
					t.Fatalf("delivery %d was acked", i)
				}
				if calls.Load() != int32(i) {
					t.Fatalf("after %d deliveries the handler ran %d times, want once per delivery", i, calls.Load())
				}
			}
			if e.deadLetters() != 0 || e.effects() != 0 || e.handledMarks() != 0 {
				t.Fatalf("dead letters %d effects %d marks %d; want none", e.deadLetters(), e.effects(), e.handledMarks())
			}
		})
	}
}
