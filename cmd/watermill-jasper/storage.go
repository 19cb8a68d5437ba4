package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

var storageGroup = group{
	name:    "storage",
	summary: "count, release or delete the stored envelopes (counts, release, clear)",
	description: "Unlike Jasper's storage command, counts and release never rebuild the schema or delete rows; " +
		"only clear deletes, and it asks first.",
	examples: []string{
		"storage counts --schema messaging",
		"storage release --dsn 'sqlserver://app@sql.internal:1433?database=app'",
		"storage clear --schema messaging --yes",
	},
	subs: []spec{
		storageCounts,
		storageRelease,
		storageClear,
	},
}

var storageCounts = spec{
	name:    "storage counts",
	summary: "print how many envelopes the tables hold",
	description: "Incoming envelopes by status, outgoing envelopes by destination, dead letters, and the incoming " +
		"and outgoing rows each node (owner_id) holds; owner 0 means no node holds them. Each node is shown alive " +
		"(a session holds its lock) or dormant (none does: a durability agent hands its rows back).",
	examples: []string{
		"storage counts --dsn postgres://app@db.internal:5432/app --schema messaging",
	},
	setup: func(fs *pflag.FlagSet) runFunc {
		out := newOutputFlag(fs)
		return newDBFlags(fs).run(nil, func(ctx context.Context, e *env, drv database.Driver, cfg schema.Config) error {
			c, err := admin.Counts(ctx, drv, cfg)
			if err != nil {
				return err
			}
			ids := make([]int32, len(c.Owners))
			for i, o := range c.Owners {
				ids[i] = o.OwnerID
			}
			live, err := admin.NodeLiveness(ctx, drv, ids)
			if err != nil {
				return err
			}
			if out.json {
				return writeJSON(e.stdout, countsJSON(cfg, c, live))
			}
			if err := printCounts(e.stdout, cfg, c); err != nil {
				return err
			}
			return printNodes(e.stdout, ids, live)
		})
	},
}

// countsJSON is storage counts in --output json.
func countsJSON(cfg schema.Config, c admin.RowCounts, live map[int32]admin.Liveness) any {
	type owner struct {
		OwnerID  int32  `json:"owner_id"`
		Incoming int64  `json:"incoming"`
		Outgoing int64  `json:"outgoing"`
		State    string `json:"state,omitempty"`
	}
	incoming := map[string]int64{}
	for _, s := range knownStatuses {
		incoming[s] = c.IncomingStatus(s)
	}
	for _, s := range c.Incoming {
		incoming[s.Status] = s.Rows
	}
	outgoing := map[string]int64{}
	for _, d := range c.Outgoing {
		outgoing[d.Destination] = d.Rows
	}
	owners := make([]owner, 0, len(c.Owners))
	for _, o := range c.Owners {
		ow := owner{OwnerID: o.OwnerID, Incoming: o.Incoming, Outgoing: o.Outgoing}
		if o.OwnerID != admin.AnyNode {
			ow.State = fmt.Sprint(live[o.OwnerID])
		}
		owners = append(owners, ow)
	}
	return struct {
		Schema        string           `json:"schema"`
		Dialect       string           `json:"dialect"`
		Incoming      map[string]int64 `json:"incoming"`
		IncomingTotal int64            `json:"incoming_total"`
		Outgoing      map[string]int64 `json:"outgoing"`
		OutgoingTotal int64            `json:"outgoing_total"`
		DeadLetters   int64            `json:"dead_letters"`
		Owners        []owner          `json:"owners"`
	}{cfg.Schema, string(cfg.Dialect), incoming, c.IncomingTotal(), outgoing, c.OutgoingTotal(), c.DeadLetters, owners}
}

// printNodes lists the nodes (owner_id other than 0) holding rows and whether each is alive.
func printNodes(w io.Writer, ids []int32, live map[int32]admin.Liveness) error {
	nodes := table{title: "Nodes holding envelopes (alive: a session holds the node lock; dormant: none does, and a durability agent hands its envelopes back)",
		rows: []string{"NODE\tSTATE"}}
	for _, id := range ids {
		if id != admin.AnyNode {
			nodes.add("%d\t%s", id, live[id])
		}
	}
	if err := nodes.write(w); err != nil {
		return err
	}
	if len(nodes.rows) == 1 {
		_, err := fmt.Fprintln(w, "  (none)")
		return err
	}
	return nil
}

// knownStatuses are always listed by storage counts, even when no row has them.
var knownStatuses = []string{schema.StatusIncoming, schema.StatusScheduled, schema.StatusHandled}

