// Package testdb gives tests a real PostgreSQL (and, when configured, SQL Server) database:
// one shared pool per test binary and a fresh schema with a random name per test, dropped
// when the test ends. A database that cannot be reached fails the test with the command
// that starts it; nothing is skipped silently.
package testdb

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
	"github.com/watermill-jasper/watermill-jasper/internal/tcpproxy"
)

// DefaultPostgresDSN is the local test database of the build machines.
const DefaultPostgresDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// MSSQLEnv names the variable holding a SQL Server DSN for the SQL Server tests.
const MSSQLEnv = "WATERMILL_JASPER_TEST_MSSQL"

// PostgresDSN is the DSN tests use: $WATERMILL_JASPER_TEST_POSTGRES, else DefaultPostgresDSN.
func PostgresDSN() string {
	if dsn := os.Getenv("WATERMILL_JASPER_TEST_POSTGRES"); dsn != "" {
		return dsn
	}
	return DefaultPostgresDSN
}

const startHint = "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start (or set WATERMILL_JASPER_TEST_POSTGRES)"

var (
	poolOnce sync.Once
	pool     *pgxpool.Pool
	poolErr  error
	// stdDB opens the shared database/sql pool (pgx stdlib driver) once.
	stdDB = sync.OnceValues(func() (*sql.DB, error) { return openStdSQL("pgx", PostgresDSN(), 10, 10*time.Second) })
)

// Pool returns the shared pgx pool of this test binary (at most 20 connections, so that
// packages testing in parallel stay under PostgreSQL's 100).
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	poolOnce.Do(func() {
		cfg, err := pgxpool.ParseConfig(PostgresDSN())
		if err != nil {
			poolErr = err
			return
		}
		cfg.MaxConns = 20
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pool, poolErr = pgxpool.NewWithConfig(ctx, cfg)
		if poolErr == nil {
			poolErr = pool.Ping(ctx)
		}
	})
	if poolErr != nil {
		t.Fatalf("PostgreSQL at %s is not reachable (%v); %s", redacted(), poolErr, startHint)
	}
	return pool
}

// StdDB returns the shared database/sql pool (pgx stdlib driver) of this test binary.
func StdDB(t testing.TB) *sql.DB {
	t.Helper()
	db, err := stdDB()
	if err != nil {
		t.Fatalf("PostgreSQL at %s is not reachable (%v); %s", redacted(), err, startHint)
	}
	return db
}

// openStdSQL opens a database/sql pool of at most maxConns connections and pings it, waiting
// up to timeout.
func openStdSQL(driverName, dsn string, maxConns int, timeout time.Duration) (*sql.DB, error) {
	db, err := sql.Open(driverName, dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(maxConns)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return db, db.PingContext(ctx)
}

// dropAtEnd runs drop when the test ends (with 30 seconds to do it), failing the test when
// schema could not be dropped.
func dropAtEnd(t testing.TB, schema string, drop func(ctx context.Context) error) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := drop(ctx); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
}

func redacted() string {
	if os.Getenv("WATERMILL_JASPER_TEST_POSTGRES") != "" {
		return "$WATERMILL_JASPER_TEST_POSTGRES"
	}
	return DefaultPostgresDSN
}

// RandomName returns prefix followed by 12 random hex digits.
func RandomName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// Schema creates an empty schema with a random name, drops it (CASCADE) when the test ends
// and returns its name.
func Schema(t testing.TB) string {
	t.Helper()
	p := Pool(t)
	name := RandomName("wj_test_")
	if _, err := p.Exec(context.Background(), fmt.Sprintf(`CREATE SCHEMA "%s"`, name)); err != nil {
		t.Fatalf("create schema %s: %v", name, err)
	}
	dropAtEnd(t, name, func(ctx context.Context) error {
		_, err := p.Exec(ctx, fmt.Sprintf(`DROP SCHEMA IF EXISTS "%s" CASCADE`, name))
		return err
	})
	return name
}

