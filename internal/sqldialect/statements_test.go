package sqldialect

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	mssql "github.com/microsoft/go-mssqldb"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/tsqlcheck"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// Offline checks of every statement of both dialects: no database needed.

type stmtCase struct {
	name string
	sql  func(d Dialect) string
	args int // the documented argument count (Dialect's doc comments)
}

var (
	nOut = len(row.OutgoingColumns)
	nInc = len(row.IncomingColumns)
)

// statementCases is the one table of statements and their documented argument counts,
// shared by both dialects. A statement that is "" in a dialect is not checked there.
func statementCases() []stmtCase {
	c := []stmtCase{
		{"NotifyOutgoing", func(d Dialect) string { return d.NotifyOutgoing() }, 0},
		{"ClaimOutgoing", func(d Dialect) string { return d.ClaimOutgoing() }, 4},
		{"DeleteOutgoing", func(d Dialect) string { return d.DeleteOutgoing() }, 1},
		{"ReleaseOutgoingFailed", func(d Dialect) string { return d.ReleaseOutgoingFailed() }, 2},
		{"ReleaseOutgoing", func(d Dialect) string { return d.ReleaseOutgoing() }, 2},
		{"DeadLetterOutgoing", func(d Dialect) string { return d.DeadLetterOutgoing() }, 6},
		{"ReleaseDueScheduledSends", func(d Dialect) string { return d.ReleaseDueScheduledSends() }, 1},
		{"ListenOutgoing", func(d Dialect) string { return d.ListenOutgoing() }, 0},
		{"TryAdvisoryLock", func(d Dialect) string { return d.TryAdvisoryLock() }, 1},
		{"HoldsAdvisoryLock", func(d Dialect) string { return d.HoldsAdvisoryLock() }, 1},
		{"ReleaseAdvisoryLock", func(d Dialect) string { return d.ReleaseAdvisoryLock() }, 1},
		{"ListenIncoming", func(d Dialect) string { return d.ListenIncoming() }, 0},
		{"NotifyIncoming", func(d Dialect) string { return d.NotifyIncoming() }, 1},
		{"ClaimIncoming", func(d Dialect) string { return d.ClaimIncoming() }, 3},
		{"DeleteIncoming", func(d Dialect) string { return d.DeleteIncoming() }, 1},
		{"RetryIncoming", func(d Dialect) string { return d.RetryIncoming() }, 3},
		{"ReleaseIncoming", func(d Dialect) string { return d.ReleaseIncoming() }, 3},
		{"ReleaseScheduled", func(d Dialect) string { return d.ReleaseScheduled() }, 2},
		{"DeadLetterIncoming", func(d Dialect) string { return d.DeadLetterIncoming() }, 6},
		{"InsertHandled", func(d Dialect) string { return d.InsertHandled() }, nInc + 1},
		{"MarkIncomingHandled", func(d Dialect) string { return d.MarkIncomingHandled() }, 3},
		{"IncomingStatus", func(d Dialect) string { return d.IncomingStatus() }, 2},
		{"DeleteExpiredHandled", func(d Dialect) string { return d.DeleteExpiredHandled() }, 1},
		{"InsertDeadLetter", func(d Dialect) string { return d.InsertDeadLetter() }, nInc + 5},
		{"Savepoint", func(d Dialect) string { return d.Savepoint() }, 0},
		{"RollbackToSavepoint", func(d Dialect) string { return d.RollbackToSavepoint() }, 0},
		{"ReleaseSavepoint", func(d Dialect) string { return d.ReleaseSavepoint() }, 0},
		{"DeleteHandledMark", func(d Dialect) string { return d.DeleteHandledMark() }, 1},
		{"TryAdvisoryXactLock", func(d Dialect) string { return d.TryAdvisoryXactLock() }, 1},
		{"OtherOwners", func(d Dialect) string { return d.OtherOwners() }, 1},
		{"ReleaseOwner", func(d Dialect) string { return d.ReleaseOwner() }, 2},
		{"UnownedEnvelopes", func(d Dialect) string { return d.UnownedEnvelopes() }, 0},
		{"DeleteExpiredOutgoing", func(d Dialect) string { return d.DeleteExpiredOutgoing() }, 1},
		{"StorageGauges", func(d Dialect) string { return d.StorageGauges() }, 0},
		{"OwnersAlive", func(d Dialect) string { return d.OwnersAlive() }, 1},
	}
	for _, n := range []int{1, 2, 9, 12} {
		c = append(c,
			stmtCase{fmt.Sprintf("InsertOutgoing(%d)", n), func(d Dialect) string { return d.InsertOutgoing(n) }, n * nOut},
			stmtCase{fmt.Sprintf("InsertIncoming(%d)", n), func(d Dialect) string { return d.InsertIncoming(n) }, n * nInc})
	}
	for _, oi := range [][2]int{{1, 0}, {0, 1}, {2, 3}, {3, 2}} {
		for _, notify := range []bool{false, true} {
			c = append(c, stmtCase{fmt.Sprintf("InsertEnvelopes(%d,%d,%v)", oi[0], oi[1], notify),
				func(d Dialect) string { return d.InsertEnvelopes(oi[0], oi[1], notify) }, oi[0]*nOut + oi[1]*nInc})
		}
	}
	return c
}

