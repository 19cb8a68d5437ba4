package logrepl

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
)

// minServerVersion is PostgreSQL 14: pgoutput's binary option.
const minServerVersion = 140000

// query runs one simple-protocol statement (the only protocol a replication connection
// speaks) and returns its rows as text; a NULL is nil.
func query(ctx context.Context, conn *pgconn.PgConn, sql string) ([][][]byte, error) {
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	var rows [][][]byte
	for _, r := range results {
		if r.Err != nil {
			return nil, r.Err
		}
		rows = append(rows, r.Rows...)
	}
	return rows, nil
}

// server is what the preflight reads of the server, the role, the table, the publication
// and the slot.
type server struct {
	version     int
	walLevel    string
	role        string
	replication bool // REPLICATION or SUPERUSER
	database    string
	table       bool
	pubExists   bool
	pubInsert   bool // publishes inserts
	pubHasTable bool // the outbox table is in it (or it is FOR ALL TABLES)
	slot        *slotRow
}

type slotRow struct {
	plugin, slotType, database, walStatus string
	active                                bool
	activePID                             int64
	confirmed                             LSN
}

// inspect reads the server's state for cfg in one statement.
func inspect(ctx context.Context, conn *pgconn.PgConn, cfg Config) (server, error) {
	var s server
	walStatus := "NULL::text"
	rows, err := query(ctx, conn, "SELECT current_setting('server_version_num')")
	if err != nil {
		return s, fmt.Errorf("logrepl: read the server version: %w", err)
	}
	if len(rows) == 1 {
		s.version, _ = strconv.Atoi(string(rows[0][0]))
	}
	if s.version >= 130000 {
		walStatus = "wal_status"
	}
	slot, pub := quoteLiteral(cfg.Slot), quoteLiteral(cfg.Publication)
	sql := `SELECT current_setting('wal_level'), current_user,
		(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
		current_database(),
		EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = ` + quoteLiteral(cfg.Schema) + ` AND c.relname = ` + quoteLiteral(layout.OutgoingTable) + ` AND c.relkind IN ('r', 'p')),
		p.pubname IS NOT NULL, coalesce(p.pubinsert, false),
		coalesce(p.puballtables, false) OR EXISTS (SELECT 1 FROM pg_publication_tables t
			WHERE t.pubname = ` + pub + ` AND t.schemaname = ` + quoteLiteral(cfg.Schema) + ` AND t.tablename = ` + quoteLiteral(layout.OutgoingTable) + `),
		s.slot_name IS NOT NULL, s.plugin, s.slot_type, s.database, s.active, s.active_pid, s.confirmed_flush_lsn, s.wal_status
		FROM (SELECT 1) one
		LEFT JOIN pg_publication p ON p.pubname = ` + pub + `
		LEFT JOIN (SELECT slot_name, plugin, slot_type, database, active, active_pid, confirmed_flush_lsn, ` + walStatus + ` AS wal_status
			FROM pg_replication_slots WHERE slot_name = ` + slot + `) s ON true`
	rows, err = query(ctx, conn, sql)
	if err != nil {
		return s, fmt.Errorf("logrepl: inspect the server: %w", err)
	}
	if len(rows) != 1 {
		return s, fmt.Errorf("logrepl: inspect the server: %d rows", len(rows))
	}
	r := rows[0]
	s.walLevel, s.role = string(r[0]), string(r[1])
	s.replication = string(r[2]) == "t"
	s.database = string(r[3])
	s.table = string(r[4]) == "t"
	s.pubExists, s.pubInsert, s.pubHasTable = string(r[5]) == "t", string(r[6]) == "t", string(r[7]) == "t"
	if string(r[8]) == "t" {
		sr := &slotRow{plugin: string(r[9]), slotType: string(r[10]), database: string(r[11]), active: string(r[12]) == "t", walStatus: string(r[15])}
		sr.activePID, _ = strconv.ParseInt(string(r[13]), 10, 64)
		if r[14] != nil {
			sr.confirmed, _ = pglogrepl.ParseLSN(string(r[14]))
		}
		s.slot = sr
	}
	return s, nil
}

