package layout

// Table names, as Jasper (1.x and 2.0) names them.
const (
	IncomingTable   = "jasper_incoming_envelopes"
	OutgoingTable   = "jasper_outgoing_envelopes"
	DeadLetterTable = "jasper_dead_letters"
	EnvelopeIDList  = "EnvelopeIdList" // SQL Server table type for id lists
)

// Incoming envelope statuses. Jasper writes Incoming and Scheduled; Handled is Wolverine's
// status for rows kept by the idempotent inbox until keep_until.
const (
	StatusIncoming  = "Incoming"
	StatusScheduled = "Scheduled"
	StatusHandled   = "Handled"
)

// ColumnType is the logical type of a column; each dialect maps it to its own SQL type.
type ColumnType int

// Column types used by the Jasper tables.
const (
	TypeUUID     ColumnType = iota + 1 // uuid / uniqueidentifier
	TypeString                         // varchar / varchar(N)
	TypeInt                            // integer / int
	TypeTime                           // timestamp with time zone / datetimeoffset
	TypeBytes                          // bytea / varbinary(max)
	TypeBool                           // boolean / bit
	TypeText                           // text / nvarchar(max): extension columns holding arbitrary text
	TypeSequence                       // bigint identity: the order rows were written in
)

// MaxLength marks a SQL Server varchar(max) column.
const MaxLength = -1

// Column describes one column of a table.
type Column struct {
	Name string
	Type ColumnType
	// Size is the SQL Server varchar length (MaxLength for max); PostgreSQL strings are unbounded.
	Size     int
	Nullable bool
	// Default is the column default: "" none, "null", "0", "false" or "now".
	Default string
	// Extension marks a column this library adds to Jasper's layout. Extensions are always
	// nullable or defaulted, so adding them never touches existing rows.
	Extension bool
}

// Addable reports whether the column can be added to an existing table without touching its
// rows: it is nullable or has a default (every extension column is). Migrations add the
// addable columns a table lacks; a table lacking another column is refused.
func (c Column) Addable() bool { return c.Extension || c.Nullable || c.Default != "" }

// Index describes an index this library adds (Jasper has none besides the primary keys).
type Index struct {
	Name    string
	Table   string
	Columns []string
	// Where is the filter of a partial (PostgreSQL) / filtered (SQL Server) index, written in
	// SQL valid on both, or "".
	Where string
}

// Table describes one of the three tables.
type Table struct {
	Name    string
	Columns []Column
}

// PrimaryKeyName is Weasel's default name for a table's primary key on id.
func (t Table) PrimaryKeyName() string { return "pkey_" + t.Name + "_id" }

// Column returns the named column.
func (t Table) Column(name string) (Column, bool) {
	for _, c := range t.Columns {
		if c.Name == name {
			return c, true
		}
	}
	return Column{}, false
}

func col(name string, t ColumnType, size int, nullable bool) Column {
	return Column{Name: name, Type: t, Size: size, Nullable: nullable}
}

func withDefault(c Column, def string) Column { c.Default = def; return c }

func ext(c Column) Column { c.Extension = true; return c }