func dialects(t *testing.T) []Dialect {
	t.Helper()
	var out []Dialect
	for _, cfg := range []schema.Config{
		{Dialect: database.Postgres, Schema: "wj_Offline"},
		{Dialect: database.SQLServer, Schema: "wj_Offline"},
	} {
		d, err := For(cfg)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

var (
	pgPlaceholder = regexp.MustCompile(`\$(\d+)`)
	msPlaceholder = regexp.MustCompile(`@p(\d+)\b`)
	// msAnyVariable finds @names that are neither placeholders nor declared variables.
	msDeclared = regexp.MustCompile(`(?i)DECLARE\s+(@\w+)`)
	msVariable = regexp.MustCompile(`@@?\w+`)
)

// stripLiterals removes '...' string literals (so that text in them is not read as SQL).
func stripLiterals(s string) string {
	var b strings.Builder
	in := false
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			in = !in
			b.WriteByte(' ')
			continue
		}
		if !in {
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

func TestPlaceholdersMatchDocumentedArgs(t *testing.T) {
	for _, d := range dialects(t) {
		re := pgPlaceholder
		if d.Name() == database.SQLServer {
			re = msPlaceholder
		}
		for _, c := range statementCases() {
			q := c.sql(d)
			if q == "" {
				continue
			}
			seen := map[int]bool{}
			for _, m := range re.FindAllStringSubmatch(stripLiterals(q), -1) {
				var n int
				fmt.Sscan(m[1], &n)
				seen[n] = true
			}
			var got []int
			for n := range seen {
				got = append(got, n)
			}
			sort.Ints(got)
			ok := len(got) == c.args
			for i, n := range got {
				ok = ok && n == i+1
			}
			if !ok {
				t.Errorf("%s %s: placeholders %v, want exactly 1..%d", d.Name(), c.name, got, c.args)
			}
		}
	}
}

// Every table, type and procedure is schema-qualified and quoted; SQL Server statements
// hold no PostgreSQL syntax and use only declared variables and @pN placeholders.
func TestStatementsQualifiedAndQuoted(t *testing.T) {
	objects := regexp.MustCompile(`[\["]?(jasper_incoming_envelopes|jasper_outgoing_envelopes|jasper_dead_letters|EnvelopeIdList|usp[A-Za-z]+)\b[\]"]?`)
	pgOnly := []string{"$", "::", "ANY(", "now()", "RETURNING", "ON CONFLICT", "FOR UPDATE", "SKIP LOCKED", "interval", "pg_", "unnest", "cardinality", "EXCLUDED", "LIMIT ", "FILTER (", `"`}
	for _, d := range dialects(t) {
		cfg := d.Schema()
		for _, c := range statementCases() {
			q := c.sql(d)
			if q == "" {
				continue
			}
			bare := stripLiterals(q)
			for _, loc := range objects.FindAllStringSubmatchIndex(bare, -1) {
				name := bare[loc[2]:loc[3]]
				want := cfg.Qualified(name)
				start := loc[0] - len(cfg.QuoteIdent(cfg.Schema)+".")
				if start < 0 || bare[start:loc[1]] != want {
					t.Errorf("%s %s: %q is not written %s", d.Name(), c.name, bare[max(0, start):loc[1]], want)
				}
			}
			if d.Name() != database.SQLServer {
				continue
			}
			for _, bad := range pgOnly {
				if strings.Contains(bare, bad) {
					t.Errorf("sqlserver %s: holds PostgreSQL syntax %q:\n%s", c.name, bad, q)
				}
			}
			declared := map[string]bool{}
			for _, m := range msDeclared.FindAllStringSubmatch(bare, -1) {
				declared[strings.ToLower(m[1])] = true
			}
			for _, v := range msVariable.FindAllString(bare, -1) {
				lv := strings.ToLower(v)
				if msPlaceholder.MatchString(v) || declared[lv] || lv == "@@rowcount" || strings.HasPrefix(lv, "@@") {
					continue
				}
				// Named arguments of procedures: @Name = value.
				if regexp.MustCompile(regexp.QuoteMeta(v) + `\s*=`).MatchString(bare) {
					continue
				}
				t.Errorf("sqlserver %s: undeclared variable %s", c.name, v)
			}
			if strings.Count(bare, "(") != strings.Count(bare, ")") || strings.Count(bare, "[") != strings.Count(bare, "]") ||
				strings.Count(q, "'")%2 != 0 {
				t.Errorf("sqlserver %s: unbalanced parentheses, brackets or quotes:\n%s", c.name, q)
			}
		}
	}
}

// Claims on SQL Server read past locked rows and return what they claimed.
func TestSQLServerClaimsSkipLockedRows(t *testing.T) {
	d := dialects(t)[1]
	for name, q := range map[string]string{
		"ClaimOutgoing": d.ClaimOutgoing(), "ClaimIncoming": d.ClaimIncoming(),
		"ReleaseDueScheduledSends": d.ReleaseDueScheduledSends(), "ReleaseScheduled": d.ReleaseScheduled(),
		"DeleteExpiredHandled": d.DeleteExpiredHandled(), "DeleteExpiredOutgoing": d.DeleteExpiredOutgoing(),
		"ReleaseOwner": d.ReleaseOwner(),
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
// EnvelopeIdList table-valued parameter of the schema.
func TestSQLServerProceduresTakeEnvelopeIdList(t *testing.T) {
	d := dialects(t)[1]
	cfg := d.Schema()
	script, err := schema.Script(cfg)
	if err != nil {
		t.Fatal(err)
	}
	exec := regexp.MustCompile(`EXEC (\[\w+\]\.\[(usp\w+)\])((?:\s*,?\s*@\w+\s*=\s*@p\d+)+)`)
	arg := regexp.MustCompile(`(@\w+)\s*=\s*(@p\d+)`)
	calls := 0
	for _, c := range statementCases() {
		for _, m := range exec.FindAllStringSubmatch(c.sql(d), -1) {
			calls++
			if m[1] != cfg.Qualified(m[2]) {
				t.Errorf("%s: procedure %s not qualified", c.name, m[1])
			}
			for _, a := range arg.FindAllStringSubmatch(m[3], -1) {
				decl := regexp.MustCompile(`(?i)` + regexp.QuoteMeta(a[1]) + `\s+` + regexp.QuoteMeta(cfg.Qualified(schema.EnvelopeIDList)) + `\s+READONLY`)
				body := script[strings.Index(script, "CREATE PROCEDURE "+cfg.Qualified(m[2])):]
				if !decl.MatchString(body[:strings.Index(body, "AS\n")]) {
					t.Errorf("%s: %s is not an EnvelopeIdList parameter of %s", c.name, a[1], m[2])
				}
			}
		}
	}
	if calls == 0 {
		t.Fatal("no statement calls a Jasper procedure")
	}
	tvp, ok := d.IDList([]uuid.UUID{uuid.New()}).(mssql.TVP)
	if !ok || tvp.TypeName != cfg.Schema+"."+schema.EnvelopeIDList {
		t.Fatalf("IDList = %#v, want an mssql.TVP of %s.%s", d.IDList(nil), cfg.Schema, schema.EnvelopeIDList)
	}
	// go-mssqldb's parameter check (CheckNamedValue) accepts every bind value. It passes a TVP
	// through without looking at it, so the TVP's type name is checked against the rules
	// go-mssqldb applies when it encodes one: schema.name, one dot, no quotes or semicolons.
	if strings.Count(tvp.TypeName, ".") != 1 || strings.ContainsAny(tvp.TypeName, "'\";[]\n") {
		t.Errorf("TVP type name %q", tvp.TypeName)
	}
	if rows, ok := tvp.Value.([]envelopeIDRow); !ok || len(rows) != 1 {
		t.Errorf("TVP rows %#v", tvp.Value)
	}
	var conn mssql.Conn
	for _, v := range append([]any{tvp, d.IDList(nil), d.StringList(nil), d.OwnerList([]int32{1, -2}), d.AdvisoryLockKey(-5),
		d.UUIDs().Arg(uuid.New())}, d.DeadLetterArgs([]uuid.UUID{uuid.New()}, []string{"e"}, []string{"t"}, []string{"m"}, []string{"x"}, []string{"s"})...) {
		if err := conn.CheckNamedValue(&driver.NamedValue{Ordinal: 1, Value: v}); err != nil && err != driver.ErrSkip {
			t.Errorf("go-mssqldb rejects %T: %v", v, err)
		}
	}
}

// The uniqueidentifier codec round-trips through go-mssqldb's wire byte order.
func TestSQLServerUUIDCodec(t *testing.T) {
	d := dialects(t)[1]
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
	var back uuid.UUID
	if err := d.UUIDs().Dest(&back).(interface{ Scan(any) error }).Scan(wire); err != nil || back != id {
		t.Fatalf("scan back = %s, %v; want %s", back, err, id)
	}
	if err := d.UUIDs().Dest(&back).(interface{ Scan(any) error }).Scan(nil); err != nil || back != uuid.Nil {
		t.Fatalf("scan NULL = %s, %v", back, err)
	}
}

// Every bracketed identifier of a SQL Server statement is a column of Jasper's tables (or
// of this library's extensions), an object of the schema, or one of the few names the
// statements define themselves: a typo in a column name cannot wait for a live server.
func TestSQLServerIdentifiersExist(t *testing.T) {
	d := dialects(t)[1]
	known := map[string]bool{d.Schema().Schema: true, schema.EnvelopeIDList: true}
	for _, tb := range schema.Tables() {
		known[tb.Name] = true
		for _, c := range tb.Columns {
			known[c.Name] = true
		}
	}
	for _, p := range schema.StoredProcedures() {
		known[p] = true
	}
	// Names defined by the statements: derived-table and OPENJSON columns.
	for _, n := range []string{"wj_rn", "rn", "d", "t", "n", "value", "key", "topic"} {
		known[n] = true
	}
	ident := regexp.MustCompile(`\[([^\]]+)\]`)
	for _, c := range statementCases() {
		for _, m := range ident.FindAllStringSubmatch(stripLiterals(c.sql(d)), -1) {
			if !known[m[1]] {
				t.Errorf("sqlserver %s: unknown identifier [%s]", c.name, m[1])
			}
		}
	}
}

// Every SQL Server statement parses with the grammars-v4 T-SQL grammar (internal/tsqlcheck:
// offline, no server; a grammar, not SQL Server, so names and semantics are not checked).
func TestSQLServerStatementsParse(t *testing.T) {
	d, err := For(schema.Config{Dialect: database.SQLServer, Schema: "wj_Offline"})
	if err != nil {
		t.Fatal(err)
	}
	stmts := map[string]string{}
	for _, c := range statementCases() {
		if s := c.sql(d); s != "" {
			stmts[c.name] = s
		}
	}
	failures, err := tsqlcheck.Parse(stmts)
	if err != nil {
		t.Fatal(err)
	}
	for name, msg := range failures {
		t.Errorf("%s does not parse as T-SQL: %s\n%s", name, msg, stmts[name])
	}
	t.Logf("%d SQL Server statements parsed, %d rejected", len(stmts), len(failures))
}

// A server's error answer (the statement failed, nothing changed) is told from an error
// after which a statement may have run unseen; missing tables are recognised by number.
func TestServerErrorClassification(t *testing.T) {
	pg, ms := dialects(t)[0], dialects(t)[1]
	lost := fmt.Errorf("claim: %w", errors.New("read tcp: connection reset by peer"))
	cases := []struct {
		d                  Dialect
		err                error
		statement, missing bool
	}{
		{pg, fmt.Errorf("claim: %w", &pgconn.PgError{Code: "40001"}), true, false},
		{pg, fmt.Errorf("claim: %w", &pgconn.PgError{Code: "42P01"}), true, true},
		{pg, lost, false, false},
		{pg, context.DeadlineExceeded, false, false},
		{ms, fmt.Errorf("claim: %w", mssql.Error{Number: 1205}), true, false},
		{ms, fmt.Errorf("claim: %w", mssql.Error{Number: 208}), true, true},
		{ms, fmt.Errorf("claim: %w", &mssql.Error{Number: 2812}), true, true},
		{ms, lost, false, false},
	}
	for i, c := range cases {
		if got := c.d.IsStatementError(c.err); got != c.statement {
			t.Errorf("case %d (%s, %v): IsStatementError %v, want %v", i, c.d.Name(), c.err, got, c.statement)
		}
		if got := c.d.IsMissingTable(c.err); got != c.missing {
			t.Errorf("case %d (%s, %v): IsMissingTable %v, want %v", i, c.d.Name(), c.err, got, c.missing)
		}
	}
}