// Migrated creates a random schema, migrates it and returns the pgx-backed handle and the
// schema config.
func Migrated(t testing.TB) (store.Driver, layout.Config) {
	t.Helper()
	db := PgxDriver(t)
	return db, migrate(t, db, layout.Config{Schema: Schema(t)})
}

// MigratedAs is Migrated with a schema of the given compatibility (layout.Jasper2: .NET
// Jasper 2.0 nodes share it).
func MigratedAs(t testing.TB, compat layout.Compatibility) (store.Driver, layout.Config) {
	t.Helper()
	db := PgxDriver(t)
	return db, migrate(t, db, layout.Config{Schema: Schema(t), Compatibility: compat})
}

// ExampleDSN is the PostgreSQL of the runnable examples (which have no testing.TB):
// $DATABASE_URL, else the test database.
func ExampleDSN() string {
	if v := os.Getenv("DATABASE_URL"); v != "" {
		return v
	}
	return PostgresDSN()
}

// ExampleSchema creates the Jasper tables in a fresh schema for a runnable example and
// returns the function dropping it; a failure ends the example (log.Fatal). An application
// runs `watermill-jasper schema migrate` (or schema.Migrate) once instead.
func ExampleSchema(ctx context.Context, db store.Driver) (layout.Config, func()) {
	cfg := layout.Config{Schema: RandomName("wj_example_")}
	s, err := db.Store(cfg)
	if err == nil {
		err = s.Migrate(ctx)
	}
	if err != nil {
		log.Fatal(err)
	}
	return cfg, func() {
		if _, err := db.Exec(context.Background(), `DROP SCHEMA `+cfg.QuoteIdent(cfg.Schema)+` CASCADE`); err != nil {
			log.Print(err)
		}
	}
}

// PgxDriver returns the driver of the shared pgx pool.
func PgxDriver(t testing.TB) store.Driver {
	t.Helper()
	return driver(t, postgres.New, dbx.FromPgx(Pool(t)), nil)
}

// StdDriver returns the driver of the shared database/sql pool (pgx stdlib driver).
func StdDriver(t testing.TB) store.Driver {
	t.Helper()
	h, err := dbx.FromStdSQL(StdDB(t))
	return driver(t, postgres.New, h, err)
}

// driver returns the driver build makes of the handle h, failing the test on err (the
// handle's) or on build's error.
func driver(t testing.TB, build func(dbx.DB) (*sqlstore.Driver, error), h dbx.DB, err error) store.Driver {
	t.Helper()
	var d *sqlstore.Driver
	if err == nil {
		d, err = build(h)
	}
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// migrate migrates cfg on db, failing the test on error, and returns the normalized config.
func migrate(t testing.TB, db store.Driver, cfg layout.Config) layout.Config {
	t.Helper()
	s, err := db.Store(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return s.Schema()
}

// Proxied returns the driver of a pool of at most maxConns connections to the test database
// through a TCP proxy the test can cut (internal/tcpproxy); both are closed when the test
// ends. configure adjusts the pool's config.
func Proxied(t testing.TB, maxConns int32, connectTimeout time.Duration, configure ...func(*pgxpool.Config)) (store.Driver, *tcpproxy.Proxy) {
	t.Helper()
	pc, err := pgxpool.ParseConfig(PostgresDSN())
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := tcpproxy.New(net.JoinHostPort(pc.ConnConfig.Host, strconv.Itoa(int(pc.ConnConfig.Port))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	host, port, _ := net.SplitHostPort(proxy.Addr())
	p, _ := strconv.Atoi(port)
	pc.ConnConfig.Host, pc.ConnConfig.Port = host, uint16(p)
	pc.ConnConfig.ConnectTimeout = connectTimeout
	pc.MaxConns = maxConns
	for _, f := range configure {
		f(pc)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return driver(t, postgres.New, dbx.FromPgx(pool), nil), proxy
}
