package storetest

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// The administration operations: Counts, ReleaseAll, ClearAll and the dead-letter tools
// (List, Count, Get, Page, Delete, Purge, ReplayToIncoming).

// populate writes outgoing envelopes to a (unowned and owned by 7) and b, incoming envelopes
// (Incoming unowned and owned by 9, Scheduled) and one dead letter.
func (e *env) populate() {
	e.t.Helper()
	e.insert([]row.Envelope{outEnv("a"), owned(7, outEnv("a"))[0], outEnv("b")},
		[]row.Envelope{inEnv("t", layout.StatusIncoming, nil), owned(9, inEnv("t", layout.StatusIncoming, nil))[0],
			inEnv("t", layout.StatusScheduled, at(time.Hour))})
	e.ok(e.s.InsertDeadLetter(e.ctx, inEnv("t", layout.StatusIncoming, nil), reason("t")))
}

// emptyCounts is what Counts returns for empty tables.
func emptyCounts() store.Counts {
	return store.Counts{IncomingByStatus: map[string]int64{}, OutgoingByDestination: map[string]int64{},
		IncomingByOwner: map[int32]int64{}, OutgoingByOwner: map[int32]int64{}}
}

func testCounts(e *env) {
	check(e, "counts of an empty schema", e.counts(), emptyCounts())
	e.populate()
	check(e, "counts", e.counts(), store.Counts{
		IncomingByStatus:      map[string]int64{layout.StatusIncoming: 2, layout.StatusScheduled: 1},
		OutgoingByDestination: map[string]int64{"a": 2, "b": 1},
		DeadLetters:           1,
		IncomingByOwner:       map[int32]int64{0: 2, 9: 1},
		OutgoingByOwner:       map[int32]int64{0: 2, 7: 1},
	})
	testAges(e)
}

// testAges checks Ages on the populated tables: the groups and an oldest timestamp in each.
func testAges(e *env) {
	e.t.Helper()
	a := must(e.s.Ages(e.ctx))
	var in, out []string
	for _, g := range a.Incoming {
		in = append(in, fmt.Sprintf("%s/%s:%d", g.Name, g.Topic, g.Rows))
		if g.Oldest == nil || time.Since(*g.Oldest) > time.Hour || time.Since(*g.Oldest) < -time.Hour {
			e.t.Errorf("Ages: incoming %s/%s: oldest %v", g.Name, g.Topic, g.Oldest)
		}
	}
	for _, g := range a.Outgoing {
		out = append(out, fmt.Sprintf("%s:%d", g.Name, g.Rows))
		if g.Oldest == nil || time.Since(*g.Oldest) > time.Hour || time.Since(*g.Oldest) < -time.Hour {
			e.t.Errorf("Ages: outgoing %s: oldest %v", g.Name, g.Oldest)
		}
	}
	sort.Strings(in)
	sort.Strings(out)
	check(e, "ages of incoming rows", in, []string{layout.StatusIncoming + "/t:2", layout.StatusScheduled + "/t:1"})
	check(e, "ages of outgoing rows", out, []string{"a:2", "b:1"})
}

// releaseAll is ReleaseAll on ops, checking the rows it changed.
func (e *env) releaseAll(what string, ops store.Ops, incoming, outgoing int64) {
	e.t.Helper()
	in, out, err := ops.ReleaseAll(e.ctx)
	e.ok(err)
	if in != incoming || out != outgoing {
		e.t.Errorf("%s: released %d incoming and %d outgoing, want %d and %d", what, in, out, incoming, outgoing)
	}
}

// Every owned row becomes unowned; the counts are of the rows changed.
func testReleaseAll(e *env) {
	e.populate()
	e.releaseAll("ReleaseAll", e.s, 1, 1)
	e.releaseAll("ReleaseAll again", e.s, 0, 0)
	tx := e.begin()
	e.ok(tx.ops.InsertEnvelopes(e.ctx, store.InsertParams{Incoming: owned(4, inEnv("t", layout.StatusIncoming, nil))}))
	e.releaseAll("ReleaseAll in a transaction", tx.ops, 1, 0)
	e.ok(tx.Commit(e.ctx))
	c := e.counts()
	check(e, "incoming by owner", c.IncomingByOwner, map[int32]int64{0: 4})
	check(e, "outgoing by owner", c.OutgoingByOwner, map[int32]int64{0: 3})
}

func testClearAll(e *env) {
	e.populate()
	check(e, "cleared", must(e.s.ClearAll(e.ctx)), store.Cleared{Incoming: 3, Outgoing: 3, DeadLetters: 1})
	check(e, "cleared again", must(e.s.ClearAll(e.ctx)), store.Cleared{})
	check(e, "counts after ClearAll", e.counts(), emptyCounts())
}

