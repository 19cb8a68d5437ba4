// Package schema owns the storage layout of watermill-jasper: the three Jasper 2.0 tables
// (jasper_incoming_envelopes, jasper_outgoing_envelopes, jasper_dead_letters), SQL Server's
// EnvelopeIdList table type and stored procedures, and the additive extension columns and
// indexes this library adds. It generates the DDL for PostgreSQL and SQL Server (Script),
// applies it idempotently (Migrate) and compares a live database with it (Verify).
//
// The layout follows Jasper 2.0 exactly, so a database created by Jasper verifies clean
// (apart from missing extensions, which Migrate adds without touching rows) and a database
// created here looks to Jasper like its own.
package schema

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/watermill-jasper/watermill-jasper/database"
)

// Dialect names a supported database (an alias of database.Dialect).
type Dialect = database.Dialect

const (
	// Postgres is PostgreSQL.
	Postgres = database.Postgres
	// SQLServer is Microsoft SQL Server.
	SQLServer = database.SQLServer
)

// ErrInvalidConfig is wrapped by every configuration error of this package.
var ErrInvalidConfig = errors.New("watermill-jasper: invalid schema config")

// MaxIdentifierLength is the longest schema name accepted, in bytes (PostgreSQL's limit).
const MaxIdentifierLength = 63

var identifierRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ValidateIdentifier reports whether name is a plain SQL identifier: letters, digits and
// underscores, not starting with a digit, 1 to 63 bytes. Names that fail are never spliced
// into SQL.
func ValidateIdentifier(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: schema name is empty", ErrInvalidConfig)
	case len(name) > MaxIdentifierLength:
		return fmt.Errorf("%w: schema name is %d bytes long, the limit is %d", ErrInvalidConfig, len(name), MaxIdentifierLength)
	case !identifierRE.MatchString(name):
		return fmt.Errorf("%w: schema name %q may hold only letters, digits and underscores and must not start with a digit", ErrInvalidConfig, name)
	}
	return nil
}

// DefaultSchema returns Jasper's default schema for a dialect: public on PostgreSQL, dbo on SQL Server.
func DefaultSchema(d Dialect) string {
	if d == SQLServer {
		return "dbo"
	}
	return "public"
}

// Config names where the tables live.
type Config struct {
	// Dialect of the database. Default: Postgres.
	Dialect Dialect
	// Schema holding the tables. Default: Jasper's, "public" on PostgreSQL and "dbo" on SQL Server.
	// Jasper writes the schema unquoted, so PostgreSQL folds it to lower case; this library does
	// the same (Name returns the folded form).
	Schema string
}

func (c *Config) setDefaults() {
	if c.Dialect == "" {
		c.Dialect = Postgres
	}
	if c.Schema == "" {
		c.Schema = DefaultSchema(c.Dialect)
	}
}

// Validate checks the config, after defaults are applied.
func (c Config) Validate() error {
	c.setDefaults()
	if err := c.Dialect.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return ValidateIdentifier(c.Schema)
}

// Normalized returns the config with defaults applied and the schema name folded as the
// database folds an unquoted identifier, or an error naming what to fix.
func (c Config) Normalized() (Config, error) {
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return c, err
	}
	if c.Dialect == Postgres {
		c.Schema = strings.ToLower(c.Schema)
	}
	return c, nil
}

// Qualified returns the quoted, schema-qualified name of a table or object of this schema,
// e.g. "public"."jasper_outgoing_envelopes" or [dbo].[jasper_outgoing_envelopes]. The config
// must be normalized; object must be one of this package's constant names.
func (c Config) Qualified(object string) string {
	return c.QuoteIdent(c.Schema) + "." + c.QuoteIdent(object)
}

// QuoteIdent quotes a validated identifier for the dialect.
func (c Config) QuoteIdent(name string) string {
	if c.Dialect == SQLServer {
		return "[" + name + "]"
	}
	return `"` + name + `"`
}
