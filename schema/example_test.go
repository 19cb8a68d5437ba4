package schema_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Creating the tables in a schema of their own, then checking the live layout against
// Jasper's (plus this library's extensions). Migrate is idempotent and safe to run from
// every process at startup; `watermill-jasper schema migrate` and `schema verify` do the
// same from the command line.
func ExampleMigrate() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.ExampleDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	db := database.FromPgx(pool)
	cfg := schema.Config{Schema: testdb.RandomName("wj_example_")} // e.g. "messaging"

	diffs, err := schema.Verify(ctx, db, cfg, schema.VerifyOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("before:", len(diffs), "differences, the first:", diffs[0])

	if err := schema.Migrate(ctx, db, cfg); err != nil {
		log.Fatal(err)
	}
	defer func() {
		if _, err := db.Exec(context.Background(), `DROP SCHEMA `+cfg.QuoteIdent(cfg.Schema)+` CASCADE`); err != nil {
			log.Print(err)
		}
	}()
	if err := schema.Migrate(ctx, db, cfg); err != nil { // a second run changes nothing
		log.Fatal(err)
	}

	diffs, err = schema.Verify(ctx, db, cfg, schema.VerifyOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("after:", len(diffs), "differences")
	// Output:
	// before: 3 differences, the first: missing table jasper_outgoing_envelopes
	// after: 0 differences
}

// The PostgreSQL DDL, for review or for a DBA to apply: every statement is idempotent. The
// SQL Server script is sqlserver.Script (package sqlserver), its batches separated by GO
// lines, for sqlcmd.
func ExampleScript() {
	script, err := schema.Script(schema.Config{Schema: "messaging"})
	if err != nil {
		log.Fatal(err)
	}
	for _, line := range strings.Split(script, "\n")[:5] {
		fmt.Println(line)
	}
	// Output:
	// -- watermill-jasper schema for postgres, schema messaging
	// CREATE SCHEMA IF NOT EXISTS "messaging";
	//
	// CREATE TABLE IF NOT EXISTS "messaging"."jasper_outgoing_envelopes" (
	//   "id" uuid NOT NULL,
}
