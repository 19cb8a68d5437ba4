package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/sqlserver"
)

var schemaGroup = group{
	name:    "schema",
	summary: "print, create or check the tables (script, migrate, verify)",
	description: "The layout is Jasper 2.0's three tables plus additive extension columns and indexes " +
		"(and, on SQL Server, Jasper's EnvelopeIdList type and five stored procedures). " +
		"migrate never drops, rewrites or deletes anything, so it is safe on a database that Jasper created.",
	examples: []string{
		"schema script --dialect sqlserver --schema messaging > schema.sql",
		"schema migrate --dsn postgres://app@db.internal:5432/app --schema messaging",
		"schema verify --jasper-only",
	},
	subs: []spec{
		schemaScript,
		schemaMigrate,
		schemaVerify,
	},
}

var schemaScript = spec{
	name:    "schema script",
	summary: "print the DDL that creates the tables, without connecting",
	description: "Every statement is idempotent, so the script can be applied to a database Jasper created. " +
		"SQL Server batches are separated by GO lines (sqlcmd). The dialect is --dialect, else the scheme of --dsn.",
	examples: []string{
		"schema script --dialect postgres --schema messaging | psql \"$DATABASE_URL\"",
		"schema script --dialect sqlserver > schema.sql",
	},
	setup: func(fs *pflag.FlagSet) runFunc {
		db := newDBFlags(fs)
		var dialect stringFlag
		fs.Var(&dialect, "dialect", "`DIALECT` of the script: postgres or sqlserver (default: from the scheme of --dsn)")
		return func(ctx context.Context, e *env, _ []string) error {
			var d database.Dialect
			var err error
			if dialect.set {
				if d, err = database.ParseDialect(dialect.value); err != nil {
					return usageErrorf("invalid --dialect %q: want postgres or sqlserver", dialect.value)
				}
			} else if d, err = db.dialect(); err != nil {
				return err
			}
			cfg, err := db.config(d)
			if err != nil {
				return err
			}
			script, err := scriptOf(cfg)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(e.stdout, script)
			return err
		}
	},
}

// scriptOf returns the DDL of cfg's dialect: sqlserver.Script for SQL Server, schema.Script
// for PostgreSQL.
func scriptOf(cfg schema.Config) (string, error) {
	if cfg.Dialect == database.SQLServer {
		return sqlserver.Script(cfg)
	}
	return schema.Script(cfg)
}

var schemaMigrate = spec{
	name:    "schema migrate",
	summary: "create whatever is missing of the tables, columns, indexes and procedures",
	description: "Idempotent and safe to run from many processes at once (runs on one schema are serialised " +
		"by a lock, all DDL runs in one transaction). It never changes an existing column or touches rows. It adds " +
		"Jasper's columns a table lacks when they are nullable or have a default, and refuses, naming them, the " +
		"NOT NULL ones it cannot add; other differences it cannot fix are printed, one per line, and the exit status is 1.",
	examples: []string{
		"schema migrate --dsn postgres://app@db.internal:5432/app --schema messaging",
		"schema migrate --dsn 'sqlserver://app@sql.internal:1433?database=app'",
	},
	setup: onDB(func(ctx context.Context, e *env, drv database.Driver, cfg schema.Config) error {
		before, err := schema.Verify(ctx, drv, cfg, schema.VerifyOptions{})
		if err != nil {
			return err
		}
		if err := schema.Migrate(ctx, drv, cfg); err != nil {
			return err
		}
		after, err := schema.Verify(ctx, drv, cfg, schema.VerifyOptions{})
		if err != nil {
			return err
		}
		remaining := map[string]bool{}
		for _, d := range after {
			remaining[d.String()] = true
		}
		var fixed []schema.Difference
		for _, d := range before {
			if !remaining[d.String()] {
				fixed = append(fixed, d)
			}
		}
		switch {
		case len(fixed) > 0:
			fmt.Fprintf(e.stdout, "schema %s (%s) migrated: %s\n", cfg.Schema, dialectName(cfg.Dialect), describeAdded(fixed))
		case len(after) == 0:
			fmt.Fprintf(e.stdout, "schema %s (%s) is up to date: nothing to do\n", cfg.Schema, dialectName(cfg.Dialect))
		}
		for _, d := range after {
			fmt.Fprintln(e.stdout, d)
		}
		if len(after) > 0 {
			return fmt.Errorf("schema %s: %d difference(s) remain that migrate does not fix (listed on stdout): it adds missing tables, columns that can be added without touching rows, and indexes, but never alters a column", cfg.Schema, len(after))
		}
		return nil
	}),
}

