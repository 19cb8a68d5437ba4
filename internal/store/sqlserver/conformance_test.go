package sqlserver_test

import (
	"os"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/storetest"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// The conformance suite on SQL Server (go-mssqldb through database/sql), each case in a
// fresh schema created with Migrate. No SQL Server runs on the build machines: the suite
// runs when WATERMILL_JASPER_TEST_MSSQL holds a DSN and is skipped, saying so, otherwise.
func TestConformance(t *testing.T) {
	if os.Getenv(testdb.MSSQLEnv) == "" {
		t.Skipf("the SQL Server conformance suite needs a DSN in %s (sqlserver://user:pass@host:1433?database=db)", testdb.MSSQLEnv)
	}
	storetest.Run(t, func(t *testing.T) store.Store {
		drv, cfg := testdb.MigratedSQLServer(t)
		s, err := drv.Store(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