func printCounts(w io.Writer, cfg schema.Config, c admin.RowCounts) error {
	fmt.Fprintf(w, "Schema %s (%s)\n", cfg.Schema, dialectName(cfg.Dialect))
	in := table{title: fmt.Sprintf("Incoming envelopes (%s)", cfg.IncomingTable()), rows: []string{"STATUS\tROWS"}}
	for _, s := range knownStatuses {
		in.add("%s\t%d", s, c.IncomingStatus(s))
	}
	for _, s := range c.Incoming {
		if !contains(knownStatuses, s.Status) {
			in.add("%s\t%d", s.Status, s.Rows)
		}
	}
	in.add("total\t%d", c.IncomingTotal())
	out := table{title: fmt.Sprintf("Outgoing envelopes (%s)", schema.OutgoingTable), rows: []string{"DESTINATION\tROWS"}}
	for _, d := range c.Outgoing {
		out.add("%s\t%d", d.Destination, d.Rows)
	}
	out.add("total\t%d", c.OutgoingTotal())
	dead := table{title: fmt.Sprintf("Dead letters (%s)", schema.DeadLetterTable), rows: []string{"ROWS", fmt.Sprint(c.DeadLetters)}}
	for _, t := range []table{in, out, dead} {
		if err := t.write(w); err != nil {
			return err
		}
	}
	if len(c.Owners) == 0 {
		_, err := fmt.Fprintln(w, "\nOwners (owner_id; 0 = any node)\n  (no rows)")
		return err
	}
	owners := table{title: "Owners (owner_id; 0 = any node)", rows: []string{"OWNER\tINCOMING\tOUTGOING"}}
	for _, o := range c.Owners {
		owners.add("%d\t%d\t%d", o.OwnerID, o.Incoming, o.Outgoing)
	}
	return owners.write(w)
}

// table is a titled table: rows of cells separated by tabs, the first the header.
type table struct {
	title string
	rows  []string
}

// add appends a row.
func (t *table) add(format string, args ...any) {
	t.rows = append(t.rows, fmt.Sprintf(format, args...))
}

// write prints a blank line, the title and the rows aligned in columns, indented by two spaces.
func (t table) write(w io.Writer) error {
	fmt.Fprintf(w, "\n%s\n", t.title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range t.rows {
		fmt.Fprintf(tw, "  %s\n", r)
	}
	return tw.Flush()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

var storageRelease = spec{
	name:    "storage release",
	summary: "hand every stored envelope back to any node (owner_id = 0)",
	description: "Sets owner_id to 0 on every incoming and outgoing row, in one transaction, so that any node " +
		"may claim them. Rows held by a node that is still running are released too and may then be handled " +
		"or sent twice: run it when no node is running, or to hand back at once the rows of nodes that died.",
	examples: []string{
		"storage release --schema messaging",
	},
	setup: onDB(func(ctx context.Context, e *env, drv database.Driver, cfg schema.Config) error {
		in, out, err := admin.ReleaseOwnership(ctx, drv, cfg)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "released %d rows in schema %s (%d incoming, %d outgoing): any node may now claim them\n", in+out, cfg.Schema, in, out)
		return nil
	}),
}

var storageClear = spec{
	name:    "storage clear",
	summary: "delete every stored envelope and dead letter",
	description: "Deletes all rows of the three tables in one transaction (DELETE; the tables themselves are kept). " +
		"It asks for confirmation on stdin first: only y or yes goes on, anything else (including no answer) " +
		"aborts with exit status 1.",
	examples: []string{
		"storage clear --schema messaging",
		"storage clear --schema messaging --yes",
	},
	setup: func(fs *pflag.FlagSet) runFunc {
		yes := fs.Bool("yes", false, "delete without asking for confirmation")
		db := newDBFlags(fs)
		return db.run(nil, func(ctx context.Context, e *env, drv database.Driver, cfg schema.Config) error {
			if !*yes {
				c, err := admin.Counts(ctx, drv, cfg)
				if err != nil {
					return err
				}
				question := fmt.Sprintf("Delete all %d rows (%d incoming, %d outgoing, %d dead letters) in schema %s?",
					c.Total(), c.IncomingTotal(), c.OutgoingTotal(), c.DeadLetters, cfg.Schema)
				if ok, err := askDelete(e, cfg, "rows", c.Total(), question); !ok {
					return err
				}
			}
			r, err := admin.Clear(ctx, drv, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "deleted %d rows from schema %s (%d incoming, %d outgoing, %d dead letters)\n",
				r.Total(), cfg.Schema, r.Incoming, r.Outgoing, r.DeadLetters)
			return nil
		})
	},
}
