package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// seed inserts 3 incoming rows (2 Incoming owned by node 7 and 0, 1 Scheduled), 2 outgoing
// rows owned by node 7, and 1 dead letter.
func seed(t *testing.T, s string) {
	t.Helper()
	stmts := []string{
		`INSERT INTO "%[1]s".jasper_incoming_envelopes (id, status, owner_id, body, message_type, received_at) VALUES
		 (gen_random_uuid(), 'Incoming', 7, '\x00', 'Ping', 'orders'),
		 (gen_random_uuid(), 'Incoming', 0, '\x00', 'Ping', 'orders'),
		 (gen_random_uuid(), 'Scheduled', 0, '\x00', 'Ping', 'orders')`,
		`INSERT INTO "%[1]s".jasper_outgoing_envelopes (id, owner_id, destination, body, message_type) VALUES
		 (gen_random_uuid(), 7, 'rabbitmq://queue/orders', '\x00', 'Ping'),
		 (gen_random_uuid(), 7, 'rabbitmq://queue/invoices', '\x00', 'Ping')`,
		`INSERT INTO "%[1]s".jasper_dead_letters (id, body, message_type) VALUES (gen_random_uuid(), '\x00', 'Ping')`,
	}
	for _, st := range stmts {
		if _, err := testdb.Pool(t).Exec(context.Background(), fmt.Sprintf(st, s)); err != nil {
			t.Fatal(err)
		}
	}
}

func rowCount(t *testing.T, s string) int {
	t.Helper()
	var n int
	q := fmt.Sprintf(`SELECT (SELECT count(*) FROM "%[1]s".jasper_incoming_envelopes) + (SELECT count(*) FROM "%[1]s".jasper_outgoing_envelopes) + (SELECT count(*) FROM "%[1]s".jasper_dead_letters)`, s)
	if err := testdb.Pool(t).QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// assertLines checks that every wanted line occurs in out, ignoring runs of spaces.
func assertLines(t *testing.T, out string, want ...string) {
	t.Helper()
	spaces := regexp.MustCompile(` +`)
	norm := spaces.ReplaceAllString(out, " ")
	for _, w := range want {
		if !strings.Contains(norm, "\n"+w+"\n") {
			t.Errorf("output lacks the line %q:\n%s", w, out)
		}
	}
}

func TestStorageCountsReleaseClear(t *testing.T) {
	t.Parallel()
	s := testdb.Schema(t)
	assertSuccess(t, db(t, "", s, "schema", "migrate"))
	seed(t, s)

	r := db(t, "", s, "storage", "counts")
	assertSuccess(t, r)
	assertLines(t, r.stdout,
		" STATUS ROWS", " Incoming 2", " Scheduled 1", " Handled 0", " total 3",
		" DESTINATION ROWS", " rabbitmq://queue/invoices 1", " rabbitmq://queue/orders 1", " total 2",
		" ROWS", " 1",
		" OWNER INCOMING OUTGOING", " 0 2 0", " 7 1 2")
	// The columns of a table are aligned.
	if !strings.Contains(r.stdout, "  rabbitmq://queue/invoices  1\n  rabbitmq://queue/orders    1\n") {
		t.Errorf("destinations are not aligned:\n%s", r.stdout)
	}

	r = db(t, "", s, "storage", "release")
	assertSuccess(t, r)
	if r.stdout != fmt.Sprintf("released 3 rows in schema %s (1 incoming, 2 outgoing): any node may now claim them\n", s) {
		t.Errorf("release: %q", r.stdout)
	}
	assertLines(t, db(t, "", s, "storage", "counts").stdout, " 0 3 2")

	// Anything but y/yes keeps the rows.
	for _, answer := range []string{"n\n", "", "no\n", "sure\n"} {
		r = db(t, answer, s, "storage", "clear")
		assertFailure(t, r, 1, "aborted", "nothing deleted")
		if !strings.Contains(r.stdout, fmt.Sprintf("Delete all 6 rows (3 incoming, 2 outgoing, 1 dead letters) in schema %s? [y/N]", s)) {
			t.Errorf("clear should ask first, got %s", r)
		}
		if n := rowCount(t, s); n != 6 {
			t.Fatalf("answer %q: %d of 6 rows left", answer, n)
		}
	}
	r = db(t, "y\n", s, "storage", "clear")
	assertSuccess(t, r)
	if !strings.Contains(r.stdout, fmt.Sprintf("deleted 6 rows from schema %s (3 incoming, 2 outgoing, 1 dead letters)", s)) {
		t.Errorf("clear: %q", r.stdout)
	}
	if n := rowCount(t, s); n != 0 {
		t.Fatalf("%d rows left after clear", n)
	}

	seed(t, s)
	r = db(t, "", s, "storage", "clear", "--yes")
	assertSuccess(t, r)
	if r.stdout != fmt.Sprintf("deleted 6 rows from schema %s (3 incoming, 2 outgoing, 1 dead letters)\n", s) {
		t.Errorf("clear --yes: %q", r.stdout)
	}
	if n := rowCount(t, s); n != 0 {
		t.Fatalf("%d rows left after clear --yes", n)
	}
	r = db(t, "", s, "storage", "clear")
	assertSuccess(t, r)
	assertSuccess(t, db(t, "", s, "schema", "verify")) // clear keeps the tables
}

func TestStorageWithoutTables(t *testing.T) {
	t.Parallel()
	s := testdb.Schema(t)
	for _, args := range [][]string{{"storage", "counts"}, {"storage", "release"}, {"storage", "clear", "--yes"}, {"storage", "clear"}} {
		assertFailure(t, db(t, "y\n", s, args...), 1, "schema "+s, "watermill-jasper schema migrate")
	}
}

func TestDSNFromEnvironment(t *testing.T) {
	t.Parallel()
	s := testdb.Schema(t)
	env := []string{dsnEnv + "=" + testdb.PostgresDSN()}
	assertSuccess(t, cli(t, "", env, "schema", "migrate", "--schema", s))
	assertSuccess(t, cli(t, "", env, "storage", "counts", "--schema", s))
	// --dsn wins over $DATABASE_URL.
	r := cli(t, "", env, "storage", "counts", "--schema", s, "--dsn", "postgres://postgres@127.0.0.1:1/test")
	assertFailure(t, r, 1, "cannot connect to PostgreSQL")
	assertFailure(t, cli(t, "", env, "storage", "counts", "--dsn", ""), 2, "--dsn is empty")
}
