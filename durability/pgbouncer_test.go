package durability

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/jackc/pgx/v5"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// Behind PgBouncer in transaction mode, NewNode refuses every configuration that would put
// the node lock (and LISTEN) on a session the pooler hands to other clients, or run pgx's
// prepared statements through it, with one line naming the fix; and it leaves no lock on the
// pooler's server connections. With the documented configuration (the database through the
// pooler in exec or simple-protocol mode, NodeConfig.SessionDB direct) the node runs, says
// it is pooled, holds its lock on the direct session and releases it on Close.
func TestNodeBehindPgBouncer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bouncer := testdb.StartPgBouncer(t, 10)
	direct := testDB(t)
	pooledCache, _ := bouncer.Driver(t, 8, pgx.QueryExecModeCacheStatement)
	pooledExec, _ := bouncer.Driver(t, 8, pgx.QueryExecModeExec)
	pooledSimple, _ := bouncer.Driver(t, 8, pgx.QueryExecModeSimpleProtocol)

	refused := []struct {
		name   string
		db     func() (*Node, error)
		want   []string
		notAll []string
	}{
		{"pooled, prepared statements, no SessionDB", func() (*Node, error) {
			return NewNode(ctx, pooledCache, NodeConfig{}, watermill.NopLogger{})
		}, []string{"the node's database goes through a pooler", "NodeConfig.SessionDB", "default_query_exec_mode=exec", "docs/deploying.md"}, nil},
		{"pooled, exec mode, no SessionDB", func() (*Node, error) {
			return NewNode(ctx, pooledExec, NodeConfig{}, watermill.NopLogger{})
		}, []string{"the node's database goes through a pooler", "two connections held at once ran on database session", "NodeConfig.SessionDB"}, []string{"default_query_exec_mode"}},
		{"SessionDB through the pooler", func() (*Node, error) {
			return NewNode(ctx, direct, NodeConfig{SessionDB: pooledSimple}, watermill.NopLogger{})
		}, []string{"NodeConfig.SessionDB goes through a pooler", "connect to PostgreSQL directly"}, nil},
		{"pooled, prepared statements, SessionDB direct", func() (*Node, error) {
			return NewNode(ctx, pooledCache, NodeConfig{SessionDB: direct}, watermill.NopLogger{})
		}, []string{"the node's database goes through a pooler in transaction mode", `query exec mode "cache statement"`, "default_query_exec_mode=exec"}, nil},
	}
	for _, c := range refused {
		n, err := c.db()
		if err == nil {
			_ = n.Close()
			t.Errorf("%s: NewNode succeeded, want ErrSharedSessions", c.name)
			continue
		}
		if !errors.Is(err, ErrSharedSessions) {
			t.Errorf("%s: %v, want an error wrapping ErrSharedSessions", c.name, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", c.name, err, w)
			}
		}
		for _, w := range c.notAll {
			if strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q says %q, which is not the problem", c.name, err, w)
			}
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: the error is not one line: %q", c.name, err)
		}
	}
	if n := bouncer.AdvisoryLocks(t); n != 0 {
		t.Fatalf("%d advisory locks held on the pooler's server connections after the refusals", n)
	}

	for _, pooled := range []struct {
		name string
		db   func() *Node
	}{
		{"exec", func() *Node { return mustNode(t, pooledExec, direct) }},
		{"simple protocol", func() *Node { return mustNode(t, pooledSimple, direct) }},
	} {
		n := pooled.db()
		if !n.Pooled() {
			t.Errorf("%s: Pooled() false behind PgBouncer", pooled.name)
		}
		if lockHolder(t, direct, n.ID()) == 0 {
			t.Errorf("%s: node lock not held", pooled.name)
		}
		if err := n.Check(ctx); err != nil {
			t.Errorf("%s: Check: %v", pooled.name, err)
		}
		if l := bouncer.AdvisoryLocks(t); l != 0 {
			t.Errorf("%s: %d advisory locks on the pooler's server connections while the node runs", pooled.name, l)
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		if pid := lockHolder(t, direct, n.ID()); pid != 0 {
			t.Errorf("%s: node lock still held by %d after Close", pooled.name, pid)
		}
	}
	n := mustNode(t, direct, nil)
	defer n.Close()
	if n.Pooled() {
		t.Error("Pooled() true on a direct database")
	}
}

// mustNode is NewNode on db with NodeConfig.SessionDB sessionDB (nil: none).
func mustNode(t *testing.T, db, sessionDB database.Driver) *Node {
	t.Helper()
	n, err := NewNode(context.Background(), db, NodeConfig{SessionDB: sessionDB}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
