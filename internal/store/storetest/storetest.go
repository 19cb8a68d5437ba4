// Package storetest is the conformance suite of the storage boundary (internal/store): Run
// drives every operation of store.Store and store.Ops against a real database, through typed
// calls only, and checks what they did. Each driver's tests run it on every way the driver
// reaches its database (internal/store/postgres: pgx natively and database/sql;
// internal/store/sqlserver: go-mssqldb when WATERMILL_JASPER_TEST_MSSQL holds a DSN).
//
// The suite uses raw SQL only to set rows up or look at columns no operation returns, through
// the small helpers of rows.go, which ask the store for its dialect (placeholders) and its
// schema config (quoting). Expectations that differ between databases follow store.Caps
// (notifications, savepoint release) or a difference a dialect documents (SQL Server cuts
// narrow dead-letter columns, does not report released topics and has table types and
// procedures in its catalog).
//
// Statements, CheckCoverage, CheckPlaceholders, CheckQualified and CheckErrorClassification
// (statements.go) serve the offline statement checks of each dialect's tests.
package storetest

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
)

// caseTimeout bounds one case, so that an operation that waits where it must not (a claim
// that does not skip a locked row) fails the case instead of hanging the test binary.
const caseTimeout = 2 * time.Minute

// cases are the behaviours of the suite, by file; each runs on a fresh schema, named after
// its function without "test" (caseName).
var cases = []func(e *env){
	// publish.go
	testInsertEnvelopes, testInsertEnvelopesBeyondParameterLimit,
	testInsertEnvelopesAtomicAcrossStatements, testInsertEnvelopesNotifies, testListenAndNotify, testEmitOutgoing,
	// relay.go
	testClaimOutgoing, testClaimOutgoingSkipsLockedRows, testLockOutgoing, testBeginRelay, testLockOutgoingByPrefix, testDeleteOutgoing, testReleaseOutgoing,
	testDeadLetterOutgoing, testDeadLetterMovesAreAtomic,
	// ordering.go
	testLockOutgoingHeadOfKey, testClaimIncomingHeadOfKey, testLockOutgoingByID,
	// queue.go
	testClaimIncoming, testClaimIncomingSkipsLockedRows, testDeleteIncoming, testRetryIncoming,
	testReleaseIncoming, testDeadLetterIncoming,
	// inbox.go
	testMarkIncomingHandled, testInsertHandled, testInsertHandledWaitsForConcurrentInsert,
	testDeleteHandledMark, testBeginMarkHandled, testBeginInsertHandled, testInsertDeadLetter,
	testSavepoints,
	// durability.go
	testTryGlobalLock, testNodeLocks, testSessionIDs, testReleaseScheduled, testTakeDueScheduledSends, testOwners,
	testUnowned, testDeleteExpiredOutgoing, testDeleteExpiredHandled, testGauges,
	// admin.go
	testCounts, testReleaseAll, testClearAll, testListCountGetDeadLetters, testPageDeadLetters,
	testDeleteAndPurgeDeadLetters, testReplayToIncoming,
	// schema.go
	testMigrate, testCatalog, testScript, testErrorClassification,
	// lifecycle.go
	testOutboxLifecycle, testQueueLifecycle, testInTxAndWith,
}

// caseName is the name of a case: its function's name without "test".
func caseName(run func(e *env)) string {
	name := runtime.FuncForPC(reflect.ValueOf(run).Pointer()).Name()
	return strings.TrimPrefix(name[strings.LastIndex(name, ".")+1:], "test")
}

// Run runs the conformance suite. open returns the Store of a fresh, migrated schema that
// belongs to the calling test alone (the factory drops it when the test ends); every case
// opens its own and runs in parallel with the others.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	t.Helper()
	run(t, open, nil)
}

// sessionCases are the cases of the operations that need a database session of their own
// for longer than a transaction: node locks, LISTEN, session ids. Behind a pooler in
// transaction mode they run on the node's direct pool (durability.NodeConfig.SessionDB), so
// RunThroughPooler leaves them out.
var sessionCases = map[string]bool{
	"NodeLocks": true, "TryGlobalLock": true, "SessionIDs": true, "ListenAndNotify": true, "InsertEnvelopesNotifies": true,
}

// RunThroughPooler runs the suite but for sessionCases, for a store whose pool goes through
// a pooler in transaction mode (PgBouncer): every other operation must work through it, in
// the query exec modes such a pool needs.
func RunThroughPooler(t *testing.T, open func(t *testing.T) store.Store) {
	t.Helper()
	run(t, open, sessionCases)
}

func run(t *testing.T, open func(t *testing.T) store.Store, skip map[string]bool) {
	t.Helper()
	for _, run := range cases {
		if skip[caseName(run)] {
			continue
		}
		t.Run(caseName(run), func(t *testing.T) {
			t.Parallel()
			s := open(t)
			ctx, cancel := context.WithTimeout(t.Context(), caseTimeout)
			defer cancel()
			defer reportFailure(t)
			run(&env{t: t, ctx: ctx, s: s, cfg: s.Schema()})
		})
	}
}

// env is one case's test, context and store.
type env struct {
	t   *testing.T
	ctx context.Context
	s   store.Store
	cfg layout.Config
}

// ok fails the case on err.
func (e *env) ok(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

// failure is the panic of must: an error and where it happened, reported by Run.
type failure struct {
	err error
	at  string
}

// must returns v; on err it ends the case (Run reports the error with must's caller).
func must[T any](v T, err error) T {
	if err != nil {
		_, file, line, _ := runtime.Caller(1)
		panic(failure{err: err, at: fmt.Sprintf("%s:%d", filepath.Base(file), line)})
	}
	return v
}

// reportFailure turns the panic of must into a failure of t.
func reportFailure(t *testing.T) {
	if r := recover(); r != nil {
		f, ok := r.(failure)
		if !ok {
			panic(r)
		}
		t.Fatalf("%s: %v", f.at, f.err)
	}
}

// check fails the case (without stopping it) when got differs from want.
func check[T any](e *env, what string, got, want T) {
	e.t.Helper()
	if !reflect.DeepEqual(got, want) {
		e.t.Errorf("%s = %#v, want %#v", what, got, want)
	}
}

// notifies reports whether the database has notifications.
func (e *env) notifies() bool { return e.s.Caps().Notifications }
