package sqlserver

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	mssql "github.com/microsoft/go-mssqldb"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/sqlstore"
	"github.com/watermill-jasper/watermill-jasper/internal/store/storetest"
)

// Offline tests of the SQL Server defects a review against go-mssqldb's and SQL Server's
// documented behaviour found (each failed on the code before its fix). The live side of
// each runs in live_test.go when WATERMILL_JASPER_TEST_MSSQL holds a DSN.

// noCountSession answers as a SQL Server session with SET NOCOUNT ON answers a statement that
// changes one row: no affected-row count (go-mssqldb then reports 0), unless the batch itself
// turns NOCOUNT off first. It records what the operations send.
type noCountSession struct {
	queries []string
	args    [][]any
}

func (s *noCountSession) Exec(_ context.Context, query string, args ...any) (int64, error) {
	s.queries, s.args = append(s.queries, query), append(s.args, args)
	if strings.HasPrefix(query, "SET NOCOUNT OFF;") {
		return 1, nil
	}
	return 0, nil
}

func (s *noCountSession) Query(context.Context, string, ...any) (dbx.Rows, error) {
	return nil, errors.New("noCountSession runs no queries")
}

// ops returns the store's operations of the offline dialect on s.
func (s *noCountSession) ops(t *testing.T) store.Ops {
	return sqlstore.New(nil, offline(t)).With(s)
}

// Fix 2: the inbox decides "recorded" or "duplicate" from affected-row counts. On a session
// or server with NOCOUNT ON every count is 0, and every message was acked as a duplicate
// without its handler running. Every counted statement now turns NOCOUNT off for its batch.
func TestNoCountSessionStillCountsRows(t *testing.T) {
	ctx := context.Background()
	s := &noCountSession{}
	ops := s.ops(t)
	mark := row.Envelope{ID: uuid.New(), Destination: "orders", Status: "Handled", MessageUUID: "m-1", MessageType: "t"}
	recorded, err := ops.InsertHandled(ctx, store.InsertHandledParams{Mark: mark, Keep: time.Hour})
	if err != nil || !recorded {
		t.Errorf("InsertHandled of a new mark on a NOCOUNT ON session: recorded %v, %v; want true (it would be acked as a duplicate)", recorded, err)
	}
	marked, err := ops.MarkIncomingHandled(ctx, store.MarkHandledParams{ID: mark.ID, Topic: "orders", Keep: time.Hour})
	if err != nil || !marked {
		t.Errorf("MarkIncomingHandled on a NOCOUNT ON session: marked %v, %v; want true", marked, err)
	}
	if n, err := ops.DeleteExpiredHandled(ctx, 10); err != nil || n != 1 {
		t.Errorf("DeleteExpiredHandled on a NOCOUNT ON session: %d, %v; want 1", n, err)
	}
	for _, q := range s.queries {
		if !strings.HasPrefix(q, "SET NOCOUNT OFF;") {
			t.Errorf("a counted statement does not turn NOCOUNT off:\n%s", q)
		}
	}
}

