package storetest

import (
	"context"
	"reflect"
	"sort"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// The envelopes the cases write, and the operations and checks they repeat.

// outEnv is an outgoing envelope to dest with every column set (owner 0, no deliver_by).
func outEnv(dest string) row.Envelope {
	id, conv := uuid.New(), uuid.New()
	return row.Envelope{
		ID: id, Destination: dest, Body: []byte("body-" + id.String()), MessageType: "test.Message",
		ContentType: "application/json", CorrelationID: "corr-" + dest, ParentID: "parent", SagaID: "saga",
		ReplyRequested: "reply.Type", ReplyURI: "local://replies", ConversationID: &conv, AckRequested: true,
		MessageUUID: "msg-" + id.String(), Headers: []byte(`{"k":"v"}`),
	}
}

// inEnv is an incoming envelope of topic with status and execution time.
func inEnv(topic, status string, exec *time.Time) row.Envelope {
	e := outEnv(topic)
	e.Status = status
	e.ExecutionTime = exec
	return e
}

// owned sets the owner of envelopes.
func owned(owner int32, envs ...row.Envelope) []row.Envelope {
	for i := range envs {
		envs[i].OwnerID = owner
	}
	return envs
}

// at is now plus d, in UTC and whole milliseconds (both databases store that exactly).
func at(d time.Duration) *time.Time {
	t := time.Now().Add(d).UTC().Truncate(time.Millisecond)
	return &t
}

// idsOf returns the ids of envelopes.
func idsOf(envs ...row.Envelope) []uuid.UUID {
	return mapped(envs, func(e row.Envelope) uuid.UUID { return e.ID })
}

// mapped returns f of each element of s, in order.
func mapped[T, U any](s []T, f func(T) U) []U {
	out := make([]U, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}

// idSet returns the ids of envelopes as a set.
func idSet(envs []row.Envelope) map[uuid.UUID]bool {
	out := make(map[uuid.UUID]bool, len(envs))
	for _, e := range envs {
		out[e.ID] = true
	}
	return out
}

// sorted returns a sorted copy of s (nil for an empty s).
func sorted[T int32 | string](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	out := append([]T(nil), s...)
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Operations the cases repeat.

// insert publishes outgoing and incoming envelopes without notifications.
func (e *env) insert(out, in []row.Envelope) {
	e.t.Helper()
	e.ok(e.s.InsertEnvelopes(e.ctx, store.InsertParams{Outgoing: out, Incoming: in}))
}

// out inserts outgoing envelopes.
func (e *env) out(envs ...row.Envelope) { e.t.Helper(); e.insert(envs, nil) }

// in inserts incoming envelopes.
func (e *env) in(envs ...row.Envelope) { e.t.Helper(); e.insert(nil, envs) }

// claimOut claims outgoing envelopes on ops (the pool or a transaction).
func (e *env) claimOut(ops store.Ops, p store.ClaimOutgoingParams) []row.Envelope {
	e.t.Helper()
	return must(ops.ClaimOutgoing(e.ctx, p))
}

// claimIn claims incoming envelopes of topic on the pool.
func (e *env) claimIn(owner int32, topic string, limit int) []row.Envelope {
	e.t.Helper()
	return must(e.s.ClaimIncoming(e.ctx, store.ClaimIncomingParams{Owner: owner, Topic: topic, Limit: limit}))
}

// counts returns the store's Counts.
func (e *env) counts() store.Counts {
	e.t.Helper()
	return must(e.s.Counts(e.ctx))
}

// claimedIDs checks that envs are exactly the envelopes want, owned by owner.
func (e *env) claimedIDs(what string, envs []row.Envelope, owner int32, want ...row.Envelope) {
	e.t.Helper()
	if !reflect.DeepEqual(idSet(envs), idSet(want)) {
		e.t.Errorf("%s claimed %v, want %v", what, idsOf(envs...), idsOf(want...))
	}
	for _, got := range envs {
		if got.OwnerID != owner {
			e.t.Errorf("%s: envelope %s has owner %d, want %d", what, got.ID, got.OwnerID, owner)
		}
	}
}

// sameEnvelope checks that a read envelope holds every column of the written one; owner and
// attempts are the values the read row must have.
func (e *env) sameEnvelope(what string, got, want row.Envelope, owner int32, attempts int) {
	e.t.Helper()
	want.OwnerID, want.Attempts = owner, attempts
	got.WrittenAt = want.WrittenAt // set by the table (checked by writtenAt)
	for _, env := range []*row.Envelope{&got, &want} {
		env.ExecutionTime, env.DeliverBy = utc(env.ExecutionTime), utc(env.DeliverBy)
	}
	if !reflect.DeepEqual(got, want) {
		e.t.Errorf("%s: read\n%+v\nwrote\n%+v", what, got, want)
	}
}

// utc is t in UTC (nil stays nil), for comparing times read back with times written.
func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// byID returns the envelope of envs with id.
func (e *env) byID(envs []row.Envelope, id uuid.UUID) row.Envelope {
	e.t.Helper()
	for _, env := range envs {
		if env.ID == id {
			return env
		}
	}
	e.t.Fatalf("envelope %s not among %v", id, idsOf(envs...))
	return row.Envelope{}
}

// reason is a dead-letter reason whose every field names tag.
func reason(tag string) store.Reason {
	return store.Reason{
		Explanation: "explanation " + tag, ExceptionType: "type " + tag, ExceptionMessage: "message " + tag,
		ExceptionText: "text " + tag, Source: "source " + tag,
	}
}

// letters pairs envelopes with reasons named by tags.
func letters(envs []row.Envelope, tags ...string) []store.DeadLetterReason {
	out := make([]store.DeadLetterReason, len(envs))
	for i, env := range envs {
		out[i] = store.DeadLetterReason{ID: env.ID, Reason: reason(tags[i])}
	}
	return out
}

// deadLetter returns the dead letter of id, failing when there is none.
func (e *env) deadLetter(id uuid.UUID) row.DeadLetter {
	e.t.Helper()
	d, found, err := e.s.GetDeadLetter(e.ctx, id)
	e.ok(err)
	if !found {
		e.t.Fatalf("no dead letter %s", id)
	}
	return d
}

// openTx is a transaction of the pool with the operations bound to it.
type openTx struct {
	dbx.Tx
	ops store.Ops
}

// begin opens a transaction on the pool, rolled back when the case ends unless it was
// committed or rolled back before.
func (e *env) begin() openTx {
	e.t.Helper()
	tx := must(e.s.DB().Begin(e.ctx))
	e.t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return openTx{Tx: tx, ops: e.s.With(tx)}
}

// conn acquires a dedicated connection, closed (not returned to the pool, since it may hold
// a lock or LISTEN) when the case ends.
func (e *env) conn() dbx.Conn {
	e.t.Helper()
	c := must(e.s.DB().Acquire(e.ctx))
	e.t.Cleanup(func() { _ = c.Close(true) })
	return c
}
