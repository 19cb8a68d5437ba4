// Package exampledb connects the runnable examples to their local services: PostgreSQL from
// DATABASE_URL (default the local test database) and RabbitMQ from AMQP_URL. An application
// reads its own configuration instead.
package exampledb

import (
	"context"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Defaults of the environment variables.
const (
	DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	DefaultAMQPURL     = "amqp://guest:guest@localhost:5672/"
)

// Env returns the environment variable name, or def when it is empty.
func Env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// AMQPURL is $AMQP_URL, else the local RabbitMQ.
func AMQPURL() string { return Env("AMQP_URL", DefaultAMQPURL) }

// Open opens a pool on $DATABASE_URL (else the local test database) and checks that
// PostgreSQL answers, with an error saying how to fix it when it does not.
func Open(ctx context.Context) (*pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, Env("DATABASE_URL", DefaultDatabaseURL))
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("PostgreSQL is not reachable; start it or set DATABASE_URL: %w", err)
	}
	return pool, nil
}

// Setup opens the pool (Open) and creates the Jasper tables in schemaName if they are missing
// (schema.Migrate, idempotent; an application runs `watermill-jasper schema migrate` once
// instead). It returns the pool, its driver and the schema config; close the pool when done.
func Setup(ctx context.Context, schemaName string) (*pgxpool.Pool, database.Driver, schema.Config, error) {
	pool, err := Open(ctx)
	if err != nil {
		return nil, nil, schema.Config{}, err
	}
	db := database.FromPgx(pool)
	cfg := schema.Config{Schema: schemaName}
	if err := schema.Migrate(ctx, db, cfg); err != nil {
		pool.Close()
		return nil, nil, schema.Config{}, err
	}
	return pool, db, cfg, nil
}
