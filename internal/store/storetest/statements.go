package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
)

// Offline checks of a dialect's statements, shared by the statement tests of
// internal/store/postgres and internal/store/sqlserver (no database needed).

// Statement is one statement of a dialect and the number of arguments its contract
// (the doc comments of sqlstore.Dialect and the interfaces it embeds) documents.
type Statement struct {
	Name string
	SQL  string
	Args int
}

// documentedArgs are the argument counts of the statement methods of sqlstore.Dialect that
// take no parameter, by method name.
var documentedArgs = map[string]int{
	// Relay, publisher and locks.
	"NotifyOutgoing": 0, "ClaimOutgoing": 4, "LockOutgoing": 3, "LockOutgoingByID": 3, "DeleteOutgoing": 1, "ReleaseOutgoingFailed": 2,
	"ReleaseOutgoing": 2, "DeadLetterOutgoing": 6, "ReleaseDueScheduledSends": 1, "ListenOutgoing": 0,
	"RelayTxSettings": 0, "EmitOutgoing": 3, "TryAdvisoryLock": 1, "HoldsAdvisoryLock": 1, "ReleaseAdvisoryLock": 1, "SessionID": 0,
	// Subscriber.
	"ListenIncoming": 0, "NotifyIncoming": 1, "ClaimIncoming": 3, "DeleteIncoming": 1, "RetryIncoming": 3,
	"ReleaseIncoming": 3, "ReleaseScheduled": 2, "DeadLetterIncoming": 6,
	// Inbox and dead-letter middleware.
	"InsertHandled": len(row.IncomingColumns) + 1, "MarkIncomingHandled": 3, "IncomingStatus": 2,
	"DeleteExpiredHandled": 1, "InsertDeadLetter": len(row.IncomingColumns) + 5, "Savepoint": 0,
	"RollbackToSavepoint": 0, "ReleaseSavepoint": 0, "DeleteHandledMark": 1,
	// Durability agent.
	"TryAdvisoryXactLock": 1, "OtherOwners": 1, "ReleaseOwner": 2, "UnownedEnvelopes": 0,
	"DeleteExpiredOutgoing": 1, "StorageGauges": 0, "OwnersAlive": 1,
	// DDL and catalog.
	"MigrationLock": 1, "SchemaExists": 1, "ColumnsQuery": 1, "PrimaryKeysQuery": 1, "ObjectsQuery": 1,
	"IndexesQuery": 1, "RequirementsQuery": 0,
}

// adminArgs are the argument counts of the administration statements (the fields of
// sqlstore.AdminStatements), by field name.
var adminArgs = map[string]int{
	"Counts": 0, "Ages": 0, "ReleaseAllIncoming": 1, "ReleaseAllOutgoing": 1, "ClearOutgoing": 0, "ClearIncoming": 0,
	"ClearDeadLetters": 0, "CountDeadLetters": 3, "ListDeadLetters": 2, "GetDeadLetter": 1,
	"PageDeadLetters": 4, "DeleteDeadLetters": 1, "ReplayDeadLetters": 5, "PurgeDeadLetters": 3,
}

// sizedStatements are the statement methods Statements calls with sizes, and DDLStatements.
var sizedStatements = map[string]bool{"InsertOutgoing": true, "InsertIncoming": true, "InsertEnvelopes": true, "DDLStatements": true}

// notStatements are the methods of sqlstore.Dialect returning a string that is no statement.
var notStatements = map[string]bool{
	"OutgoingChannel": true, "IncomingChannel": true, "ScriptSeparator": true,
	"SQLType": true, "ColumnType": true, "DefaultClause": true, "Counted": true,
}