// writeDeadLetter writes a dead letter of topic ("" none) written age ago, with delivery
// headers, three attempts and a reason named by the topic, and returns its envelope.
func (e *env) writeDeadLetter(topic string, age time.Duration) row.Envelope {
	e.t.Helper()
	env := inEnv(topic, layout.StatusIncoming, nil)
	env.Attempts = 3
	env.Headers = []byte(`{"a":"b","` + row.KeyAttempts + `":"3","` + row.KeyEnvelopeID + `":"x"}`)
	e.ok(e.s.InsertDeadLetter(e.ctx, env, reason(topic)))
	e.set(layout.DeadLetterTable, "timestamp", env.ID, time.Now().Add(-age).UTC())
	return env
}

// dlIDs returns the ids of dead letters, in order.
func dlIDs(ds []row.DeadLetter) []uuid.UUID {
	return mapped(ds, func(d row.DeadLetter) uuid.UUID { return d.ID })
}

// List returns dead letters newest first without bodies; Count filters by topic and age;
// Get returns one with its body.
func testListCountGetDeadLetters(e *env) {
	a, b := e.writeDeadLetter("orders", 3*time.Hour), e.writeDeadLetter("orders", 2*time.Hour)
	c, d := e.writeDeadLetter("billing", time.Hour), e.writeDeadLetter("orders", 0)
	list := must(e.s.ListDeadLetters(e.ctx, "", 10))
	check(e, "list", dlIDs(list), idsOf(d, c, b, a))
	for _, l := range list {
		if l.Body != nil || l.BodySize != len(d.Body) {
			e.t.Errorf("listed dead letter %s: body %q, size %d; want no body and size %d", l.ID, l.Body, l.BodySize, len(d.Body))
		}
	}
	check(e, "list of orders, limit 2", dlIDs(must(e.s.ListDeadLetters(e.ctx, "orders", 2))), idsOf(d, b))
	check(e, "list without a limit", len(must(e.s.ListDeadLetters(e.ctx, "", -1))), 4)
	check(e, "list of another topic", len(must(e.s.ListDeadLetters(e.ctx, "nobody", 10))), 0)
	for i, q := range []struct {
		sel       store.Selection
		olderThan time.Duration
		want      int64
	}{
		{store.Selection{}, 0, 4}, {store.Selection{Topic: "orders"}, 0, 3}, {store.Selection{}, 90 * time.Minute, 2},
		{store.Selection{Topic: "orders"}, 150 * time.Minute, 1}, {store.Selection{Topic: "billing"}, 2 * time.Hour, 0},
		{store.Selection{IDs: idsOf(a, c, d)}, 0, 3}, {store.Selection{IDs: idsOf(a, c, d), Topic: "orders"}, 90 * time.Minute, 1},
	} {
		check(e, fmt.Sprintf("count %d (%+v older than %v)", i+1, q.sel, q.olderThan), must(e.s.CountDeadLetters(e.ctx, q.sel, q.olderThan)), q.want)
	}
	e.sameDeadLetter(e.deadLetter(a.ID), a, reason("orders"), 3)
	if _, found, err := e.s.GetDeadLetter(e.ctx, uuid.New()); err != nil || found {
		e.t.Errorf("get of a missing dead letter: found %v, %v", found, err)
	}
}

// page is PageDeadLetters, failing the case on error.
func (e *env) page(p store.PageParams) []row.DeadLetter {
	e.t.Helper()
	return must(e.s.PageDeadLetters(e.ctx, p))
}

// idsIn returns the ids of dead letters as a set.
func idsIn(ds []row.DeadLetter) map[uuid.UUID]bool {
	out := map[uuid.UUID]bool{}
	for _, d := range ds {
		out[d.ID] = true
	}
	return out
}

// Pages follow the database's id order from a cursor, each with bodies, and together hold
// every selected dead letter once.
func testPageDeadLetters(e *env) {
	o1, o2, o3 := e.writeDeadLetter("orders", 0), e.writeDeadLetter("orders", 0), e.writeDeadLetter("orders", 0)
	b1, b2 := e.writeDeadLetter("billing", 0), e.writeDeadLetter("billing", 0)
	seen := map[uuid.UUID]bool{}
	var after *uuid.UUID
	for range 4 {
		page := e.page(store.PageParams{After: after, Limit: 2})
		if len(page) > 2 {
			e.t.Fatalf("page of %d with a limit of 2", len(page))
		}
		for _, d := range page {
			if seen[d.ID] || string(d.Body) != "body-"+d.ID.String() {
				e.t.Errorf("paged dead letter %s: seen before %v, body %q", d.ID, seen[d.ID], d.Body)
			}
			seen[d.ID] = true
		}
		if len(page) > 0 {
			after = &page[len(page)-1].ID
		}
	}
	check(e, "paged dead letters", seen, idSet([]row.Envelope{o1, o2, o3, b1, b2}))
	check(e, "page of ids", idsIn(e.page(store.PageParams{Sel: store.Selection{IDs: []uuid.UUID{o1.ID, b1.ID, uuid.New()}}, Limit: 10})), idSet([]row.Envelope{o1, b1}))
	check(e, "page of a topic", idsIn(e.page(store.PageParams{Sel: store.Selection{Topic: "billing"}, Limit: 10})), idSet([]row.Envelope{b1, b2}))
	check(e, "page of ids and a topic", idsIn(e.page(store.PageParams{Sel: store.Selection{IDs: []uuid.UUID{o1.ID, b1.ID}, Topic: "billing"}, Limit: 10})), idSet([]row.Envelope{b1}))
}

