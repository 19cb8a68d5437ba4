//go:build tsqlcheck

package sqlserver

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store/storetest"
	"github.com/watermill-jasper/watermill-jasper/internal/tsqlcheck"
)

// T-SQL syntax checks with the grammars-v4 T-SQL grammar (internal/tsqlcheck: offline, no
// server; a grammar, not SQL Server, so names and semantics are not checked). They need
// Node.js and the grammar's packages, `(cd tools/tsqlcheck && npm ci)`, and run with the
// build tag: go test -tags tsqlcheck -run Parse ./internal/store/sqlserver

// parse parses statements by name and fails t for each one the grammar rejects.
func parse(t *testing.T, stmts map[string]string) {
	t.Helper()
	failures, err := tsqlcheck.Parse(stmts)
	if err != nil {
		t.Fatal(err)
	}
	for name, msg := range failures {
		t.Errorf("%s does not parse as T-SQL: %s\n%s", name, msg, stmts[name])
	}
	t.Logf("%d statements parsed, %d rejected", len(stmts), len(failures))
}

// Every statement of the dialect parses: runtime, durability, administration and dead-letter
// statements, each DDL batch and catalog query, and the bodies of the procedures the DDL
// creates through EXEC(N'…').
func TestSQLServerStatementsParse(t *testing.T) {
	d := offline(t)
	stmts := map[string]string{}
	for _, st := range storetest.Statements(d) {
		stmts[st.Name] = st.SQL
	}
	inner := regexp.MustCompile(`(?s)EXEC\(N'(CREATE PROCEDURE .*?)'\)\s*$`)
	bodies := 0
	for i, st := range d.DDLStatements() {
		if m := inner.FindStringSubmatch(strings.TrimSpace(st)); m != nil {
			stmts[fmt.Sprintf("DDLStatements[%d] procedure body", i)] = strings.ReplaceAll(m[1], "''", "'")
			bodies++
		}
	}
	if bodies != len(layout.StoredProcedures()) {
		t.Errorf("%d procedure bodies in the DDL, want %d", bodies, len(layout.StoredProcedures()))
	}
	parse(t, stmts)
}

// The script as a file for sqlcmd (batches separated by GO lines) parses as a whole.
func TestSQLServerScriptParses(t *testing.T) {
	d := offline(t)
	parse(t, map[string]string{"script": strings.Join(d.DDLStatements(), d.ScriptSeparator()) + d.ScriptSeparator()})
}
