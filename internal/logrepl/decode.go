package logrepl

import (
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/watermill-jasper/watermill-jasper/internal/row"
)

// Tx is one committed transaction's inserts into the outbox table, in insert order.
type Tx struct {
	// Xid is the transaction id.
	Xid uint32
	// CommitLSN is the position of the transaction's commit record; EndLSN is the position
	// just past it. Confirm EndLSN (Reader.Confirm) once every row of the transaction is
	// done with: the slot then never sends this transaction again.
	CommitLSN, EndLSN LSN
	// CommitTime is when the transaction committed (the server's clock).
	CommitTime time.Time
	// Rows are the inserted rows, in the order the transaction inserted them.
	Rows []Row
	// Emitted are the outgoing envelopes the transaction wrote without a row (the table-less
	// outbox: transactional logical decoding messages with Config.MessagePrefix, decoded by
	// row.DecodeEmitted), in the order it wrote them. Their ID is the envelope id; WrittenAt
	// is the commit time.
	Emitted []Row
}

// Size is how many envelopes tx brings: rows and emitted.
func (tx *Tx) Size() int { return len(tx.Rows) + len(tx.Emitted) }

// Row is one row inserted into jasper_outgoing_envelopes, decoded by column name from the
// pgoutput Relation message (never by position), with the commit of its transaction.
type Row struct {
	// Envelope holds the columns of Jasper's layout and this library's extensions: id,
	// owner_id, destination, deliver_by, body, attempts, the metadata columns
	// (conversation_id, correlation_id, parent_id, saga_id, message_type, content_type,
	// reply_requested, ack_requested, reply_uri) and message_uuid, headers. Status and
	// ExecutionTime (incoming columns) stay zero.
	row.Envelope
	// Seq is the extension column seq (the order rows were written in); 0 when absent.
	Seq int64
	// Other are the columns this package does not know (added by someone else), decoded
	// by their type (pgx's pgtype; the raw binary value when the type is unknown); nil when
	// none.
	Other map[string]any
	// Err says why a column could not be decoded; the other columns are still set. A row
	// with an error is still a committed row: the caller decides (e.g. leaves it to the
	// polling relay, which reads it with SQL).
	Err error
	// CommitLSN, EndLSN and CommitTime are those of the row's transaction (Tx).
	CommitLSN, EndLSN LSN
	CommitTime        time.Time
}

// relation is a table of a Relation message.
type relation struct {
	namespace, name string
	columns         []*pglogrepl.RelationMessageColumn
	outbox          bool
}

// decoder turns pgoutput tuples of the outbox table into rows.
type decoder struct {
	types *pgtype.Map
}

func newDecoder() *decoder { return &decoder{types: pgtype.NewMap()} }

// decodeRow decodes one inserted tuple of the outbox table.
func (d *decoder) decodeRow(rel *relation, tuple *pglogrepl.TupleData) Row {
	var r Row
	if tuple == nil {
		r.Err = fmt.Errorf("logrepl: insert into %s.%s without a tuple", rel.namespace, rel.name)
		return r
	}
	if len(tuple.Columns) != len(rel.columns) {
		r.Err = fmt.Errorf("logrepl: insert into %s.%s has %d columns, its relation %d", rel.namespace, rel.name, len(tuple.Columns), len(rel.columns))
		return r
	}
	seen := map[string]bool{}
	for i, c := range rel.columns {
		v, err := d.value(c, tuple.Columns[i])
		if err == nil {
			err = r.set(c.Name, v)
		}
		if err != nil && r.Err == nil {
			r.Err = fmt.Errorf("logrepl: column %s of %s.%s: %w", c.Name, rel.namespace, rel.name, err)
		}
		seen[c.Name] = true
	}
	for _, name := range []string{"id", "destination", "body", "message_type"} {
		if !seen[name] && r.Err == nil {
			r.Err = fmt.Errorf("logrepl: %s.%s has no column %s", rel.namespace, rel.name, name)
		}
	}
	if r.Body == nil && seen["body"] {
		r.Body = []byte{}
	}
	return r
}

// value decodes one column value: nil for NULL.
func (d *decoder) value(c *pglogrepl.RelationMessageColumn, t *pglogrepl.TupleDataColumn) (any, error) {
	var format int16
	switch t.DataType {
	case pglogrepl.TupleDataTypeNull:
		return nil, nil
	case pglogrepl.TupleDataTypeToast:
		return nil, fmt.Errorf("unchanged TOASTed value (not sent)")
	case pglogrepl.TupleDataTypeBinary:
		format = pgtype.BinaryFormatCode
	case pglogrepl.TupleDataTypeText:
		format = pgtype.TextFormatCode
	default:
		return nil, fmt.Errorf("unknown tuple data type %q", t.DataType)
	}
	typ, ok := d.types.TypeForOID(c.DataType)
	if !ok {
		if format == pgtype.TextFormatCode {
			return string(t.Data), nil
		}
		return append([]byte(nil), t.Data...), nil
	}
	return typ.Codec.DecodeValue(d.types, c.DataType, format, t.Data)
}

// set stores a decoded value into the field of its column: the envelope's columns through
// row.Envelope.SetColumn (the one mapping of columns to envelope fields), seq here, any other
// column in Other.
func (r *Row) set(name string, v any) error {
	if name == "seq" {
		n, err := row.IntValue(v)
		r.Seq = n
		return err
	}
	known, err := r.Envelope.SetColumn(name, v)
	if !known {
		if r.Other == nil {
			r.Other = map[string]any{}
		}
		r.Other[name] = v
	}
	return err
}
