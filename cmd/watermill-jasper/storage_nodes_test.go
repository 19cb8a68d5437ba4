package main

import (
	"context"
	"fmt"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/internal/jasperid"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// storage counts tells the nodes holding rows apart: alive (a session holds the node lock)
// or dormant.
func TestStorageCountsShowsNodes(t *testing.T) {
	t.Parallel()
	s := testdb.Schema(t)
	assertSuccess(t, db(t, "", s, "schema", "migrate"))
	assertLines(t, db(t, "", s, "storage", "counts").stdout, " NODE STATE", " (none)")

	ctx := context.Background()
	live, dead := jasperid.NewNodeID(), jasperid.NewNodeID()
	conn, err := testdb.Pool(t).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1::bigint)`, int64(live)).Scan(&ok); err != nil || !ok {
		t.Fatalf("lock %d: %v %v", live, ok, err)
	}
	defer conn.Exec(ctx, `SELECT pg_advisory_unlock($1::bigint)`, int64(live))
	_, err = testdb.Pool(t).Exec(ctx, fmt.Sprintf(`INSERT INTO "%s".jasper_outgoing_envelopes (id, owner_id, destination, body, message_type) VALUES
	  (gen_random_uuid(), $1, 'orders', '\x00', 'Ping'), (gen_random_uuid(), $2, 'orders', '\x00', 'Ping'), (gen_random_uuid(), 0, 'orders', '\x00', 'Ping')`, s),
		live, dead)
	if err != nil {
		t.Fatal(err)
	}
	r := db(t, "", s, "storage", "counts")
	assertSuccess(t, r)
	assertLines(t, r.stdout, " NODE STATE", fmt.Sprintf(" %d alive", live), fmt.Sprintf(" %d dormant", dead))
}
