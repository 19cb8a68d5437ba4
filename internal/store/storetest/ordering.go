package storetest

import (
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// Per-key ordering (the partition_key and seq columns): a claim takes a keyed row only when
// no earlier row of its key and queue (outgoing destination, incoming received_at) exists,
// so rows of one key go one at a time, oldest first; unkeyed rows are not held back.

// keyed sets the partition key of envelopes.
func keyed(key string, envs ...row.Envelope) []row.Envelope {
	for i := range envs {
		envs[i].PartitionKey = key
	}
	return envs
}

// outInOrder inserts outgoing envelopes one statement each, so their seq follows the order.
func (e *env) outInOrder(envs ...row.Envelope) {
	e.t.Helper()
	for _, env := range envs {
		e.out(env)
	}
}

func testLockOutgoingHeadOfKey(e *env) {
	k1 := keyed("order-1", outEnv("a"), outEnv("a"), outEnv("a"))
	k2 := keyed("order-2", outEnv("a"), outEnv("a"))
	other := keyed("order-1", outEnv("b")) // the same key on another destination: its own order
	u1, u2 := outEnv("a"), outEnv("a")
	e.outInOrder(k1[0], k2[0], u1, k1[1], other[0], k2[1], u2, k1[2])

	first := e.begin()
	got := must(first.ops.LockOutgoing(e.ctx, store.LockOutgoingParams{Limit: 10}))
	e.claimedIDs("the first lock", got, 0, k1[0], k2[0], other[0], u1, u2)
	for _, env := range got {
		if env.ID == k1[0].ID && env.PartitionKey != "order-1" {
			e.t.Errorf("a locked keyed envelope reads partition key %q, want order-1", env.PartitionKey)
		}
	}
	second := e.begin()
	e.claimedIDs("beside the first (the heads are held, the rest waits behind them)",
		must(second.ops.LockOutgoing(e.ctx, store.LockOutgoingParams{Limit: 10})), 0)
	e.ok(second.Rollback(e.ctx))
	e.ok(first.ops.DeleteOutgoing(e.ctx, idsOf(k1[0], k2[0], other[0], u1, u2)))
	e.ok(first.Commit(e.ctx))

	e.claimedIDs("after the heads were sent", e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 7, Limit: 10}), 7, k1[1], k2[1])
	e.claimedIDs("while the claimed heads exist", e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 8, Limit: 10}), 8)
	e.ok(e.s.ReleaseOutgoing(e.ctx, store.ReleaseParams{IDs: idsOf(k1[1]), Owner: 7, CountAttempt: true}))
	e.claimedIDs("a failed head is tried again before the next", e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 8, Limit: 10}), 8, k1[1])
	e.ok(e.s.DeadLetterOutgoing(e.ctx, []store.DeadLetterReason{{ID: k1[1].ID, Reason: store.Reason{Explanation: "gave up"}}}))
	e.claimedIDs("after the head was dead-lettered", e.claimOut(e.s, store.ClaimOutgoingParams{Owner: 9, Limit: 10}), 9, k1[2])
}

func testClaimIncomingHeadOfKey(e *env) {
	mark := keyed("order-1", inEnv("jobs", layout.StatusHandled, nil))
	k := keyed("order-1", inEnv("jobs", layout.StatusIncoming, nil), inEnv("jobs", layout.StatusIncoming, nil))
	otherQueue := keyed("order-1", inEnv("other", layout.StatusIncoming, nil))
	u := inEnv("jobs", layout.StatusIncoming, nil)
	for _, env := range []row.Envelope{mark[0], k[0], otherQueue[0], u, k[1]} {
		e.in(env)
	}
	e.claimedIDs("jobs (a Handled mark of the key holds nothing back)", e.claimIn(4, "jobs", 10), 4, k[0], u)
	e.claimedIDs("other", e.claimIn(4, "other", 10), 4, otherQueue[0])
	e.claimedIDs("jobs while its head is claimed", e.claimIn(5, "jobs", 10), 5)
	e.ok(e.s.RetryIncoming(e.ctx, store.RetryParams{IDs: idsOf(k[0]), Owner: 4, Delay: time.Hour}))
	e.claimedIDs("jobs while its head waits for a retry", e.claimIn(5, "jobs", 10), 5)
	e.ok(e.s.DeleteIncoming(e.ctx, idsOf(k[0])))
	e.claimedIDs("jobs once the head is handled", e.claimIn(5, "jobs", 10), 5, k[1])
}

// LockOutgoing with IDs locks only those of the listed rows that are there, unowned, free,
// within the destination filters and first of their key (the logical-replication source).
func testLockOutgoingByID(e *env) {
	a, b, c := outEnv("a"), outEnv("a"), outEnv("b")
	mine := owned(9, outEnv("a"))[0]
	k := keyed("order-1", outEnv("a"), outEnv("a"))
	e.outInOrder(a, b, c, mine, k[0], k[1])
	gone := outEnv("a") // never inserted
	first := e.begin()
	got := must(first.ops.LockOutgoing(e.ctx, store.LockOutgoingParams{IDs: idsOf(a, b, mine, gone, k[1])}))
	e.claimedIDs("a, b, an owned row, a missing one, a keyed row behind another", got, 0, a, b)
	second := e.begin()
	e.claimedIDs("a held by the first, c; only b", must(second.ops.LockOutgoing(e.ctx, store.LockOutgoingParams{IDs: idsOf(a, c), Only: []string{"b"}})), 0, c)
	e.ok(second.Rollback(e.ctx))
	e.claimedIDs("c excluded", must(e.s.LockOutgoing(e.ctx, store.LockOutgoingParams{IDs: idsOf(c, k[0]), Exclude: []string{"b"}})), 0, k[0])
	e.ok(first.Rollback(e.ctx))
}
