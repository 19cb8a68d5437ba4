package logrepl_test

import (
	"context"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/internal/logrepl"
)

// TestRefusalsOfTheServer: a cluster with wal_level = replica, and a slot invalidated by
// max_slot_wal_keep_size, each on its own private cluster (their settings would disturb the
// others).
func TestRefusalsOfTheServer(t *testing.T) {
	t.Run("WALLevelReplica", func(t *testing.T) {
		t.Parallel()
		srv := startServer(t) // initdb's default: wal_level = replica
		e := newEnv(t, srv, false)
		ctx := context.Background()
		_, err := logrepl.Setup(ctx, e.admin("postgres"), e.cfg)
		oneLine(t, err, logrepl.ErrWALLevel, `wal_level is "replica"`, "set wal_level = logical in postgresql.conf and restart PostgreSQL")
		_, err = logrepl.Start(ctx, e.dial("postgres"), e.cfg)
		oneLine(t, err, logrepl.ErrWALLevel, "set wal_level = logical in postgresql.conf and restart PostgreSQL")
		st, err := logrepl.List(ctx, e.admin("postgres"))
		if err != nil || st.WALLevel != "replica" || len(st.Slots) != 0 {
			t.Fatalf("list: %+v, %v", st, err)
		}
	})

	t.Run("SlotInvalidated", func(t *testing.T) {
		t.Parallel()
		srv := startLogicalServer(t, "max_slot_wal_keep_size = 1MB")
		e := newEnv(t, srv, true)
		ctx := context.Background()
		// Write WAL past max_slot_wal_keep_size with the slot unread, and checkpoint: the
		// checkpoint invalidates the slot (wal_status = 'lost').
		lost := false
		for i := 0; i < 20 && !lost; i++ {
			e.commitTx("filler", 1)
			srv.exec(t, "SELECT pg_switch_wal()")
			srv.exec(t, "CHECKPOINT")
			var status string
			if err := srv.pool.QueryRow(ctx, "SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1", e.cfg.Slot).Scan(&status); err != nil {
				t.Fatal(err)
			}
			lost = status == "lost"
		}
		if !lost {
			t.Fatal("the slot was not invalidated after 20 WAL switches and checkpoints")
		}
		_, err := logrepl.Start(ctx, e.dial("postgres"), e.cfg)
		oneLine(t, err, logrepl.ErrSlotInvalidated, e.cfg.Slot, "drop it and create it again")
		_, err = logrepl.Setup(ctx, e.admin("postgres"), e.cfg)
		oneLine(t, err, logrepl.ErrSlotInvalidated, e.cfg.Slot)
		st, err := logrepl.List(ctx, e.admin("postgres"))
		if err != nil || len(st.Slots) != 1 || st.Slots[0].WALStatus != "lost" {
			t.Fatalf("list: %+v, %v", st, err)
		}
		// Drop and Setup make a working slot again.
		if _, err := logrepl.Drop(ctx, e.admin("postgres"), e.cfg); err != nil {
			t.Fatal(err)
		}
		if _, err := logrepl.Setup(ctx, e.admin("postgres"), e.cfg); err != nil {
			t.Fatal(err)
		}
		r, _ := e.start()
		expect(t, r, "a row after the slot was made again", e.commitTx("after", 1))
	})
}