// Statements returns every statement of d with its documented argument count: the
// parameterless statement methods and the administration statements by name,
// InsertOutgoing, InsertIncoming and InsertEnvelopes at a few sizes, and each of
// DDLStatements. A statement the database does not have ("") is left out.
func Statements(d sqlstore.Dialect) []Statement {
	nOut, nInc := len(row.OutgoingColumns), len(row.IncomingColumns)
	var out []Statement
	add := func(name, sql string, args int) {
		if sql != "" {
			out = append(out, Statement{Name: name, SQL: sql, Args: args})
		}
	}
	methods, admin := reflect.ValueOf(d), reflect.ValueOf(d.Admin()).Elem()
	for _, name := range sortedKeys(documentedArgs) {
		add(name, methods.MethodByName(name).Call(nil)[0].String(), documentedArgs[name])
	}
	for _, name := range sortedKeys(adminArgs) {
		add(name, admin.FieldByName(name).String(), adminArgs[name])
	}
	for _, n := range []int{1, 2, 9, 12} {
		add(fmt.Sprintf("InsertOutgoing(%d)", n), d.InsertOutgoing(n), n*nOut)
		add(fmt.Sprintf("InsertIncoming(%d)", n), d.InsertIncoming(n), n*nInc)
	}
	for _, oi := range [][2]int{{1, 0}, {0, 1}, {2, 3}, {3, 2}} {
		for _, notify := range []bool{false, true} {
			add(fmt.Sprintf("InsertEnvelopes(%d,%d,%v)", oi[0], oi[1], notify), d.InsertEnvelopes(oi[0], oi[1], notify), oi[0]*nOut+oi[1]*nInc)
		}
	}
	for i, st := range d.DDLStatements() {
		add(fmt.Sprintf("DDLStatements[%d]", i), st, 0)
	}
	return out
}

// CheckCoverage fails t when a method of sqlstore.Dialect returning SQL, or a statement of
// sqlstore.AdminStatements, is missing from Statements: a statement added to the interface
// or the struct must get its documented argument count here, so that every check sees it.
func CheckCoverage(t *testing.T) {
	t.Helper()
	typ := reflect.TypeFor[sqlstore.Dialect]()
	str, strs := reflect.TypeFor[string](), reflect.TypeFor[[]string]()
	for i := range typ.NumMethod() {
		m := typ.Method(i)
		if m.Type.NumOut() != 1 || (m.Type.Out(0) != str && m.Type.Out(0) != strs) {
			continue
		}
		if _, ok := documentedArgs[m.Name]; !ok && !sizedStatements[m.Name] && !notStatements[m.Name] {
			t.Errorf("sqlstore.Dialect.%s is not among storetest's statements: add its argument count to documentedArgs", m.Name)
		}
	}
	for name := range documentedArgs {
		if _, ok := typ.MethodByName(name); !ok {
			t.Errorf("storetest lists %s, which sqlstore.Dialect does not have", name)
		}
	}
	admin := reflect.TypeFor[sqlstore.AdminStatements]()
	for i := range admin.NumField() {
		if f := admin.Field(i); f.Type == str {
			if _, ok := adminArgs[f.Name]; !ok {
				t.Errorf("sqlstore.AdminStatements.%s is not among storetest's statements: add its argument count to adminArgs", f.Name)
			}
		}
	}
	for name := range adminArgs {
		if _, ok := admin.FieldByName(name); !ok {
			t.Errorf("storetest lists %s, which sqlstore.AdminStatements does not have", name)
		}
	}
}

