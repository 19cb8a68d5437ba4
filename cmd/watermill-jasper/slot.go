package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

var slotGroup = group{
	name:    "slot",
	summary: "list, create or drop the replication slot of the logical-replication relay (list, create, drop)",
	description: "The relay can follow the outbox through a PostgreSQL logical replication slot instead of polling it " +
		"(relay --replication-dsn; docs/relay-sources.md). These commands manage the slot and its publication. " +
		"They need wal_level = logical and a role with REPLICATION (--dsn). A slot that no relay reads keeps " +
		"the server's write-ahead log: drop the slots you no longer use, and set max_slot_wal_keep_size.",
	examples: []string{
		"slot create --dsn postgres://replicator@db.internal:5432/app --schema messaging",
		"slot list --output json",
		"slot drop --schema messaging --yes",
	},
	subs: []spec{
		slotList,
		slotCreate,
		slotDrop,
	},
}

// slotNameFlags are --slot and --publication.
type slotNameFlags struct{ names admin.ReplicationSlot }

func newSlotNameFlags(fs *pflag.FlagSet) *slotNameFlags {
	f := &slotNameFlags{}
	fs.StringVar(&f.names.Slot, "slot", "", "replication slot `NAME`: lower-case letters, digits and underscores (default: wj_outbox_<schema>)")
	fs.StringVar(&f.names.Publication, "publication", "", "publication `NAME` (default: wj_outbox_<schema>)")
	return f
}

// onReplication runs fn with the replication DSN and the schema config, without opening a
// pool (the replication functions open their own connection).
func onReplication(db *dbFlags, fn func(ctx context.Context, e *env, dsn string, cfg schema.Config) error) runFunc {
	return func(ctx context.Context, e *env, _ []string) error {
		dsn, err := db.DSN()
		if err != nil {
			return err
		}
		d, err := dialectOfDSN(dsn)
		if err != nil {
			return err
		}
		if d != database.Postgres {
			return usageErrorf("slot commands need PostgreSQL (a postgres:// --dsn): logical replication does not exist on %s", d)
		}
		cfg, err := db.config(d)
		if err != nil {
			return err
		}
		return fn(ctx, e, dsn, cfg)
	}
}

var slotList = spec{
	name:        "slot list",
	summary:     "print the logical replication slots and publications of the database",
	description: "Each slot with its plugin, whether a relay streams it (and its pid), its confirmed position, the WAL written since (lag) and the WAL it keeps on disk, its wal_status and how much more WAL it may keep before max_slot_wal_keep_size invalidates it; then each publication with its tables.",
	examples:    []string{"slot list --dsn postgres://replicator@db.internal:5432/app", "slot list --output json"},
	setup: func(fs *pflag.FlagSet) runFunc {
		out := newOutputFlag(fs)
		db := newDBFlags(fs)
		return onReplication(db, func(ctx context.Context, e *env, dsn string, _ schema.Config) error {
			st, err := admin.ReplicationSlots(ctx, dsn)
			if err != nil {
				return err
			}
			if out.json {
				return writeJSON(e.stdout, st)
			}
			return printSlots(e.stdout, st)
		})
	},
}

func printSlots(w io.Writer, st admin.ReplicationStatus) error {
	fmt.Fprintf(w, "wal_level %s\n\n", st.WALLevel)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tPLUGIN\tACTIVE\tCONFIRMED\tLAG\tRETAINED\tWAL STATUS\tSAFE WAL SIZE")
	for _, s := range st.Slots {
		active := "no"
		if s.Active {
			active = fmt.Sprintf("pid %d", s.ActivePID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Plugin, active, s.ConfirmedFlushLSN,
			bytesText(s.LagBytes), bytesText(s.RetainedBytes), orDash(s.WALStatus), bytesText(s.SafeWALSize))
	}
	if len(st.Slots) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	fmt.Fprintln(tw, "\nPUBLICATION\tOPERATIONS\tTABLES")
	for _, p := range st.Publications {
		var ops []string
		for _, o := range []struct {
			on   bool
			name string
		}{{p.Insert, "insert"}, {p.Update, "update"}, {p.Delete, "delete"}, {p.Truncate, "truncate"}} {
			if o.on {
				ops = append(ops, o.name)
			}
		}
		tables := strings.Join(p.Tables, ", ")
		if p.AllTables {
			tables = "(all tables)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Name, strings.Join(ops, ","), tables)
	}
	if len(st.Publications) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	return tw.Flush()
}

// bytesText renders a byte count (-1: unknown).
func bytesText(n int64) string {
	switch {
	case n < 0:
		return "-"
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

var slotCreate = spec{
	name:    "slot create",
	summary: "create the publication and the replication slot of the schema's outbox",
	description: "Creates, when missing, the publication FOR TABLE <schema>.jasper_outgoing_envelopes WITH (publish = 'insert') " +
		"and then the logical replication slot (plugin pgoutput), and checks what exists. Rows committed before the " +
		"slot's consistent point are relayed by the polling path. Creating a slot waits for the transactions running at that moment.",
	examples: []string{"slot create --dsn postgres://replicator@db.internal:5432/app --schema messaging"},
	setup: func(fs *pflag.FlagSet) runFunc {
		names := newSlotNameFlags(fs)
		db := newDBFlags(fs)
		return onReplication(db, func(ctx context.Context, e *env, dsn string, cfg schema.Config) error {
			r, err := admin.CreateReplicationSlot(ctx, dsn, cfg, names.names)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "publication %s: %s\nslot %s: %s\n", r.Publication, createdText(r.CreatedPublication),
				r.Slot, createdText(r.CreatedSlot))
			if r.CreatedSlot {
				fmt.Fprintf(e.stdout, "the slot streams what commits after %s; run the relay with --replication-dsn to follow it\n", r.ConsistentPoint)
			}
			return nil
		})
	},
}

func createdText(created bool) string {
	if created {
		return "created"
	}
	return "exists (checked)"
}

var slotDrop = spec{
	name:    "slot drop",
	summary: "drop the replication slot and the publication of the schema's outbox",
	description: "Drops the slot, then the publication. A slot a relay streams is refused: stop the relays (or let them fall back to " +
		"polling) first. It asks for confirmation on stdin unless --yes.",
	examples: []string{"slot drop --schema messaging", "slot drop --schema messaging --slot wj_outbox_messaging --yes"},
	setup: func(fs *pflag.FlagSet) runFunc {
		yes := fs.Bool("yes", false, "drop without asking for confirmation")
		names := newSlotNameFlags(fs)
		db := newDBFlags(fs)
		return onReplication(db, func(ctx context.Context, e *env, dsn string, cfg schema.Config) error {
			if !*yes {
				slot := names.names.Slot
				if slot == "" {
					slot = "wj_outbox_" + strings.ToLower(cfg.Schema)
				}
				fmt.Fprintf(e.stdout, "Drop replication slot %s and its publication (schema %s)? [y/N] ", slot, cfg.Schema)
				ok, err := confirmed(e.stdin)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("aborted: nothing dropped (answer y to drop, or pass --yes)")
				}
			}
			r, err := admin.DropReplicationSlot(ctx, dsn, cfg, names.names)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "slot: %s\npublication: %s\n", droppedText(r.DroppedSlot), droppedText(r.DroppedPublication))
			return nil
		})
	},
}

func droppedText(dropped bool) string {
	if dropped {
		return "dropped"
	}
	return "did not exist"
}
