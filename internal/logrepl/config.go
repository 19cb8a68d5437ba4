package logrepl

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
)

// LSN is a position in the write-ahead log (pglogrepl's).
type LSN = pglogrepl.LSN

// Config names the outbox table, the publication and the slot.
type Config struct {
	// Schema holding jasper_outgoing_envelopes. Default "public". Folded to lower case, as
	// PostgreSQL folds an unquoted identifier (layout.Config does the same).
	Schema string
	// Publication is the publication FOR TABLE <schema>.jasper_outgoing_envelopes WITH
	// (publish = 'insert'). Default "wj_outbox_<schema>". Letters, digits and underscores,
	// not starting with a digit, at most 63 bytes; quoted in SQL, so case is kept.
	Publication string
	// Slot is the logical replication slot (plugin pgoutput). Default "wj_outbox_<schema>".
	// Lower-case letters, digits and underscores, at most 63 bytes (PostgreSQL's rule for
	// slot names). A slot name is unique in the whole cluster, not per database.
	Slot string
	// StatusInterval is how often the reader sends a standby status update (its confirmed
	// position) when nothing else makes it send one. Default 10s; it must stay well under
	// the server's wal_sender_timeout (60s by default).
	StatusInterval time.Duration
}

// DefaultStatusInterval is Config.StatusInterval's default.
const DefaultStatusInterval = 10 * time.Second

var (
	identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	slotRE  = regexp.MustCompile(`^[a-z0-9_]+$`)
)

// Normalized returns the config with the defaults applied (schema folded to lower case), or
// an error wrapping ErrInvalidConfig naming what to fix.
func (c Config) Normalized() (Config, error) {
	if c.Schema == "" {
		c.Schema = layout.DefaultSchema(layout.Postgres)
	}
	if err := layout.ValidateIdentifier(c.Schema); err != nil {
		return c, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	c.Schema = strings.ToLower(c.Schema)
	def := "wj_outbox_" + c.Schema
	if c.Publication == "" {
		c.Publication = def
	}
	if c.Slot == "" {
		c.Slot = def
	}
	if err := validateName("publication", c.Publication, identRE, "letters, digits and underscores, not starting with a digit"); err != nil {
		return c, err
	}
	if err := validateName("slot", c.Slot, slotRE, "lower-case letters, digits and underscores"); err != nil {
		return c, err
	}
	switch {
	case c.StatusInterval == 0:
		c.StatusInterval = DefaultStatusInterval
	case c.StatusInterval < 0:
		return c, fmt.Errorf("%w: StatusInterval is negative (%s)", ErrInvalidConfig, c.StatusInterval)
	}
	return c, nil
}

func validateName(what, name string, re *regexp.Regexp, rule string) error {
	switch {
	case len(name) > layout.MaxIdentifierLength:
		return fmt.Errorf("%w: %s name %q is %d bytes long, the limit is %d: set a shorter name", ErrInvalidConfig, what, name, len(name), layout.MaxIdentifierLength)
	case !re.MatchString(name):
		return fmt.Errorf("%w: %s name %q may hold only %s", ErrInvalidConfig, what, name, rule)
	}
	return nil
}

// MessagePrefix is the prefix of the logical decoding messages that carry the schema's
// outgoing envelopes without a row, for the reader of the slot (the table-less outbox:
// store.Ops.EmitOutgoing); the reader hands over the transactional messages with this prefix
// (Tx.Emitted). It names the slot, so that only the relay of that slot sends them, when
// several slots follow one outbox.
func (c Config) MessagePrefix() string {
	return "watermill-jasper/outgoing/" + c.Schema + "/" + c.Slot
}

// table is the quoted, qualified outbox table.
func (c Config) table() string {
	return quoteIdent(c.Schema) + "." + quoteIdent(layout.OutgoingTable)
}

// tableName is the unquoted schema.table, for messages.
func (c Config) tableName() string { return c.Schema + "." + layout.OutgoingTable }

// quoteIdent quotes an identifier for SQL.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// quoteLiteral quotes a string literal for SQL (standard_conforming_strings on).
func quoteLiteral(s string) string { return `'` + strings.ReplaceAll(s, `'`, `''`) + `'` }
