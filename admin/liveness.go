package admin

import (
	"context"
	"fmt"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Liveness tells whether the node behind an owner_id is running.
type Liveness int

const (
	// LivenessUnknown: the database did not tell.
	LivenessUnknown Liveness = iota
	// Alive: a database session holds the node's lock (a running Go or .NET node).
	Alive
	// Dormant: no session holds the node's lock. Its envelopes wait for a durability
	// agent's reassignment pass, which hands them back to every node.
	Dormant
)

// String returns "alive", "dormant" or "unknown".
func (l Liveness) String() string {
	switch l {
	case Alive:
		return "alive"
	case Dormant:
		return "dormant"
	}
	return "unknown"
}

// NodeLiveness tells, for each owner id, whether a session holds its node lock (Jasper's
// session advisory lock keyed by the id; on SQL Server its application lock). It never takes
// a lock, so it cannot disturb a running node: PostgreSQL reads pg_locks, SQL Server asks
// APPLOCK_TEST (which answers for the pooled session it runs on, never a node's own lock
// session). Node locks belong to the database, not to a schema. AnyNode (0) is not a node and
// is left out of the result.
func NodeLiveness(ctx context.Context, db database.Driver, owners []int32) (map[int32]Liveness, error) {
	// The locks are database-wide: the store of any schema of the database answers.
	s, err := resolve(db, schema.Config{})
	if err != nil {
		return nil, err
	}
	res := make(map[int32]Liveness, len(owners))
	ids := make([]int32, 0, len(owners))
	for _, id := range owners {
		if id != AnyNode {
			res[id] = LivenessUnknown
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return res, nil
	}
	alive, err := s.OwnersAlive(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("watermill-jasper: read the node locks: %w", err)
	}
	for id, ok := range alive {
		if _, asked := res[id]; !asked {
			continue
		}
		if ok {
			res[id] = Alive
		} else {
			res[id] = Dormant
		}
	}
	return res, nil
}