var schemaVerify = spec{
	name:    "schema verify",
	summary: "compare the tables with the expected layout",
	description: "Exit status 0 when the schema matches; otherwise every difference is printed on stdout, one per line, " +
		"and the exit status is 1. Columns the layout does not know are ignored.",
	examples: []string{
		"schema verify --schema messaging",
		"schema verify --jasper-only --dsn 'sqlserver://app@sql.internal:1433?database=app'",
	},
	setup: func(fs *pflag.FlagSet) runFunc {
		var opts schema.VerifyOptions
		fs.BoolVar(&opts.JasperOnly, "jasper-only", false, "check only Jasper 2.0's own layout and ignore missing watermill-jasper extensions")
		db := newDBFlags(fs)
		return db.run(nil, func(ctx context.Context, e *env, drv database.Driver, cfg schema.Config) error {
			diffs, err := schema.Verify(ctx, drv, cfg, opts)
			if err != nil {
				return err
			}
			layout := "the watermill-jasper layout (Jasper 2.0 with extensions)"
			if opts.JasperOnly {
				layout = "Jasper 2.0's layout (extensions not checked)"
			}
			if len(diffs) == 0 {
				fmt.Fprintf(e.stdout, "schema %s matches %s on %s\n", cfg.Schema, layout, dialectName(cfg.Dialect))
				return nil
			}
			for _, d := range diffs {
				fmt.Fprintln(e.stdout, d)
			}
			hint := fmt.Sprintf("`%s schema migrate` adds them", program)
			for _, d := range diffs {
				if !migrateFixes(cfg, d) {
					hint = fmt.Sprintf("`%s schema migrate` adds missing tables, extensions and Jasper's nullable or defaulted columns, "+
						"and names the NOT NULL ones it cannot add; it never alters a column: fix the others by hand", program)
					break
				}
			}
			return fmt.Errorf("schema %s differs from %s in %d place(s) (listed on stdout); %s", cfg.Schema, layout, len(diffs), hint)
		})
	},
}

// migrateFixes reports whether schema migrate adds what d says is missing in cfg's layout: a
// table, a type or procedure, an extension, or a column of Jasper's that can be added to
// existing rows (nullable or with a default). It refuses the NOT NULL ones and never alters a
// column.
func migrateFixes(cfg schema.Config, d schema.Difference) bool {
	switch {
	case d.Extension, d.Kind == schema.MissingTable, d.Kind == schema.MissingObject:
		return true
	case d.Kind == schema.MissingColumn:
		for _, t := range cfg.Tables() {
			if c, ok := t.Column(d.Column); ok && t.Name == d.Table {
				return c.Addable()
			}
		}
	}
	return false
}

// describeAdded summarises the differences migrate fixed, e.g. "added 3 tables, 1 column".
func describeAdded(diffs []schema.Difference) string {
	counts := map[schema.DifferenceKind]int{}
	for _, d := range diffs {
		counts[d.Kind]++
	}
	var parts []string
	for _, k := range []struct {
		kind       schema.DifferenceKind
		one, other string
	}{
		{schema.MissingTable, "table", "tables"},
		{schema.MissingColumn, "column", "columns"},
		{schema.MissingIndex, "index", "indexes"},
		{schema.MissingPrimaryKey, "primary key", "primary keys"},
		{schema.MissingObject, "type or procedure", "types and procedures"},
	} {
		if n := counts[k.kind]; n > 0 {
			noun := k.other
			if n == 1 {
				noun = k.one
			}
			parts = append(parts, fmt.Sprintf("%d %s", n, noun))
		}
	}
	if len(parts) == 0 {
		return "nothing was missing"
	}
	return "created " + strings.Join(parts, ", ")
}

func dialectName(d database.Dialect) string {
	if d == database.SQLServer {
		return "SQL Server"
	}
	return "PostgreSQL"
}
