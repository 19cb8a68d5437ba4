package sqlserver

import (
	"database/sql/driver"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/google/uuid"
	mssql "github.com/microsoft/go-mssqldb"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
	"github.com/watermill-jasper/watermill-jasper/internal/store/storetest"
)

// Offline checks of every SQL Server statement (storetest.Statements: the runtime,
// durability, administration and DDL statements of sqlstore.Dialect). No SQL Server runs
// where the tests run; tsql_parse_test.go (build tag tsqlcheck) also parses them.

// offline returns the dialect of a mixed-case schema (SQL Server keeps its case).
func offline(t *testing.T) sqlstore.Dialect {
	t.Helper()
	cfg, err := layout.Config{Dialect: dbx.SQLServer, Schema: "wj_Offline"}.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	return Dialect(cfg)
}

var msPlaceholder = regexp.MustCompile(`@p(\d+)\b`)

func TestPlaceholdersMatchDocumentedArgs(t *testing.T) {
	storetest.CheckPlaceholders(t, offline(t), msPlaceholder)
}

var (
	msDeclared = regexp.MustCompile(`(?i)DECLARE\s+(@\w+)`)
	msVariable = regexp.MustCompile(`@@?\w+`)
	msNamedArg = regexp.MustCompile(`(@\w+)\s*=`)
)

// Every table, type and procedure is schema-qualified and bracket-quoted; statements hold no
// PostgreSQL syntax, use only @pN placeholders, the variables they declare and named
// procedure arguments, and balance their parentheses, brackets and quotes.
func TestStatementsQualifiedAndQuoted(t *testing.T) {
	d := offline(t)
	storetest.CheckQualified(t, d)
	pgOnly := []string{"$", "::", "ANY(", "now()", "RETURNING", "ON CONFLICT", "FOR UPDATE", "SKIP LOCKED", "interval",
		"pg_", "unnest", "cardinality", "EXCLUDED", "LIMIT ", "FILTER (", "jsonb", `"`}
	for _, st := range storetest.Statements(d) {
		bare := storetest.StripLiterals(st.SQL)
		for _, bad := range pgOnly {
			if strings.Contains(bare, bad) {
				t.Errorf("%s holds PostgreSQL syntax %q:\n%s", st.Name, bad, st.SQL)
			}
		}
		known := map[string]bool{}
		for _, m := range msDeclared.FindAllStringSubmatch(bare, -1) {
			known[strings.ToLower(m[1])] = true
		}
		for _, m := range msNamedArg.FindAllStringSubmatch(bare, -1) {
			known[strings.ToLower(m[1])] = true
		}
		for _, v := range msVariable.FindAllString(bare, -1) {
			if !msPlaceholder.MatchString(v) && !known[strings.ToLower(v)] && !strings.HasPrefix(v, "@@") {
				t.Errorf("%s: undeclared variable %s", st.Name, v)
			}
		}
		if strings.Count(bare, "(") != strings.Count(bare, ")") || strings.Count(bare, "[") != strings.Count(bare, "]") ||
			strings.Count(st.SQL, "'")%2 != 0 {
			t.Errorf("%s: unbalanced parentheses, brackets or quotes:\n%s", st.Name, st.SQL)
		}
	}
}