// Delete removes dead letters by id; Purge removes a topic's (or any) older than an age, up
// to its limit.
func testDeleteAndPurgeDeadLetters(e *env) {
	a := e.writeDeadLetter("orders", 3*time.Hour)
	e.writeDeadLetter("orders", 2*time.Hour)
	e.writeDeadLetter("orders", 2*time.Hour)
	e.writeDeadLetter("billing", 2*time.Hour)
	e.writeDeadLetter("orders", 0)
	check(e, "deleted", must(e.s.DeleteDeadLetters(e.ctx, []uuid.UUID{a.ID, uuid.New()})), int64(1))
	check(e, "deleted of none", must(e.s.DeleteDeadLetters(e.ctx, nil)), int64(0))
	for _, p := range []struct {
		topic     string
		olderThan time.Duration
		limit     int
		want      int64
	}{
		{"billing", 90 * time.Minute, 10, 1},
		{"orders", 90 * time.Minute, 1, 1},
		{"", 90 * time.Minute, 10, 1},
		{"", 90 * time.Minute, 10, 0},
		{"orders", 0, 10, 1},
	} {
		check(e, "purged of "+p.topic+" older than "+p.olderThan.String(), must(e.s.PurgeDeadLetters(e.ctx, p.topic, p.olderThan, p.limit)), p.want)
	}
	check(e, "dead letters left", e.counts().DeadLetters, int64(0))
}

// replay is ReplayToIncoming, returning the outcome by id.
func (e *env) replay(p store.ReplayParams) map[uuid.UUID]store.Replayed {
	e.t.Helper()
	out := map[uuid.UUID]store.Replayed{}
	for _, r := range must(e.s.ReplayToIncoming(e.ctx, p)) {
		out[r.ID] = r
	}
	return out
}

// Replayed dead letters become unowned Incoming envelopes of their topic (or the one given)
// without attempts or delivery headers, and leave the dead letters; one whose id is in the
// incoming table already, or that has no topic, stays.
func testReplayToIncoming(e *env) {
	r1, r2, dup := e.writeDeadLetter("orders", time.Hour), e.writeDeadLetter("orders", time.Hour), e.writeDeadLetter("orders", time.Hour)
	other, noTopic := e.writeDeadLetter("billing", time.Hour), e.writeDeadLetter("", time.Hour)
	existing := inEnv("orders", layout.StatusIncoming, nil)
	existing.ID = dup.ID
	e.in(existing)

	check(e, "replay of orders", e.replay(store.ReplayParams{Sel: store.Selection{Topic: "orders"}, Limit: 10}), map[uuid.UUID]store.Replayed{
		r1.ID: {ID: r1.ID, Moved: true, Topic: "orders"}, r2.ID: {ID: r2.ID, Moved: true, Topic: "orders"}, dup.ID: {ID: dup.ID},
	})
	got := e.claimIn(1, "orders", 10)
	e.claimedIDs("replayed", got, 1, r1, r2, existing)
	for _, r := range []row.Envelope{r1, r2} {
		env := e.byID(got, r.ID)
		var headers map[string]string
		e.ok(json.Unmarshal(env.Headers, &headers))
		if env.Attempts != 0 || string(env.Body) != string(r.Body) || env.MessageUUID != r.MessageUUID || len(headers) != 1 || headers["a"] != "b" {
			e.t.Errorf("replayed envelope %s: attempts %d, body %q, message %q, headers %v", r.ID, env.Attempts, env.Body, env.MessageUUID, headers)
		}
	}

	sel := store.Selection{IDs: []uuid.UUID{noTopic.ID, other.ID}}
	check(e, "replay of a dead letter without a topic", e.replay(store.ReplayParams{Sel: store.Selection{IDs: idsOf(noTopic)}, Limit: 10}),
		map[uuid.UUID]store.Replayed{noTopic.ID: {ID: noTopic.ID}})
	first := e.replay(store.ReplayParams{Sel: sel, Limit: 1, Topic: "rescue"})
	if len(first) != 1 {
		e.t.Fatalf("replay with a limit of 1: %v", first)
	}
	for id, r := range first {
		check(e, "first replay to rescue", r, store.Replayed{ID: id, Moved: true, Topic: "rescue"})
		rest := e.replay(store.ReplayParams{After: &id, Sel: sel, Limit: 10, Topic: "rescue"})
		if len(rest) != 1 || rest[id].ID == id {
			e.t.Errorf("replay after %s: %v, want the other dead letter", id, rest)
		}
	}
	e.claimedIDs("rescued", e.claimIn(2, "rescue", 10), 2, noTopic, other)
	check(e, "dead letters left", must(e.s.CountDeadLetters(e.ctx, store.Selection{}, 0)), int64(1))
}
