package testdb

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/pgcluster"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
)

// Cluster is a private PostgreSQL server of one test: initdb in a temporary directory, its
// own settings, a free port on 127.0.0.1, trust authentication, database "test". Tests that
// need other server settings than the shared server's (wal_level=logical), or stop, crash
// and restart the database, use one; the shared server is never touched. It is stopped
// (immediate) and removed when the test ends. It is a thin layer over internal/pgcluster
// that fails the test on error.
type Cluster struct {
	t testing.TB
	c *pgcluster.Cluster
}

// StartCluster initdb's and starts a private cluster with the given postgresql.conf lines
// (e.g. "wal_level = logical"). A machine without PostgreSQL's server binaries fails the
// test saying how to install them.
func StartCluster(t testing.TB, settings ...string) *Cluster {
	t.Helper()
	c, err := pgcluster.New(context.Background(), pgcluster.Options{Settings: settings})
	if err != nil {
		if errors.Is(err, pgcluster.ErrNoServerPrograms) {
			t.Fatal(err)
		}
		t.Fatalf("private PostgreSQL cluster: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &Cluster{t: t, c: c}
}

// DSN is the URL of the cluster's database "test" as user postgres.
func (c *Cluster) DSN() string { return c.c.DSN() }

// Port is the cluster's TCP port.
func (c *Cluster) Port() int { return c.c.Port() }

// Start starts the server and waits until it accepts connections.
func (c *Cluster) Start() {
	c.t.Helper()
	if err := c.c.Start(context.Background()); err != nil {
		c.t.Fatal(err)
	}
}

// Crash stops the server as a crash would (pg_ctl stop -m immediate: no checkpoint, every
// backend killed); Start recovers it from the write-ahead log.
func (c *Cluster) Crash() {
	c.t.Helper()
	if err := c.c.Crash(context.Background()); err != nil {
		c.t.Fatal(err)
	}
}

// WaitReady waits until the cluster accepts connections again (after Start, for callers that
// started it from another goroutine), up to timeout.
func (c *Cluster) WaitReady(ctx context.Context, timeout time.Duration) error {
	return c.c.WaitReady(ctx, timeout)
}

// Driver returns a pgx pool on the cluster's database (short connect timeout, so that a
// stopped server fails fast) and its store driver; the pool is closed when the test ends.
func (c *Cluster) Driver(t testing.TB) (store.Driver, *pgxpool.Pool) {
	t.Helper()
	pc, err := pgxpool.ParseConfig(c.DSN())
	if err != nil {
		t.Fatal(err)
	}
	pc.ConnConfig.ConnectTimeout = 2 * time.Second
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return driver(t, postgres.New, dbx.FromPgx(pool), nil), pool
}

// Migrated creates the tables in a new schema with a random name on the cluster and returns
// the cluster's store driver and the schema's store (the cluster goes with the test, and the
// schema with it).
func (c *Cluster) Migrated(t testing.TB) (store.Driver, store.Store) {
	t.Helper()
	db, _ := c.Driver(t)
	st, err := db.Store(layout.Config{Schema: RandomName("wj_test_")})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Migrate(context.Background()); err != nil {
		t.Fatalf("migrate schema %s on the private cluster: %v", st.Schema().Schema, err)
	}
	return db, st
}