// Claims and batch cleanups read past locked rows; claims return what they claimed.
func TestClaimsSkipLockedRows(t *testing.T) {
	d := offline(t)
	for name, q := range map[string]string{
		"ClaimOutgoing": d.ClaimOutgoing(), "LockOutgoing": d.LockOutgoing(), "ClaimIncoming": d.ClaimIncoming(),
		"ReleaseDueScheduledSends": d.ReleaseDueScheduledSends(), "ReleaseScheduled": d.ReleaseScheduled(),
		"DeleteExpiredHandled": d.DeleteExpiredHandled(), "DeleteExpiredOutgoing": d.DeleteExpiredOutgoing(),
		"ReleaseOwner": d.ReleaseOwner(), "PurgeDeadLetters": d.Admin().PurgeDeadLetters,
	} {
		if !strings.Contains(q, "WITH (READPAST, UPDLOCK, ROWLOCK)") {
			t.Errorf("%s does not read past locked rows:\n%s", name, q)
		}
	}
	for name, q := range map[string]string{"ClaimOutgoing": d.ClaimOutgoing(), "ClaimIncoming": d.ClaimIncoming()} {
		if !strings.Contains(q, "OUTPUT inserted.[id]") {
			t.Errorf("%s does not return the claimed rows with OUTPUT inserted:\n%s", name, q)
		}
	}
}

// Procedures are called with their declared parameter names, and id lists are the
// EnvelopeIdList table-valued parameter of the schema, which go-mssqldb accepts like every
// other bind value.
func TestProceduresTakeEnvelopeIdList(t *testing.T) {
	d := offline(t)
	cfg := d.Schema()
	script := strings.Join(d.DDLStatements(), "\n")
	exec := regexp.MustCompile(`EXEC (\[\w+\]\.\[(usp\w+)\])((?:\s*,?\s*@\w+\s*=\s*@p\d+)+)`)
	arg := regexp.MustCompile(`(@\w+)\s*=\s*(@p\d+)`)
	calls := 0
	for _, st := range storetest.Statements(d) {
		for _, m := range exec.FindAllStringSubmatch(st.SQL, -1) {
			calls++
			if m[1] != cfg.Qualified(m[2]) {
				t.Errorf("%s: procedure %s not qualified", st.Name, m[1])
			}
			start := strings.Index(script, "CREATE PROCEDURE "+cfg.Qualified(m[2]))
			if start < 0 {
				t.Fatalf("%s: the DDL does not create %s", st.Name, m[2])
			}
			body := script[start:]
			for _, a := range arg.FindAllStringSubmatch(m[3], -1) {
				decl := regexp.MustCompile(`(?i)` + regexp.QuoteMeta(a[1]) + `\s+` + regexp.QuoteMeta(cfg.Qualified(layout.EnvelopeIDList)) + `\s+READONLY`)
				if !decl.MatchString(body[:strings.Index(body, "AS\n")]) {
					t.Errorf("%s: %s is not an EnvelopeIdList parameter of %s", st.Name, a[1], m[2])
				}
			}
		}
	}
	if calls == 0 {
		t.Fatal("no statement calls a Jasper procedure")
	}
	tvp, ok := d.IDList([]uuid.UUID{uuid.New()}).(mssql.TVP)
	if !ok || tvp.TypeName != cfg.Schema+"."+layout.EnvelopeIDList {
		t.Fatalf("IDList = %#v, want an mssql.TVP of %s.%s", d.IDList(nil), cfg.Schema, layout.EnvelopeIDList)
	}
	// go-mssqldb passes a TVP through its parameter check unexamined, so the type name is
	// checked against the rules it applies when it encodes one: schema.name, no quoting.
	if strings.Count(tvp.TypeName, ".") != 1 || strings.ContainsAny(tvp.TypeName, "'\";[]\n") {
		t.Errorf("TVP type name %q", tvp.TypeName)
	}
	if rows, ok := tvp.Value.([]envelopeIDRow); !ok || len(rows) != 1 {
		t.Errorf("TVP rows %#v", tvp.Value)
	}
	var conn mssql.Conn
	values := append([]any{tvp, d.IDList(nil), d.StringList(nil), d.OwnerList([]int32{1, -2}), d.AdvisoryLockKey(-5),
		d.UUIDs().Arg(uuid.New()), d.MigrationLockArg(sqlstore.MigrateLockKey("x"))},
		d.DeadLetterArgs([]uuid.UUID{uuid.New()}, []string{"e"}, []string{"t"}, []string{"m"}, []string{"x"}, []string{"s"})...)
	for _, v := range values {
		if err := conn.CheckNamedValue(&driver.NamedValue{Ordinal: 1, Value: v}); err != nil && err != driver.ErrSkip {
			t.Errorf("go-mssqldb rejects %T: %v", v, err)
		}
	}
}

