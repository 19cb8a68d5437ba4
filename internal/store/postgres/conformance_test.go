package postgres_test

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/storetest"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// The conformance suite on PostgreSQL, through pgx natively and through database/sql (pgx's
// stdlib driver): every operation of the store, each case in a fresh migrated schema.

func TestConformancePgx(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) store.Store { return migrated(t, testdb.PgxDriver(t)) })
}

func TestConformanceStdSQL(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) store.Store { return migrated(t, testdb.StdDriver(t)) })
}

// Through PgBouncer in transaction mode, in the two query exec modes such a pool needs
// (docs/deploying.md), every operation but the session ones (node locks, LISTEN: on the
// node's direct SessionDB) works.
func TestConformanceThroughPgBouncer(t *testing.T) {
	t.Parallel()
	bouncer := testdb.StartPgBouncer(t, 20)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(strings.ReplaceAll(mode.String(), " ", "_"), func(t *testing.T) {
			t.Parallel()
			drv, _ := bouncer.Driver(t, 10, mode)
			storetest.RunThroughPooler(t, func(t *testing.T) store.Store { return migrated(t, drv) })
		})
	}
}

// migrated returns the store of a fresh schema of drv (dropped when t ends), migrated.
func migrated(t *testing.T, drv store.Driver) store.Store {
	t.Helper()
	s, err := drv.Store(layout.Config{Schema: testdb.Schema(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return s
}
