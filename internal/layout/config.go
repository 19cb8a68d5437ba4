// Package layout describes where and how the Jasper tables live: the schema config (dialect,
// validated schema name, quoting) and the tables, columns, indexes and statuses of Jasper 2.0
// plus this library's additive extensions. It holds no SQL; the drivers under internal/store
// turn it into statements. The public package schema re-exports it.
package layout

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
)

// Dialect names a supported database (an alias of dbx.Dialect).
type Dialect = dbx.Dialect

const (
	// Postgres is PostgreSQL.
	Postgres = dbx.Postgres
	// SQLServer is Microsoft SQL Server.
	SQLServer = dbx.SQLServer
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
	// Dialect of the dbx. Default: Postgres.
	Dialect Dialect
	// Schema holding the tables. Default: Jasper's, "public" on PostgreSQL and "dbo" on SQL Server.
	// Jasper writes the schema unquoted, so PostgreSQL folds it to lower case; this library does
	// the same (Name returns the folded form).
	Schema string
	// Compatibility says who else uses the schema: Standalone (default) or Jasper2, when
	// .NET Jasper 2.0 nodes share it (docs/coexistence.md).
	Compatibility Compatibility
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
	if err := c.Compatibility.Validate(); err != nil {
		return err
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