// sortedKeys returns the keys of m in order.
func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// StripLiterals blanks out '...' string literals (so that text in them is not read as SQL).
func StripLiterals(s string) string {
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

// CheckPlaceholders checks that every statement of d uses exactly the placeholders 1..N of
// its documented argument count; placeholder matches one with the number as its first group.
func CheckPlaceholders(t *testing.T, d sqlstore.Dialect, placeholder *regexp.Regexp) {
	t.Helper()
	for _, st := range Statements(d) {
		seen := map[int]bool{}
		for _, m := range placeholder.FindAllStringSubmatch(StripLiterals(st.SQL), -1) {
			var n int
			if _, err := fmt.Sscan(m[1], &n); err != nil {
				t.Fatal(err)
			}
			seen[n] = true
		}
		got := make([]int, 0, len(seen))
		for n := range seen {
			got = append(got, n)
		}
		sort.Ints(got)
		ok := len(got) == st.Args
		for i, n := range got {
			ok = ok && n == i+1
		}
		if !ok {
			t.Errorf("%s %s: placeholders %v, want exactly 1..%d", d.Name(), st.Name, got, st.Args)
		}
	}
}

// objectName finds the names of the schema's tables, table type and procedures.
var objectName = regexp.MustCompile(`[\["]?(jasper_incoming_envelopes|jasper_outgoing_envelopes|jasper_dead_letters|EnvelopeIdList|usp[A-Za-z]+)\b[\]"]?`)

// CheckQualified checks that every table, table type and procedure a statement of d names
// (outside string literals) is schema-qualified and quoted for the dialect.
func CheckQualified(t *testing.T, d sqlstore.Dialect) {
	t.Helper()
	cfg := d.Schema()
	prefix := len(cfg.QuoteIdent(cfg.Schema) + ".")
	named := 0
	for _, st := range Statements(d) {
		bare := StripLiterals(st.SQL)
		for _, loc := range objectName.FindAllStringSubmatchIndex(bare, -1) {
			named++
			want := cfg.Qualified(bare[loc[2]:loc[3]])
			if start := loc[0] - prefix; start < 0 || bare[start:loc[1]] != want {
				t.Errorf("%s %s: %q is not written %s", d.Name(), st.Name, bare[max(0, start):loc[1]], want)
			}
		}
	}
	if named == 0 {
		t.Errorf("%s: no statement names a table", d.Name())
	}
}

// ErrorCase is an error a database driver returns and how the dialect must classify it.
type ErrorCase struct {
	Err                      error
	Statement, Table, Column bool
}

// CheckErrorClassification checks IsStatementError, IsMissingTable and IsMissingColumn of d
// on cases, and on the errors no dialect may take for a statement's failure: a lost
// connection, a deadline, a cancellation and nil.
func CheckErrorClassification(t *testing.T, d sqlstore.Dialect, cases []ErrorCase) {
	t.Helper()
	lost := fmt.Errorf("claim: %w", errors.New("read tcp: connection reset by peer"))
	for _, err := range []error{lost, context.DeadlineExceeded, fmt.Errorf("claim: %w", context.Canceled), nil} {
		cases = append(cases, ErrorCase{Err: err})
	}
	for i, c := range cases {
		got := ErrorCase{Statement: d.IsStatementError(c.Err), Table: d.IsMissingTable(c.Err), Column: d.IsMissingColumn(c.Err)}
		if got.Statement != c.Statement || got.Table != c.Table || got.Column != c.Column {
			t.Errorf("case %d (%v): classified statement %v, missing table %v, missing column %v; want %v, %v, %v",
				i+1, c.Err, got.Statement, got.Table, got.Column, c.Statement, c.Table, c.Column)
		}
	}
}

// CheckJasper2 checks a dialect of a schema in Jasper2 compatibility (docs/coexistence.md):
// no statement but the DDL names Jasper's incoming table, which .NET nodes own; the
// statements on incoming rows use layout.GoIncomingTable; the DDL creates both tables and the
// incoming indexes on the Go table.
func CheckJasper2(t *testing.T, d sqlstore.Dialect) {
	t.Helper()
	cfg := d.Schema()
	if cfg.Compatibility != layout.Jasper2 {
		t.Fatalf("CheckJasper2 of a %q schema", cfg.Compatibility)
	}
	jin, goIn := cfg.Qualified(layout.IncomingTable), cfg.Qualified(layout.GoIncomingTable)
	onGo := 0
	for _, st := range Statements(d) {
		if strings.HasPrefix(st.Name, "DDLStatements") {
			continue
		}
		if strings.Contains(st.SQL, jin) {
			t.Errorf("%s reads or writes %s, which .NET Jasper nodes own in Jasper2 compatibility:\n%s", st.Name, layout.IncomingTable, st.SQL)
		}
		if strings.Contains(st.SQL, goIn) {
			onGo++
		}
	}
	if onGo < 10 {
		t.Errorf("only %d statements use %s", onGo, layout.GoIncomingTable)
	}
	ddl := strings.Join(d.DDLStatements(), "\n")
	for _, want := range append([]string{jin, goIn}, "idx_watermill_incoming_envelopes_queue", "idx_watermill_incoming_envelopes_owner") {
		if !strings.Contains(ddl, want) {
			t.Errorf("the DDL does not create %s", want)
		}
	}
}
