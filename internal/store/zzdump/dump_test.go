package zzdump

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlserver"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
	"github.com/watermill-jasper/watermill-jasper/internal/store/storetest"
)

// TEMPORARY (removed after the refactor): dumps every statement of both dialects.
func TestDump(t *testing.T) {
	var b strings.Builder
	for _, name := range []string{"public", "wj_Offline", strings.Repeat("s", layout.MaxIdentifierLength)} {
		for _, dia := range []dbx.Dialect{dbx.Postgres, dbx.SQLServer} {
			cfg, err := layout.Config{Dialect: dia, Schema: name}.Normalized()
			if err != nil {
				t.Fatal(err)
			}
			var d sqlstore.Dialect
			if dia == dbx.Postgres {
				d = postgres.Dialect(cfg)
			} else {
				d = sqlserver.Dialect(cfg)
			}
			fmt.Fprintf(&b, "===== %s %s\n", dia, name)
			for _, st := range storetest.Statements(d) {
				fmt.Fprintf(&b, "--- %s (%d)\n%s\n", st.Name, st.Args, st.SQL)
			}
			for i := 1; i <= 10; i++ {
				fmt.Fprintf(&b, "--- InsertOutgoing(%d)\n%s\n", i, d.InsertOutgoing(i))
			}
			fmt.Fprintf(&b, "chan %q %q sep %q name %s caps %+v move %v max %d\n", d.OutgoingChannel(), d.IncomingChannel(), d.ScriptSeparator(), d.Name(), d.Caps(), d.MoveNeedsTx(), d.MaxParams())
			for _, tb := range layout.Tables() {
				for _, c := range tb.Columns {
					fmt.Fprintf(&b, "col %s.%s %q %q %q\n", tb.Name, c.Name, d.SQLType(c), d.ColumnType(c), d.DefaultClause(c))
				}
			}
			fmt.Fprintf(&b, "ids %#v\n", d.DeadLetterIDs([]string{"a", "b"}))
			fmt.Fprintf(&b, "ids nil %#v\n", d.DeadLetterIDs(nil))
			fmt.Fprintf(&b, "lockarg %#v %#v\n", d.MigrationLockArg(42), d.AdvisoryLockKey(-7))
			fmt.Fprintf(&b, "strlist %#v %#v\n", d.StringList(nil), d.OwnerList(nil))
			fmt.Fprintf(&b, "dlargs %d\n", len(d.DeadLetterArgs([]uuid.UUID{uuid.Nil}, []string{"e"}, []string{"t"}, []string{"m"}, []string{"x"}, []string{"s"})))
		}
	}
	if err := os.WriteFile(os.Getenv("DUMP_OUT"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
