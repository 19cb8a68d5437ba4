package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// logicalSchema starts a private cluster with wal_level = logical and migrates a schema on
// it; it returns the cluster and the schema's store.
func logicalSchema(t *testing.T) (*testdb.Cluster, store.Store) {
	t.Helper()
	c := testdb.StartLogicalCluster(t)
	_, st := c.Migrated(t)
	return c, st
}

// slot create, list (table and JSON) and drop; and the refusals, one line each: wal_level
// not logical (the shared server runs replica), a role without REPLICATION, a slot in use.
func TestSlotCommands(t *testing.T) {
	t.Parallel()
	c, st := logicalSchema(t)
	s := st.Schema().Schema
	dsn := c.DSN()
	on := func(args ...string) result { return cli(t, "", nil, append(args, "--dsn", dsn, "--schema", s)...) }

	r := on("slot", "create")
	assertSuccess(t, r)
	if !strings.Contains(r.stdout, "slot wj_outbox_"+s+": created") || !strings.Contains(r.stdout, "publication wj_outbox_"+s+": created") {
		t.Errorf("slot create printed %q", r.stdout)
	}
	r = on("slot", "create")
	assertSuccess(t, r)
	if !strings.Contains(r.stdout, "exists (checked)") {
		t.Errorf("second slot create printed %q", r.stdout)
	}
	r = on("slot", "list")
	assertSuccess(t, r)
	if !strings.Contains(r.stdout, "wal_level logical") || !strings.Contains(r.stdout, "wj_outbox_"+s) || !strings.Contains(r.stdout, s+".jasper_outgoing_envelopes") {
		t.Errorf("slot list printed %q", r.stdout)
	}
	r = on("slot", "list", "--output", "json")
	assertSuccess(t, r)
	var st2 struct {
		WALLevel string
		Slots    []struct{ Name, Plugin string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &st2); err != nil || st2.WALLevel != "logical" || len(st2.Slots) != 1 || st2.Slots[0].Plugin != "pgoutput" {
		t.Errorf("slot list --output json: %v, %+v from %q", err, st2, r.stdout)
	}

	// wal_level replica (the shared server; Setup checks before creating anything).
	r = cli(t, "", nil, "slot", "create", "--dsn", testdb.PostgresDSN(), "--schema", s)
	assertFailure(t, r, 1, "wal_level", "logical")
	// A role without REPLICATION.
	if _, err := st.DB().Exec(context.Background(), "CREATE ROLE plain LOGIN"); err != nil {
		t.Fatal(err)
	}
	plain := strings.Replace(dsn, "://postgres@", "://plain@", 1)
	if plain == dsn {
		t.Fatalf("cannot make a DSN for role plain from %s", dsn)
	}
	r = cli(t, "", nil, "slot", "list", "--dsn", plain, "--schema", s)
	assertFailure(t, r, 1, "REPLICATION", "plain")

	r = cli(t, "", nil, "slot", "drop", "--dsn", dsn, "--schema", s)
	assertFailure(t, r, 1, "aborted")
	r = on("slot", "drop", "--yes")
	assertSuccess(t, r)
	if !strings.Contains(r.stdout, "slot: dropped") || !strings.Contains(r.stdout, "publication: dropped") {
		t.Errorf("slot drop printed %q", r.stdout)
	}
	r = on("slot", "drop", "--yes")
	assertSuccess(t, r)
	if !strings.Contains(r.stdout, "slot: did not exist") {
		t.Errorf("second slot drop printed %q", r.stdout)
	}
}

// Two relays follow one slot: one streams it, the other stands by. The streaming one is
// killed with SIGKILL while messages are being committed; the stand-by takes the slot over
// within seconds and every committed message is relayed (at least once).
func TestRelayStandByTakesOverAfterSIGKILL(t *testing.T) {
	t.Parallel()
	c, st := logicalSchema(t)
	s := st.Schema().Schema
	dsn := c.DSN()
	assertSuccess(t, cli(t, "", nil, "slot", "create", "--dsn", dsn, "--schema", s))
	relay := func() *relayProcess {
		return startRelayOn(t, dsn, s, "--replication-dsn", dsn, "--to", "stdout", "--verbose", "--poll-interval", "100ms")
	}
	const following = "Following the outbox through the replication slot"
	a := relay()
	a.waitFor("relay A streaming the slot", time.Minute, func() bool { return a.stderrHas(following) })
	b := relay()
	b.waitFor("relay B standing by", time.Minute, func() bool { return b.stderrHas("standing by") })

	const n = 2000
	ids := make([]string, 0, n)
	insert := func(from, to int) {
		for i := from; i < to; i += 10 {
			envs := make([]row.Envelope, 0, 10)
			for j := i; j < min(i+10, to); j++ {
				id := fmt.Sprintf("m-%05d", j)
				e, err := row.FromMessage("orders", message.NewMessage(id, []byte(`{}`)), row.Defaults{})
				if err != nil {
					t.Fatal(err)
				}
				envs = append(envs, e)
				ids = append(ids, id)
			}
			if err := st.InsertEnvelopes(context.Background(), store.InsertParams{Outgoing: envs}); err != nil {
				t.Fatal(err)
			}
		}
	}
	insert(0, n/2)
	a.waitFor("relay A relaying", time.Minute, func() bool { out, _ := a.lines(); return len(out) >= n/8 })
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	insert(n/2, n)
	b.waitFor("relay B streaming the slot", time.Minute, func() bool { return b.stderrHas(following) })
	took := time.Since(killedAt)
	seen := func() map[string]int {
		m := map[string]int{}
		for _, p := range []*relayProcess{a, b} {
			out, _ := p.lines()
			for _, l := range out {
				if f := strings.Fields(l); len(f) > 1 {
					m[f[1]]++
				}
			}
		}
		return m
	}
	b.waitFor("every message relayed", 2*time.Minute, func() bool {
		m := seen()
		for _, id := range ids {
			if m[id] == 0 {
				return false
			}
		}
		return true
	})
	dups := 0
	for _, k := range seen() {
		dups += k - 1
	}
	t.Logf("relay A killed with SIGKILL after relaying part of %d messages; relay B streamed the slot %s later; %d duplicates",
		n, took.Round(time.Millisecond), dups)
	if took > 10*time.Second {
		t.Errorf("the stand-by took %s to take the slot over", took)
	}
	if code := b.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("relay B exited with %d:\n%s", code, b)
	}
}