// The uniqueidentifier codec round-trips through go-mssqldb's wire byte order.
func TestUUIDCodec(t *testing.T) {
	d := offline(t)
	id := uuid.MustParse("0f8fad5b-d9cb-469f-a165-70867728950e")
	wire, err := d.UUIDs().Arg(id).(driver.Valuer).Value()
	if err != nil {
		t.Fatal(err)
	}
	// SQL Server's byte order: the first three groups little-endian.
	want := []byte{0x5b, 0xad, 0x8f, 0x0f, 0xcb, 0xd9, 0x9f, 0x46, 0xa1, 0x65, 0x70, 0x86, 0x77, 0x28, 0x95, 0x0e}
	if fmt.Sprint(wire) != fmt.Sprint(want) {
		t.Fatalf("wire bytes %x, want %x", wire, want)
	}
	scan := func(v any) (uuid.UUID, error) {
		var back uuid.UUID
		err := d.UUIDs().Dest(&back).(interface{ Scan(any) error }).Scan(v)
		return back, err
	}
	if back, err := scan(wire); err != nil || back != id {
		t.Fatalf("scan back = %s, %v; want %s", back, err, id)
	}
	if back, err := scan(nil); err != nil || back != uuid.Nil {
		t.Fatalf("scan NULL = %s, %v", back, err)
	}
}

// Every bracketed identifier of a statement is a column, index, key or object of the
// layout, or one of the few names the statements define themselves: a typo in a name cannot
// wait for a live server.
func TestIdentifiersExist(t *testing.T) {
	d := offline(t)
	known := map[string]bool{d.Schema().Schema: true, layout.EnvelopeIDList: true}
	for _, tb := range layout.Tables() {
		known[tb.Name], known[tb.PrimaryKeyName()] = true, true
		for _, c := range tb.Columns {
			known[c.Name] = true
		}
	}
	for _, ix := range layout.Indexes() {
		known[ix.Name] = true
	}
	for _, p := range layout.StoredProcedures() {
		known[p] = true
	}
	// Names defined by the statements: derived-table, table-variable and OPENJSON columns.
	for _, n := range []string{"wj_rn", "rn", "d", "t", "n", "value", "key", "topic", "compatibility_level", "database_id", "p"} {
		known[n] = true
	}
	ident := regexp.MustCompile(`\[([^\]]+)\]`)
	for _, st := range storetest.Statements(d) {
		for _, m := range ident.FindAllStringSubmatch(storetest.StripLiterals(st.SQL), -1) {
			if !known[m[1]] {
				t.Errorf("%s: unknown identifier [%s]", st.Name, m[1])
			}
		}
	}
}

// A server's error answer (the statement failed, nothing changed) is told from an error
// after which a statement may have run unseen; missing tables and columns by number.
func TestErrorClassification(t *testing.T) {
	storetest.CheckErrorClassification(t, offline(t), []storetest.ErrorCase{
		{Err: fmt.Errorf("claim: %w", mssql.Error{Number: 1205}), Statement: true},
		{Err: fmt.Errorf("claim: %w", mssql.Error{Number: 208}), Statement: true, Table: true},
		{Err: fmt.Errorf("claim: %w", &mssql.Error{Number: 2812}), Statement: true, Table: true},
		{Err: mssql.Error{Number: 2715}, Statement: true, Table: true},
		{Err: fmt.Errorf("read: %w", mssql.Error{Number: 207}), Statement: true, Column: true},
		{Err: fmt.Errorf("claim: %w", mssql.Error{Number: 208, Message: "Invalid object name 'OPENJSON'."}), Statement: true},
	})
}
