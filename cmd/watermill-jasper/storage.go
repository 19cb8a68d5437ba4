package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

func storageCommand() command {
	return group{
		name:    "storage",
		summary: "count, release or delete the stored envelopes (counts, release, clear)",
		description: "Unlike Jasper's storage command, counts and release never rebuild the schema or delete rows; " +
			"only clear deletes, and it asks first.",
		subs: []spec{storageCounts, storageRelease, storageClear},
		examples: []string{
			"storage counts --schema messaging",
			"storage release --dsn 'sqlserver://app@sql.internal:1433?database=app'",
			"storage clear --schema messaging --yes",
		},
	}.command()
}

var storageCounts = spec{
	name:    "storage counts",
	summary: "print how many envelopes the tables hold",
	description: "Incoming envelopes by status, outgoing envelopes by destination, dead letters, and the incoming " +
		"and outgoing rows each node (owner_id) holds; owner 0 means no node holds them. Each node is shown alive " +
		"(a session holds its lock) or dormant (none does: a durability agent hands its rows back).",
	examples: []string{"storage counts --dsn postgres://app@db.internal:5432/app --schema messaging"},
	setup: func(fs *flag.FlagSet) runFunc {
		var db dbFlags
		db.register(fs)
		return func(ctx context.Context, e *env, _ []string) error {
			drv, cfg, closeDB, err := db.open(ctx)
			if err != nil {
				return err
			}
			defer closeDB()
			c, err := admin.Counts(ctx, drv, cfg)
			if err != nil {
				return err
			}
			if err := printCounts(e.stdout, cfg, c); err != nil {
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
			return printNodes(e.stdout, ids, live)
		}
	},
}

// printNodes lists the nodes (owner_id other than 0) holding rows and whether each is alive.
func printNodes(w io.Writer, ids []int32, live map[int32]admin.Liveness) error {
	fmt.Fprintln(w, "\nNodes holding envelopes (alive: a session holds the node lock; dormant: none does, and a durability agent hands its envelopes back)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tSTATE")
	n := 0
	for _, id := range ids {
		if id == admin.AnyNode {
			continue
		}
		fmt.Fprintf(tw, "  %d\t%s\n", id, live[id])
		n++
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if n == 0 {
		_, err := fmt.Fprintln(w, "  (none)")
		return err
	}
	return nil
}

// knownStatuses are always listed by storage counts, even when no row has them.
var knownStatuses = []string{schema.StatusIncoming, schema.StatusScheduled, schema.StatusHandled}

func printCounts(w io.Writer, cfg schema.Config, c admin.RowCounts) error {
	fmt.Fprintf(w, "Schema %s (%s)\n", cfg.Schema, dialectName(cfg.Dialect))

	fmt.Fprintf(w, "\nIncoming envelopes (%s)\n", schema.IncomingTable)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  STATUS\tROWS")
	for _, s := range knownStatuses {
		fmt.Fprintf(tw, "  %s\t%d\n", s, c.IncomingStatus(s))
	}
	for _, s := range c.Incoming {
		if !contains(knownStatuses, s.Status) {
			fmt.Fprintf(tw, "  %s\t%d\n", s.Status, s.Rows)
		}
	}
	fmt.Fprintf(tw, "  total\t%d\n", c.IncomingTotal())
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintf(w, "\nOutgoing envelopes (%s)\n", schema.OutgoingTable)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  DESTINATION\tROWS")
	for _, d := range c.Outgoing {
		fmt.Fprintf(tw, "  %s\t%d\n", d.Destination, d.Rows)
	}
	fmt.Fprintf(tw, "  total\t%d\n", c.OutgoingTotal())
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintf(w, "\nDead letters (%s)\n", schema.DeadLetterTable)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ROWS")
	fmt.Fprintf(tw, "  %d\n", c.DeadLetters)
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nOwners (owner_id; 0 = any node)")
	if len(c.Owners) == 0 {
		_, err := fmt.Fprintln(w, "  (no rows)")
		return err
	}
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  OWNER\tINCOMING\tOUTGOING")
	for _, o := range c.Owners {
		fmt.Fprintf(tw, "  %d\t%d\t%d\n", o.OwnerID, o.Incoming, o.Outgoing)
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
	examples: []string{"storage release --schema messaging"},
	setup: func(fs *flag.FlagSet) runFunc {
		var db dbFlags
		db.register(fs)
		return func(ctx context.Context, e *env, _ []string) error {
			drv, cfg, closeDB, err := db.open(ctx)
			if err != nil {
				return err
			}
			defer closeDB()
			in, out, err := admin.ReleaseOwnership(ctx, drv, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "released %d rows in schema %s (%d incoming, %d outgoing): any node may now claim them\n", in+out, cfg.Schema, in, out)
			return nil
		}
	},
}

var storageClear = spec{
	name:    "storage clear",
	summary: "delete every stored envelope and dead letter",
	description: "Deletes all rows of the three tables in one transaction (DELETE; the tables themselves are kept). " +
		"It asks for confirmation on stdin first: only y or yes goes on, anything else (including no answer) " +
		"aborts with exit status 1.",
	examples: []string{"storage clear --schema messaging", "storage clear --schema messaging --yes"},
	setup: func(fs *flag.FlagSet) runFunc {
		var db dbFlags
		db.register(fs)
		yes := fs.Bool("yes", false, "delete without asking for confirmation")
		return func(ctx context.Context, e *env, _ []string) error {
			drv, cfg, closeDB, err := db.open(ctx)
			if err != nil {
				return err
			}
			defer closeDB()
			if !*yes {
				c, err := admin.Counts(ctx, drv, cfg)
				if err != nil {
					return err
				}
				if c.Total() == 0 {
					fmt.Fprintf(e.stdout, "schema %s holds no rows: nothing to delete\n", cfg.Schema)
					return nil
				}
				fmt.Fprintf(e.stdout, "Delete all %d rows (%d incoming, %d outgoing, %d dead letters) in schema %s? [y/N] ",
					c.Total(), c.IncomingTotal(), c.OutgoingTotal(), c.DeadLetters, cfg.Schema)
				ok, err := confirmed(e.stdin)
				if !isTerminal(e.stdin) {
					fmt.Fprintln(e.stdout) // the answer was not echoed: end the prompt's line
				}
				if err != nil {
					return fmt.Errorf("read the answer: %w", err)
				}
				if !ok {
					return errors.New("aborted: nothing deleted (answer y to delete, or pass --yes)")
				}
			}
			r, err := admin.Clear(ctx, drv, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "deleted %d rows from schema %s (%d incoming, %d outgoing, %d dead letters)\n",
				r.Total(), cfg.Schema, r.Incoming, r.Outgoing, r.DeadLetters)
			return nil
		}
	},
}

// isTerminal reports whether r is a terminal (a character device).
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// confirmed reads one line and reports whether it is y or yes (any case).
func confirmed(in io.Reader) (bool, error) {
	if in == nil {
		return false, nil
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	return false, nil
}