// checkServer refuses a server the slot reader cannot work with.
func (s server) checkServer() error {
	if s.version < minServerVersion {
		return fmt.Errorf("%w: the server is version %d: upgrade PostgreSQL", ErrServerVersion, s.version)
	}
	if s.walLevel != "logical" {
		return walLevel(s.walLevel)
	}
	if !s.replication {
		return noReplicationRight(s.role)
	}
	return nil
}

func (s server) checkTable(cfg Config) error {
	if !s.table {
		return fmt.Errorf("%w: table %s does not exist in database %s: run the schema migration (watermill-jasper schema migrate) or fix Config.Schema", ErrTableMissing, cfg.tableName(), s.database)
	}
	return nil
}

func (s server) checkPublication(cfg Config) error {
	if !s.pubExists {
		return fmt.Errorf("%w: publication %s does not exist in database %s: create it with Setup (watermill-jasper's slot create)", ErrPublicationMissing, cfg.Publication, s.database)
	}
	if !s.pubInsert || !s.pubHasTable {
		return fmt.Errorf("%w: publication %s does not publish inserts into %s: drop it (Drop) and run Setup, or ALTER PUBLICATION %s ADD TABLE %s / SET (publish = 'insert')",
			ErrPublicationMismatch, cfg.Publication, cfg.tableName(), quoteIdent(cfg.Publication), cfg.table())
	}
	return nil
}

// checkSlot refuses a missing, foreign or invalidated slot; inUse also refuses an active one.
func (s server) checkSlot(cfg Config, inUse bool) error {
	sl := s.slot
	switch {
	case sl == nil:
		return slotMissing(cfg)
	case sl.slotType != "logical" || sl.plugin != "pgoutput" || sl.database != s.database:
		return fmt.Errorf("%w: slot %s is a %s slot of plugin %q on database %q: choose another Config.Slot or drop it",
			ErrSlotMismatch, cfg.Slot, sl.slotType, sl.plugin, sl.database)
	case sl.walStatus == "lost":
		return slotInvalidated(cfg)
	case inUse && sl.active:
		return fmt.Errorf("%w: replication slot %s is active for PID %d (only one reader holds a slot: wait for it to end, e.g. WaitForSlot, or end it with SELECT pg_terminate_backend(%d))",
			ErrSlotInUse, cfg.Slot, sl.activePID, sl.activePID)
	}
	return nil
}

// SetupResult is what Setup created.
type SetupResult struct {
	// Publication and Slot are the normalized names.
	Publication, Slot string
	// CreatedPublication and CreatedSlot are true when Setup created them (false: they
	// existed and were checked).
	CreatedPublication, CreatedSlot bool
	// ConsistentPoint is the LSN from which a new slot streams: transactions that
	// committed before it are not in the slot (the polling relay covers them). 0 when the
	// slot existed.
	ConsistentPoint LSN
}

// Setup creates, when missing, the publication FOR TABLE <schema>.jasper_outgoing_envelopes
// WITH (publish = 'insert') and then the logical replication slot (plugin pgoutput), in that
// order (pgoutput finds a publication only when it existed at the position it decodes). It
// checks what exists: wal_level, the REPLICATION right, the table, a publication that does not
// publish the table's inserts, a slot of another plugin or database, an invalidated slot; each
// refusal wraps a sentinel error. conn is any connection (normal or replication=database):
// only the simple query protocol is used. Creating a slot waits for the transactions running
// at that moment to end.
func Setup(ctx context.Context, conn *pgconn.PgConn, cfg Config) (SetupResult, error) {
	cfg, err := cfg.Normalized()
	if err != nil {
		return SetupResult{}, err
	}
	res := SetupResult{Publication: cfg.Publication, Slot: cfg.Slot}
	s, err := inspect(ctx, conn, cfg)
	if err != nil {
		return res, err
	}
	if err := s.checkServer(); err != nil {
		return res, err
	}
	if err := s.checkTable(cfg); err != nil {
		return res, err
	}
	if !s.pubExists {
		_, err := query(ctx, conn, "CREATE PUBLICATION "+quoteIdent(cfg.Publication)+" FOR TABLE "+cfg.table()+" WITH (publish = 'insert')")
		if pe, ok := pgError(err); ok && pe.Code == codeDuplicateObject {
			err = nil // created meanwhile by another Setup: checked below
		} else if err == nil {
			res.CreatedPublication = true
		}
		if err != nil {
			return res, fmt.Errorf("logrepl: create publication %s: %w", cfg.Publication, err)
		}
		if s, err = inspect(ctx, conn, cfg); err != nil {
			return res, err
		}
	}
	if err := s.checkPublication(cfg); err != nil {
		return res, err
	}
	if s.slot == nil {
		rows, err := query(ctx, conn, "SELECT lsn FROM pg_create_logical_replication_slot("+quoteLiteral(cfg.Slot)+", 'pgoutput')")
		if pe, ok := pgError(err); ok && pe.Code == codeDuplicateObject {
			err = nil
		} else if err == nil {
			res.CreatedSlot = true
			if len(rows) == 1 {
				res.ConsistentPoint, _ = pglogrepl.ParseLSN(string(rows[0][0]))
			}
		}
		if err != nil {
			if pe, ok := pgError(err); ok && strings.Contains(pe.Message, "wal_level") {
				return res, walLevel(s.walLevel)
			}
			return res, fmt.Errorf("logrepl: create replication slot %s: %w", cfg.Slot, err)
		}
		if s, err = inspect(ctx, conn, cfg); err != nil {
			return res, err
		}
	}
	return res, s.checkSlot(cfg, false)
}

