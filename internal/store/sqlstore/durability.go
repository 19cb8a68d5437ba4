package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// The durability agent's operations (store.Ops) over DurabilityStatements: the global lock,
// the scheduled release, dormant owners, what waits unowned, the expiry cleanups and the
// gauges.

// TryGlobalLock takes a transaction-level lock on a Jasper lock id.
func (o *ops) TryGlobalLock(ctx context.Context, id int32) (bool, error) {
	var ok bool
	err := o.row(ctx, o.d.TryAdvisoryXactLock(), []any{o.d.AdvisoryLockKey(id)}, &ok)
	return ok, err
}

// ReleaseScheduled makes due Scheduled envelopes Incoming.
func (o *ops) ReleaseScheduled(ctx context.Context, topics []string, limit int) (store.ScheduledRelease, error) {
	var r store.ScheduledRelease
	var next sql.NullFloat64
	var released sql.NullString
	if err := o.row(ctx, o.d.ReleaseScheduled(), []any{o.d.StringList(topics), limit}, &r.Released, &next, &released); err != nil {
		return r, err
	}
	if next.Valid {
		// Rounded up to the microsecond (the columns' precision), so that float arithmetic
		// never makes it a hair shorter than the database meant.
		r.NextDue = max(time.Duration(math.Ceil(next.Float64*1000))*time.Microsecond, time.Microsecond)
	}
	if released.Valid {
		r.Topics = []string{}
		return r, readTopics(released.String, "released envelopes", &r.Topics)
	}
	return r, nil
}

// TakeDueScheduledSends deletes due scheduled sends and returns them.
func (o *ops) TakeDueScheduledSends(ctx context.Context, limit int) ([]row.Envelope, error) {
	rows, err := o.query(ctx, o.d.ReleaseDueScheduledSends(), limit)
	if err != nil {
		return nil, err
	}
	var envs []row.Envelope
	for rows.Next() {
		e, err := row.ScanIncoming(rows, o.d.UUIDs())
		if err != nil {
			_ = rows.Close()
			return nil, fmt.Errorf("read a scheduled send: %w", err)
		}
		envs = append(envs, e)
	}
	return envs, rows.Close()
}

// OtherOwners returns the owner ids other than 0 and self.
func (o *ops) OtherOwners(ctx context.Context, self int32) ([]int32, error) {
	return dbx.Column[int32](o.query(ctx, o.d.OtherOwners(), self))
}

// ReleaseOwner hands back envelopes of owner.
func (o *ops) ReleaseOwner(ctx context.Context, owner int32, limit int) (store.Released, error) {
	var r store.Released
	var topics string
	if err := o.row(ctx, o.d.ReleaseOwner(), []any{owner, limit}, &r.Incoming, &r.Outgoing, &topics); err != nil {
		return r, err
	}
	return r, readTopics(topics, "handed back envelopes", &r.Topics)
}

// Unowned reports what waits for a claim.
func (o *ops) Unowned(ctx context.Context) (store.Unowned, error) {
	var u store.Unowned
	var topics string
	if err := o.row(ctx, o.d.UnownedEnvelopes(), nil, &u.Outgoing, &topics); err != nil {
		return u, err
	}
	return u, readTopics(topics, "unowned envelopes", &u.Topics)
}

// DeleteExpiredOutgoing deletes unowned outgoing envelopes past deliver_by.
func (o *ops) DeleteExpiredOutgoing(ctx context.Context, limit int) (int64, error) {
	return o.exec(ctx, o.d.DeleteExpiredOutgoing(), limit)
}

// DeleteExpiredHandled deletes Handled marks past keep_until.
func (o *ops) DeleteExpiredHandled(ctx context.Context, limit int) (int64, error) {
	return o.exec(ctx, o.d.DeleteExpiredHandled(), limit)
}

// Gauges samples the tables.
func (o *ops) Gauges(ctx context.Context) (store.Gauges, error) {
	var g store.Gauges
	var age sql.NullFloat64
	err := o.row(ctx, o.d.StorageGauges(), nil,
		&g.Incoming, &g.Scheduled, &g.Handled, &g.Outgoing, &g.DeadLetters, &age, &g.DormantOwned)
	if err != nil {
		return g, err
	}
	if age.Valid && age.Float64 > 0 {
		g.OldestOutgoingAge = time.Duration(age.Float64 * float64(time.Second))
	}
	return g, nil
}

// OwnersAlive tells, for each id, whether a session holds its node lock.
func (o *ops) OwnersAlive(ctx context.Context, ids []int32) (map[int32]bool, error) {
	rows, err := o.query(ctx, o.d.OwnersAlive(), o.d.OwnerList(ids))
	if err != nil {
		return nil, err
	}
	out := make(map[int32]bool, len(ids))
	for rows.Next() {
		var id int32
		var alive bool
		if err := rows.Scan(&id, &alive); err != nil {
			_ = rows.Close()
			return nil, err
		}
		out[id] = alive
	}
	return out, rows.Close()
}

// readTopics reads the JSON array of topics a statement returned about some envelopes.
func readTopics(js, about string, topics *[]string) error {
	if err := json.Unmarshal([]byte(js), topics); err != nil {
		return fmt.Errorf("read the topics of %s: %w", about, err)
	}
	return nil
}
