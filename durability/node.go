// Package durability gives a process its Jasper node identity.
//
// A Jasper node is a process sharing the envelope tables. Its id is the owner_id written on
// the envelopes it holds (0 means "no node"), and it holds a database lock keyed by that id
// for as long as it lives. Other nodes test that lock to tell a live owner from a dead one,
// and hand the envelopes of dead owners back to everyone (Jasper's DurabilityAgent does
// this; docs/durability.md). Go and .NET nodes share one id space and one lock space, so ids are
// chosen and locked exactly as Jasper does: a random int32 (the deterministic hash of a
// random GUID), locked on PostgreSQL with a session-level advisory lock whose bigint key is
// the id sign-extended.
//
// A Node holds its lock on a connection of its own for the life of the process.
//
// An Agent is Jasper's DurabilityAgent for a Node and one schema: it releases due scheduled
// envelopes, hands back the envelopes of dormant nodes (owners whose lock nobody holds; never
// those of a live Go or .NET node), deletes expired envelopes and Handled inbox rows in
// bounded batches, checks the node lock (taking it again after a lost connection, and handing
// back what a claim with a lost answer may have marked), samples the tables for metrics, and
// holds the one LISTEN connection that wakes the components of its schema. It is the only
// owner of these jobs: the components (forwarders, subscribers, the middleware) belong to an
// Agent, take it at construction, report to it and ask it to run a job early (Wake,
// ScheduleAt); none runs a copy of a job. The runtime (package jasper at the module root)
// builds the node, the agent and the components and starts and stops them in order; by hand:
//
//	node, err := durability.NewNode(ctx, db, durability.NodeConfig{}, logger)
//	agent, err := durability.NewAgent(node, durability.Config{Schema: cfg}, logger)
//	err = agent.Start(ctx)
//	fwd, err := forwarder.NewForwarder(agent, forwarder.Config{Publisher: pub}, logger)
//	// stop: the components first, then agent.Stop(ctx), then node.Close()
package durability

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/jasperid"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// ErrNodeIDInUse is wrapped by the error of NewNode when the configured node id is locked by
// another database session, i.e. another live process (Go or .NET) runs with that id.
var ErrNodeIDInUse = errors.New("watermill-jasper: node id in use")

// ErrNodeClosed is returned by Check once the node is closed.
var ErrNodeClosed = errors.New("watermill-jasper: node is closed")

// randomIDAttempts bounds how many random ids NewNode tries before giving up (a collision
// between two random int32 ids is already very unlikely).
const randomIDAttempts = 16

// newNodeID draws a random node id (a variable so tests can force collisions).
var newNodeID = jasperid.NewNodeID

// unlockTimeout bounds the statement that releases the lock on Close.
const unlockTimeout = 5 * time.Second

// NodeConfig configures a Node.
type NodeConfig struct {
	// ID is the node id: the owner_id of the envelopes this node holds and the key of its
	// lock. 0 (the default) picks a random id as Jasper does (the hash of a random GUID,
	// never 0), trying another one if a live node already holds it. A fixed id is refused
	// with ErrNodeIDInUse while another session holds it.
	ID int32
	// SessionDB is the pool of the connections that keep a database session of their own for
	// the life of the node: the node lock and the agent's LISTEN connection (two connections).
	// Default: the node's database. When the node's database goes through a pooler in
	// transaction mode (PgBouncer), set it to a pool of direct connections to the same
	// database: the pooler would hand those sessions to other clients. NewNode checks it and
	// refuses a SessionDB whose connections share sessions (ErrSharedSessions); see
	// docs/deploying.md.
	SessionDB database.Driver
}

// Node is this process's identity among the nodes sharing the Jasper tables. It holds its
// lock on a dedicated connection taken from the pool until Close. It is safe for concurrent
// use.
type Node struct {
	db        database.Driver
	sessionDB database.Driver // where the lock's and LISTEN's connections come from (NodeConfig.SessionDB)
	pooled    bool            // db goes through a pooler sharing sessions (checkSessions)
	locks     store.Store     // node locks are database-wide: any schema's store runs them
	logger    watermill.LoggerAdapter
	id        int32

	mu     sync.Mutex
	conn   dbx.Conn // holds the lock; nil once closed or after the connection was lost
	closed bool
	// relocks counts the times Check took the lock again after it was lost; relockedAt is
	// the last time.
	relocks    uint64
	relockedAt time.Time
	// unknownOutcomes counts ReportUnknownOutcome calls.
	unknownOutcomes atomic.Uint64
}