// The Jasper 2.0 layout (docs/tables.md), then this library's extensions, in one place.
// Extension columns:
//   - message_uuid: the Watermill message UUID verbatim (the row id is derived from it);
//   - headers: every metadata pair as a JSON object, so a message round-trips exactly;
//   - timestamp: when the row was written (Wolverine's name), for age gauges and purges;
//   - partition_key (outgoing, incoming): the message's partition key (metadata
//     "partition-key", Wolverine's header): rows of one key are relayed and delivered one at
//     a time, in the order they were written (docs/ordering.md);
//   - seq (outgoing, incoming): an identity, the order rows were written in;
//   - keep_until (incoming): how long a Handled inbox row is kept (Wolverine's name);
//   - replayable (dead letters): marked for replay (Wolverine's name).
var (
	outgoingTable = Table{Name: OutgoingTable, Columns: concat(
		[]Column{
			col("id", TypeUUID, 0, false),
			col("owner_id", TypeInt, 0, false),
			col("destination", TypeString, 250, false),
			col("deliver_by", TypeTime, 0, true),
			col("body", TypeBytes, 0, false),
			withDefault(col("attempts", TypeInt, 0, true), "0"),
		},
		metadataColumns(250),
		extensionColumns(),
		orderingColumns(),
	)}

	incomingTable = Table{Name: IncomingTable, Columns: concat(
		[]Column{
			col("id", TypeUUID, 0, false),
			col("status", TypeString, 25, false),
			col("owner_id", TypeInt, 0, false),
			withDefault(col("execution_time", TypeTime, 0, true), "null"),
			withDefault(col("attempts", TypeInt, 0, true), "0"),
			col("body", TypeBytes, 0, false),
		},
		metadataColumns(250),
		[]Column{col("received_at", TypeString, 100, true)},
		extensionColumns(),
		[]Column{ext(col("keep_until", TypeTime, 0, true))},
		orderingColumns(),
	)}

	deadLetterTable = Table{Name: DeadLetterTable, Columns: concat(
		[]Column{
			col("id", TypeUUID, 0, false),
			withDefault(col("execution_time", TypeTime, 0, true), "null"),
			withDefault(col("attempts", TypeInt, 0, true), "0"),
			col("body", TypeBytes, 0, false),
		},
		metadataColumns(100),
		[]Column{
			col("received_at", TypeString, 100, true),
			col("source", TypeString, 250, true),
			col("explanation", TypeString, MaxLength, true),
			col("exception_text", TypeString, MaxLength, true),
			col("exception_type", TypeString, MaxLength, true),
			col("exception_message", TypeString, MaxLength, true),
		},
		extensionColumns(),
		[]Column{ext(withDefault(col("replayable", TypeBool, 0, true), "false"))},
	)}

	extensionIndexes = []Index{
		{Name: "idx_jasper_outgoing_envelopes_owner", Table: OutgoingTable, Columns: []string{"owner_id"}},
		{Name: "idx_jasper_outgoing_envelopes_deliver_by", Table: OutgoingTable, Columns: []string{"deliver_by"}, Where: "deliver_by IS NOT NULL"},
		{Name: "idx_jasper_incoming_envelopes_owner", Table: IncomingTable, Columns: []string{"owner_id"}, Where: "owner_id <> 0"},
		{Name: "idx_jasper_incoming_envelopes_queue", Table: IncomingTable, Columns: []string{"received_at", "status", "owner_id"}},
		{Name: "idx_jasper_incoming_envelopes_scheduled", Table: IncomingTable, Columns: []string{"execution_time"}, Where: "status = 'Scheduled'"},
		{Name: "idx_jasper_incoming_envelopes_keep_until", Table: IncomingTable, Columns: []string{"keep_until"}, Where: "keep_until IS NOT NULL"},
		{Name: "idx_jasper_outgoing_envelopes_partition", Table: OutgoingTable, Columns: []string{"partition_key", "seq"}, Where: "partition_key IS NOT NULL"},
		{Name: "idx_jasper_incoming_envelopes_partition", Table: IncomingTable, Columns: []string{"partition_key", "seq"}, Where: "partition_key IS NOT NULL"},
	}
)

// metadataColumns are the envelope metadata columns every table has, in Jasper's order;
// typeSize is the SQL Server size of message_type and reply_requested (250 in the envelope
// tables, 100 in the dead letters).
func metadataColumns(typeSize int) []Column {
	return []Column{
		col("conversation_id", TypeUUID, 0, true),
		col("correlation_id", TypeString, 100, true),
		col("parent_id", TypeString, 100, true),
		col("saga_id", TypeString, 100, true),
		col("message_type", TypeString, typeSize, false),
		col("content_type", TypeString, 100, true),
		col("reply_requested", TypeString, typeSize, true),
		col("ack_requested", TypeBool, 0, true),
		col("reply_uri", TypeString, 100, true),
	}
}

// extensionColumns are this library's extension columns every table has.
func extensionColumns() []Column {
	return []Column{
		ext(col("message_uuid", TypeText, 0, true)),
		ext(col("headers", TypeText, 0, true)),
		ext(withDefault(col("timestamp", TypeTime, 0, true), "now")),
	}
}

// orderingColumns are the extension columns of per-key ordering, in the envelope tables.
func orderingColumns() []Column {
	return []Column{ext(col("partition_key", TypeString, 250, true)), ext(col("seq", TypeSequence, 0, false))}
}

func concat(groups ...[]Column) []Column {
	var out []Column
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

// Tables returns the three tables in Jasper's creation order: outgoing, incoming, dead letters.
func Tables() []Table { return []Table{outgoingTable, incomingTable, deadLetterTable} }

// Indexes returns the extension indexes.
func Indexes() []Index { return append([]Index(nil), extensionIndexes...) }

// StoredProcedures returns the names of Jasper's five SQL Server procedures, in creation order.
func StoredProcedures() []string {
	return []string{
		"uspDeleteIncomingEnvelopes",
		"uspDeleteOutgoingEnvelopes",
		"uspDiscardAndReassignOutgoing",
		"uspMarkIncomingOwnership",
		"uspMarkOutgoingOwnership",
	}
}
