package testdb

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// LogicalSettings are the postgresql.conf lines of StartLogicalCluster: logical decoding,
// room for the replication connections and slots of parallel tests, and pg_stat_statements
// loaded so that a test can count the statements a role ran (StatementCount).
var LogicalSettings = []string{
	"wal_level = logical",
	"max_wal_senders = 30",
	"max_replication_slots = 30",
	"shared_preload_libraries = 'pg_stat_statements'",
	"pg_stat_statements.track = 'all'",
}

// StartLogicalCluster starts a private cluster with LogicalSettings (then settings, which
// may override them) and creates the pg_stat_statements extension in its database. The
// shared test server runs wal_level = replica, so tests of replication slots use one.
func StartLogicalCluster(t testing.TB, settings ...string) *Cluster {
	t.Helper()
	c := StartCluster(t, append(append([]string(nil), LogicalSettings...), settings...)...)
	conn, err := pgx.Connect(context.Background(), c.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		t.Fatalf("create extension pg_stat_statements: %v", err)
	}
	return c
}

// StatementCount is how many statements role ran in the cluster's database since the
// cluster started, as pg_stat_statements counts them (replication commands such as
// START_REPLICATION are not statements; SQL sent over a replication connection is). The
// cluster must have been started by StartLogicalCluster.
func (c *Cluster) StatementCount(t testing.TB, role string) int64 {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), c.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int64
	if err := conn.QueryRow(context.Background(), `SELECT coalesce(sum(s.calls), 0)::bigint
		FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
		WHERE r.rolname = $1 AND s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`, role).Scan(&n); err != nil {
		t.Fatalf("count the statements of %s: %v", role, err)
	}
	return n
}