// NewNode picks the node id (config.ID, or a random one), takes its lock on a dedicated
// connection of db and returns the Node. It fails with an error wrapping ErrNodeIDInUse when
// a configured id is held by another session. Close releases the lock and the connection.
func NewNode(ctx context.Context, db database.Driver, config NodeConfig, logger watermill.LoggerAdapter) (*Node, error) {
	if db == nil {
		return nil, errors.New("watermill-jasper: durability.NewNode needs a database.Driver (database.FromPgx, database.FromStdSQL or sqlserver.FromStdSQL)")
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	sessionDB := config.SessionDB
	if sessionDB == nil {
		sessionDB = db
	} else if sessionDB.Dialect() != db.Dialect() {
		return nil, fmt.Errorf("watermill-jasper: NodeConfig.SessionDB is %s but the node's database is %s: it must be the same database", sessionDB.Dialect(), db.Dialect())
	}
	// Locks are database-wide, so the schema does not matter here, only the dialect.
	locks, err := sessionDB.Store(layout.Config{Dialect: db.Dialect()})
	if err != nil {
		return nil, fmt.Errorf("watermill-jasper: node lock: %w", err)
	}
	pooled, err := checkSessions(ctx, db, sessionDB, config.SessionDB != nil, locks)
	if err != nil {
		return nil, err
	}
	n := &Node{db: db, sessionDB: sessionDB, pooled: pooled, locks: locks, logger: logger}
	for attempt := 1; ; attempt++ {
		id := config.ID
		if id == 0 {
			id = newNodeID()
		}
		conn, err := n.lock(ctx, id)
		if err == nil {
			n.id, n.conn = id, conn
			break
		}
		if config.ID == 0 && errors.Is(err, ErrNodeIDInUse) && attempt < randomIDAttempts {
			continue
		}
		return nil, err
	}
	n.logger = logger.With(watermill.LogFields{"node_id": n.id})
	n.logger.Info("Node lock taken", watermill.LogFields{"pooled": pooled})
	return n, nil
}

// lock takes the lock of id on a new connection and returns that connection.
func (n *Node) lock(ctx context.Context, id int32) (dbx.Conn, error) {
	conn, err := n.sessionDB.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("watermill-jasper: node %d: take a connection for the node lock: %w", id, err)
	}
	ok, err := n.locks.TryNodeLock(ctx, conn, id)
	if err != nil {
		_ = conn.Close(true)
		return nil, fmt.Errorf("watermill-jasper: node %d: take the node lock: %w", id, err)
	}
	if !ok {
		_ = conn.Close(false)
		return nil, fmt.Errorf("%w: node id %d is locked by another database session (another live process uses it); configure another id or 0 for a random one", ErrNodeIDInUse, id)
	}
	return conn, nil
}

// SessionDB returns the pool of the connections that keep a session of their own (the node
// lock, LISTEN): NodeConfig.SessionDB, or the node's database.
func (n *Node) SessionDB() database.Driver { return n.sessionDB }

// Pooled reports whether NewNode found the node's database behind a pooler that shares
// database sessions between connections (PgBouncer in transaction mode); the node lock and
// LISTEN then run on NodeConfig.SessionDB.
func (n *Node) Pooled() bool { return n.pooled }

// ID returns the node id: the owner_id this node writes on the envelopes it holds.
func (n *Node) ID() int32 { return n.id }

// Check verifies that the node still holds its lock and takes it again on a new connection
// when the old one was lost (database restart, network failure). It returns nil when the
// lock is held on return, ErrNodeClosed after Close, an error wrapping ErrNodeIDInUse when
// another session took the id meanwhile, or the database error that prevented the check.
//
// The durability agent calls it periodically; components may call it too.
func (n *Node) Check(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrNodeClosed
	}
	if n.conn != nil {
		held, err := n.locks.HoldsNodeLock(ctx, n.conn, n.id)
		if err == nil && held {
			return nil
		}
		if err == nil {
			// The session is fine but the lock is gone (someone ran pg_advisory_unlock_all on
			// it?): take it again on the same session.
			var ok bool
			ok, err = n.locks.TryNodeLock(ctx, n.conn, n.id)
			if err == nil && ok {
				n.relocks++
				n.relockedAt = time.Now()
				n.logger.Info("Node lock taken again", nil)
				return nil
			}
			if err == nil {
				return fmt.Errorf("%w: node %d lost its lock and another session holds it now", ErrNodeIDInUse, n.id)
			}
		}
		_ = n.conn.Close(true)
		n.conn = nil
		if ctx.Err() != nil {
			return ctx.Err()
		}
		n.logger.Error("Node lock connection lost, taking the lock again", err, nil)
	}
	conn, err := n.lock(ctx, n.id)
	if err != nil {
		return err
	}
	n.conn = conn
	n.relocks++
	n.relockedAt = time.Now()
	n.logger.Info("Node lock taken again on a new connection", nil)
	return nil
}

// Relocks returns how many times Check found the node lock lost (its connection broken, or
// the lock released under it) and took it again. While the lock was lost, other nodes were
// free to treat this node as dead and hand its envelopes back; a change of this number tells
// the durability agent to hand back the envelopes still marked with this node's id that no
// local component may know about (a claim whose answer was lost with the connection).
func (n *Node) Relocks() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.relocks
}

// lastRelock returns when Check last took the lock again (zero: never).
func (n *Node) lastRelock() time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.relockedAt
}

// ReportUnknownOutcome tells the node that a statement marking envelopes with its id (a
// claim) failed without a readable answer (the connection was lost, it timed out, or its
// rows could not all be read): envelopes may now carry this node's id that no local
// component works on, and since the node's lock is held, no other node hands them back.
// The node's durability agents hand back every envelope marked with this node's id at their
// next node check, as after a lost lock (the batches in flight are then delivered again:
// at least once). Subscribers call it through their Agent; it is cheap and safe for
// concurrent use.
func (n *Node) ReportUnknownOutcome() { n.unknownOutcomes.Add(1) }

// UnknownOutcomes returns how many times ReportUnknownOutcome was called.
func (n *Node) UnknownOutcomes() uint64 { return n.unknownOutcomes.Load() }

// Close releases the node lock and gives its connection back to the pool. It is idempotent.
// Envelopes still owned by this node keep its id; a living node's durability agent hands
// them back once it sees the lock free.
func (n *Node) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	if n.conn == nil {
		return nil
	}
	conn := n.conn
	n.conn = nil
	ctx, cancel := context.WithTimeout(context.Background(), unlockTimeout)
	defer cancel()
	released, err := n.locks.ReleaseNodeLock(ctx, conn, n.id)
	if err != nil || !released {
		// Closing the session releases every lock it holds.
		n.logger.Info("Node lock not released cleanly, closing its connection", watermill.LogFields{"error": fmt.Sprint(err)})
		return conn.Close(true)
	}
	n.logger.Info("Node lock released", nil)
	return conn.Close(false)
}