// Fix 4: go-mssqldb declares a string parameter as nvarchar(<its length>), so every length
// got a plan of its own. Every string an operation binds is nvarchar(max) now.
func TestStringsAreBoundAsNVarCharMax(t *testing.T) {
	ctx := context.Background()
	s := &noCountSession{}
	ops := s.ops(t)
	e := row.Envelope{ID: uuid.New(), Destination: "orders", MessageType: "a.Type", CorrelationID: "c", MessageUUID: "m-2", Body: []byte("{}")}
	in := e
	in.ID, in.Status = uuid.New(), "Incoming"
	if err := ops.InsertEnvelopes(ctx, store.InsertParams{Outgoing: []row.Envelope{e}, Incoming: []row.Envelope{in}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ops.MarkIncomingHandled(ctx, store.MarkHandledParams{ID: e.ID, Topic: "a topic of another length", Keep: time.Hour}); err != nil {
		t.Fatal(err)
	}
	strs := 0
	for i, args := range s.args {
		for j, a := range args {
			switch a.(type) {
			case string:
				t.Errorf("statement %d binds argument %d as a plain string (nvarchar of its length): %q", i+1, j+1, a)
			case mssql.NVarCharMax:
				strs++
			}
		}
	}
	if strs < 4 {
		t.Errorf("%d nvarchar(max) arguments bound; the statements bind destinations, topics and types", strs)
	}
	if got := offline(t).Bind([]any{1, nil, []byte("b")}); len(got) != 3 || got[0] != 1 || got[1] != nil {
		t.Errorf("Bind changed arguments that are no strings: %v", got)
	}
}

// Fix 3: publishing checked for existing ids under UPDLOCK, HOLDLOCK: key-range locks that
// serialise concurrent publishers and can deadlock them. The inserts take no lock hints now,
// and run again when a concurrent insert of the same id won the race.
func TestInsertsTakeNoRangeLocks(t *testing.T) {
	d := offline(t)
	inserts := map[string]string{"InsertHandled": d.InsertHandled()}
	for _, n := range []int{1, 3} {
		inserts[fmt.Sprintf("InsertOutgoing(%d)", n)] = d.InsertOutgoing(n)
		inserts[fmt.Sprintf("InsertIncoming(%d)", n)] = d.InsertIncoming(n)
		inserts[fmt.Sprintf("InsertEnvelopes(%d,%d)", n, n)] = d.InsertEnvelopes(n, n, false)
	}
	for name, q := range inserts {
		for _, hint := range []string{"HOLDLOCK", "UPDLOCK", "SERIALIZABLE", "TABLOCK"} {
			if strings.Contains(strings.ToUpper(q), hint) {
				t.Errorf("%s takes the lock hint %s:\n%s", name, hint, q)
			}
		}
		inserts, retries := strings.Count(q, "INSERT INTO"), strings.Count(q, "IF ERROR_NUMBER() NOT IN (2627, 2601) OR XACT_STATE() <> 1")
		if inserts == 0 || retries != inserts {
			t.Errorf("%s: %d inserts, %d of them run again after a duplicate key:\n%s", name, inserts, retries, q)
		}
	}
}

// Fix 1: a move to the dead letters is a DELETE and a MERGE. The store runs them in a
// transaction of its own on the pool; inside a caller's transaction a failed MERGE left the
// DELETE for the caller to commit. XACT_ABORT ON rolls the whole transaction back now.
func TestDeadLetterMovesAreAtomic(t *testing.T) {
	d := offline(t)
	if !d.MoveNeedsTx() {
		t.Error("MoveNeedsTx is false: the store would run the DELETE and the MERGE outside a transaction")
	}
	for name, q := range map[string]string{"DeadLetterOutgoing": d.DeadLetterOutgoing(), "DeadLetterIncoming": d.DeadLetterIncoming()} {
		if !strings.HasPrefix(q, "SET XACT_ABORT ON;") {
			t.Errorf("%s does not start with SET XACT_ABORT ON: a failed MERGE would leave its DELETE in the caller's transaction:\n%s", name, q)
		}
		del, merge := strings.Index(q, "DELETE FROM"), strings.Index(q, "MERGE ")
		if del < 0 || merge < del {
			t.Errorf("%s: want a DELETE, then the MERGE:\n%s", name, q)
		}
	}
}

// Fix 5: filtered indexes need ANSI_NULLS and QUOTED_IDENTIFIER on; sqlcmd runs with
// QUOTED_IDENTIFIER off unless given -I, and the script failed with error 1934. Each batch
// that creates a filtered index sets them now.
func TestFilteredIndexBatchesSetTheirOptions(t *testing.T) {
	d := offline(t)
	filtered := 0
	for i, st := range d.DDLStatements() {
		if !strings.Contains(st, "CREATE INDEX") || !regexp.MustCompile(`\) WHERE `).MatchString(st) {
			continue
		}
		filtered++
		for _, opt := range []string{"SET ANSI_NULLS ON;", "SET QUOTED_IDENTIFIER ON;", "SET ANSI_PADDING ON;", "SET ANSI_WARNINGS ON;",
			"SET CONCAT_NULL_YIELDS_NULL ON;", "SET ARITHABORT ON;", "SET NUMERIC_ROUNDABORT OFF;"} {
			if at := strings.Index(st, opt); at < 0 || at > strings.Index(st, "CREATE INDEX") {
				t.Errorf("DDLStatements[%d] creates a filtered index without %s first:\n%s", i, opt, st)
			}
		}
	}
	if filtered == 0 {
		t.Error("no filtered index in the DDL")
	}
}

// Fix 6: OPENJSON needs compatibility level 130. Below it SQL Server answers error 208
// ("Invalid object name 'OPENJSON'"), which was reported as missing tables. It is not a
// missing table now, and the schema check reads the level and says what to change.
func TestLowCompatibilityIsNoMissingTable(t *testing.T) {
	d := offline(t)
	openJSON := fmt.Errorf("claim: %w", mssql.Error{Number: 208, Message: "Invalid object name 'OPENJSON'."})
	if d.IsMissingTable(openJSON) {
		t.Errorf("%v is taken for a missing table", openJSON)
	}
	if !d.IsMissingTable(mssql.Error{Number: 208, Message: "Invalid object name 'wj.jasper_outgoing_envelopes'."}) {
		t.Error("a missing table is no longer one")
	}
	q := d.RequirementsQuery()
	for _, want := range []string{"[compatibility_level] < 130", "DB_ID()", "ALTER DATABASE CURRENT SET COMPATIBILITY_LEVEL = 130"} {
		if !strings.Contains(q, want) {
			t.Errorf("RequirementsQuery lacks %q:\n%s", want, q)
		}
	}
}

// Fix 7: releasing a node's rows filtered by owner_id = @p1 alone. The owner index is
// filtered (WHERE owner_id <> 0), and a plan for "= @p1" must also serve @p1 = 0, so SQL
// Server scanned the table. Both releases repeat "<> 0" now (PostgreSQL's generic plans have
// the same limit: internal/store/postgres checks its statement on a live server).
func TestReleaseOwnerCanSeekTheOwnerIndex(t *testing.T) {
	q := offline(t).ReleaseOwner()
	if n := strings.Count(q, "[owner_id] = @p1 AND [owner_id] <> 0"); n != 2 {
		t.Errorf("ReleaseOwner filters %d of its 2 releases with [owner_id] <> 0:\n%s", n, q)
	}
	storetest.CheckQualified(t, offline(t))
}

// In Jasper2 compatibility the statements keep off Jasper's incoming table.
func TestJasper2Statements(t *testing.T) {
	cfg, err := layout.Config{Dialect: dbx.SQLServer, Schema: "wj_Offline", Compatibility: layout.Jasper2}.Normalized()
	if err != nil {
		t.Fatal(err)
	}
	storetest.CheckJasper2(t, Dialect(cfg))
}