// DropResult is what Drop dropped.
type DropResult struct {
	DroppedSlot, DroppedPublication bool
}

// Drop drops the slot (when it exists) and then the publication (when it exists). A slot in
// use by a reader is refused with ErrSlotInUse (the publication is then left too); end the
// reader first. conn is any connection.
func Drop(ctx context.Context, conn *pgconn.PgConn, cfg Config) (DropResult, error) {
	var res DropResult
	cfg, err := cfg.Normalized()
	if err != nil {
		return res, err
	}
	rows, err := query(ctx, conn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = "+quoteLiteral(cfg.Slot))
	if err != nil {
		if pe, ok := pgError(err); ok {
			switch pe.Code {
			case codeObjectInUse:
				return res, fmt.Errorf("%w: %s: stop the reader first (or SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = %s)", ErrSlotInUse, oneLine(pe.Message), quoteLiteral(cfg.Slot))
			case codeInsufficientPriv:
				return res, fmt.Errorf("%w: %s: ALTER ROLE <role> REPLICATION", ErrNoReplicationRight, oneLine(pe.Message))
			}
		}
		return res, fmt.Errorf("logrepl: drop replication slot %s: %w", cfg.Slot, err)
	}
	res.DroppedSlot = len(rows) > 0
	rows, err = query(ctx, conn, "SELECT 1 FROM pg_publication WHERE pubname = "+quoteLiteral(cfg.Publication))
	if err != nil {
		return res, fmt.Errorf("logrepl: drop publication %s: %w", cfg.Publication, err)
	}
	if len(rows) > 0 {
		if _, err := query(ctx, conn, "DROP PUBLICATION IF EXISTS "+quoteIdent(cfg.Publication)); err != nil {
			return res, fmt.Errorf("logrepl: drop publication %s: %w", cfg.Publication, err)
		}
		res.DroppedPublication = true
	}
	return res, nil
}

// Status is what List reports.
type Status struct {
	// ServerVersion is server_version_num (e.g. 150020).
	ServerVersion int
	// WALLevel is the server's wal_level (logical is needed).
	WALLevel string
	// Slots are the logical slots of the current database, by name.
	Slots []SlotInfo
	// Publications are the publications of the current database, by name.
	Publications []PublicationInfo
}

// SlotInfo describes one logical replication slot.
type SlotInfo struct {
	Name, Plugin string
	Temporary    bool
	// Active is true while a reader streams from the slot; ActivePID is its backend's pid
	// (0 when none).
	Active    bool
	ActivePID int64
	// RestartLSN is the oldest WAL the slot retains; ConfirmedFlushLSN is where a reader
	// resumes (everything committed before it was confirmed).
	RestartLSN, ConfirmedFlushLSN LSN
	// LagBytes is pg_current_wal_lsn() - confirmed_flush_lsn: the WAL written since the
	// last confirmation (-1 when unknown, e.g. on a standby).
	LagBytes int64
	// RetainedBytes is pg_current_wal_lsn() - restart_lsn: the WAL the slot keeps on disk
	// (-1 when unknown).
	RetainedBytes int64
	// WALStatus is reserved, extended, unreserved or lost (PostgreSQL 13+; "" before). lost
	// means invalidated: the slot cannot stream any more.
	WALStatus string
	// SafeWALSize is how many more bytes of WAL can be written before the slot risks
	// invalidation (max_slot_wal_keep_size); -1 when unlimited or unknown.
	SafeWALSize int64
}

// PublicationInfo describes one publication.
type PublicationInfo struct {
	Name string
	// AllTables: FOR ALL TABLES.
	AllTables bool
	// Which operations it publishes.
	Insert, Update, Delete, Truncate bool
	// Tables are the published tables, "schema.table", sorted.
	Tables []string
}

// List reports the server's wal_level, the logical slots of the current database with their
// positions and lag, and the publications with their tables. conn is any connection.
func List(ctx context.Context, conn *pgconn.PgConn) (Status, error) {
	var st Status
	rows, err := query(ctx, conn, "SELECT current_setting('server_version_num'), current_setting('wal_level')")
	if err != nil {
		return st, fmt.Errorf("logrepl: list: %w", err)
	}
	st.ServerVersion, _ = strconv.Atoi(string(rows[0][0]))
	st.WALLevel = string(rows[0][1])
	walStatus, safe := "NULL::text", "NULL::bigint"
	if st.ServerVersion >= 130000 {
		walStatus, safe = "wal_status", "safe_wal_size"
	}
	rows, err = query(ctx, conn, `SELECT slot_name, plugin, temporary, active, active_pid, restart_lsn, confirmed_flush_lsn,
		pg_wal_lsn_diff(w.lsn, confirmed_flush_lsn)::bigint, pg_wal_lsn_diff(w.lsn, restart_lsn)::bigint, `+walStatus+`, `+safe+`
		FROM pg_replication_slots,
		LATERAL (SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END AS lsn) w
		WHERE slot_type = 'logical' AND database = current_database() ORDER BY slot_name`)
	if err != nil {
		return st, fmt.Errorf("logrepl: list slots: %w", err)
	}
	for _, r := range rows {
		si := SlotInfo{Name: string(r[0]), Plugin: string(r[1]), Temporary: string(r[2]) == "t", Active: string(r[3]) == "t",
			ActivePID: atoi64(r[4], 0), LagBytes: atoi64(r[7], -1), RetainedBytes: atoi64(r[8], -1), WALStatus: string(r[9]), SafeWALSize: atoi64(r[10], -1)}
		si.RestartLSN, _ = parseLSN(r[5])
		si.ConfirmedFlushLSN, _ = parseLSN(r[6])
		st.Slots = append(st.Slots, si)
	}
	rows, err = query(ctx, conn, `SELECT p.pubname, p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate,
		coalesce((SELECT string_agg(quote_ident(t.schemaname) || '.' || quote_ident(t.tablename), ',' ORDER BY t.schemaname, t.tablename)
			FROM pg_publication_tables t WHERE t.pubname = p.pubname), '')
		FROM pg_publication p ORDER BY p.pubname`)
	if err != nil {
		return st, fmt.Errorf("logrepl: list publications: %w", err)
	}
	for _, r := range rows {
		pi := PublicationInfo{Name: string(r[0]), AllTables: string(r[1]) == "t", Insert: string(r[2]) == "t",
			Update: string(r[3]) == "t", Delete: string(r[4]) == "t", Truncate: string(r[5]) == "t"}
		if t := string(r[6]); t != "" {
			pi.Tables = strings.Split(t, ",")
		}
		st.Publications = append(st.Publications, pi)
	}
	return st, nil
}

func atoi64(b []byte, null int64) int64 {
	if b == nil {
		return null
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return null
	}
	return n
}

func parseLSN(b []byte) (LSN, error) {
	if b == nil {
		return 0, errors.New("NULL")
	}
	return pglogrepl.ParseLSN(string(b))
}
