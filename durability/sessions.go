package durability

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// ErrSharedSessions is wrapped by the error of NewNode when a connection that must keep a
// database session of its own (the node lock, LISTEN) goes through a pooler that hands one
// session to several clients (PgBouncer in transaction or statement mode), or when the
// node's database goes through such a pooler with statements that keep state in the session
// (pgx's prepared statements). docs/deploying.md says how to configure both.
var ErrSharedSessions = errors.New("watermill-jasper: database sessions shared by a pooler")

// probeRounds is how many times probeSessions compares the sessions of two connections held
// at once. A pooler answers the second from the first's idle server session whenever no other
// client took it in between (PgBouncer reuses the most recently used one first), so one round
// is enough on a quiet pooler; more rounds catch a busy one.
const probeRounds = 3

// probeAcquireTimeout bounds the wait of probeSessions for its second connection.
const probeAcquireTimeout = 2 * time.Second

// probeSessions reports whether db's connections share database sessions: it holds two
// connections at once and compares the sessions their statements run on. Two connections of
// a direct pool never share one; a pooler in transaction or statement mode answers both from
// one server session when it has an idle one. A statement failing because a prepared
// statement of another client exists in the session, or one of its own does not (SQLSTATE
// 42P05, 26000), is a pooler's sign too. It returns the shared session's id (0 when unknown).
func probeSessions(ctx context.Context, db dbx.DB, st store.Store) (shared bool, session int64, err error) {
	a, err := db.Acquire(ctx)
	if err != nil {
		return false, 0, err
	}
	defer func() { _ = a.Close(false) }()
	// A pool with one free connection cannot be probed (and needs no probe: nothing shares
	// the session it would hand out); the wait for a second one is bounded.
	bctx, cancel := context.WithTimeout(ctx, probeAcquireTimeout)
	b, err := db.Acquire(bctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return false, 0, nil
		}
		return false, 0, err
	}
	defer func() { _ = b.Close(false) }()
	for range probeRounds {
		id1, err := st.SessionID(ctx, a)
		if err == nil {
			var id2 int64
			id2, err = st.SessionID(ctx, b)
			if err == nil && id1 == id2 {
				return true, id1, nil
			}
		}
		if isSessionStatementError(err) {
			return true, 0, nil
		}
		if err != nil {
			return false, 0, err
		}
	}
	return false, 0, nil
}

// isSessionStatementError reports whether err is PostgreSQL's answer that a prepared
// statement already exists (42P05) or does not exist (26000): statements prepared in one
// session and run in another, which only a pooler sharing sessions causes.
func isSessionStatementError(err error) bool {
	var coded interface{ SQLState() string }
	if !errors.As(err, &coded) {
		return false
	}
	code := coded.SQLState()
	return code == "42P05" || code == "26000"
}

// checkSessions refuses the configurations a pooler sharing sessions breaks: the node lock's
// (and LISTEN's) database must give each connection a session of its own, and when the
// node's database shares sessions, its statements must not keep state in them. It returns
// whether db shares sessions (the node's database goes through a pooler). separate says
// whether sessionDB is another pool than db (NodeConfig.SessionDB).
func checkSessions(ctx context.Context, db, sessionDB dbx.DB, separate bool, st store.Store) (pooled bool, err error) {
	// The statement fix, when db's statements would keep state in a shared session.
	var statementFix string
	if s, ok := db.(dbx.SessionStatements); ok {
		if mode, keeps := s.SessionStatements(); keeps {
			statementFix = fmt.Sprintf("add default_query_exec_mode=exec (or simple_protocol) to the DSN of the node's database: its pgx pool runs statements in query exec mode %q, which keeps them in the session", mode)
		}
	}
	shared, session, err := probeSessions(ctx, sessionDB, st)
	if err != nil {
		return false, fmt.Errorf("watermill-jasper: node: check that the node's connections have sessions of their own: %w", err)
	}
	if shared {
		what := "the node's database"
		fix := "set NodeConfig.SessionDB (jasper.Config.Node.SessionDB, CLI --session-dsn) to a pool of direct connections to the same database"
		if statementFix != "" {
			fix += "; " + statementFix
		}
		if separate {
			what, fix = "NodeConfig.SessionDB", "it must connect to PostgreSQL directly, not through the pooler"
		}
		return false, fmt.Errorf("%w: %s goes through a pooler that hands one database session to several connections (PgBouncer in transaction or statement mode: %s), so the node lock and LISTEN would be other clients' too: %s (docs/deploying.md)",
			ErrSharedSessions, what, sessionNote(session), fix)
	}
	if !separate {
		return false, nil
	}
	shared, session, err = probeSessions(ctx, db, st)
	if err != nil {
		return false, fmt.Errorf("watermill-jasper: node: check whether the node's database goes through a pooler: %w", err)
	}
	if shared && statementFix != "" {
		return true, fmt.Errorf("%w: the node's database goes through a pooler in transaction mode (%s): %s (docs/deploying.md)",
			ErrSharedSessions, sessionNote(session), statementFix)
	}
	return shared, nil
}

// sessionNote says how the probe saw a shared session, for an error message.
func sessionNote(session int64) string {
	if session == 0 {
		return "statements prepared by one connection were seen by another"
	}
	return fmt.Sprintf("two connections held at once ran on database session %d", session)
}
