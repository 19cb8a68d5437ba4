package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/watermill-jasper/watermill-jasper/internal/tcpproxy"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
)

// amqpURL is the test broker: $WATERMILL_TEST_AMQP_URI or the local default.
func amqpURL() string {
	if u := os.Getenv("WATERMILL_TEST_AMQP_URI"); u != "" {
		return u
	}
	return "amqp://guest:guest@localhost:5672/"
}

// rabbit connects to the test broker, failing with the command that starts it.
func rabbit(t testing.TB) *amqp091.Connection {
	t.Helper()
	conn, err := amqp091.Dial(amqpURL())
	if err != nil {
		t.Fatalf("RabbitMQ is not reachable at %s (%v); start it with: rabbitmq-server -detached", jasperamqp.RedactURL(amqpURL()), err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// testQueue declares a durable queue with a random lower-case name, deleted when the test ends.
func testQueue(t testing.TB, conn *amqp091.Connection) string {
	t.Helper()
	q := "wj-relay-test-" + strings.ToLower(watermill.NewULID())
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := amqp091.Dial(amqpURL())
		if err != nil {
			return
		}
		defer c.Close()
		if ch, err := c.Channel(); err == nil {
			_, _ = ch.QueueDelete(q, false, false, false)
		}
	})
	return q
}

// migratedSchema creates a random schema migrated by the CLI.
func migratedSchema(t testing.TB) string {
	t.Helper()
	s := testdb.Schema(t)
	r := runCLI(t, "schema", "migrate", "--dsn", testdb.PostgresDSN(), "--schema", s)
	if r.code != 0 {
		t.Fatalf("schema migrate: %s", r)
	}
	return s
}

func runCLI(t testing.TB, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.Env = cliEnv()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errOut.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return r
}

func cliEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, dsnEnv+"=") && !strings.HasPrefix(kv, amqpURLEnv+"=") {
			env = append(env, kv)
		}
	}
	return env
}

// jasperRow is an outgoing envelope as Jasper 2.0 writes it.
type jasperRow struct {
	id          uuid.UUID
	destination string
	body        []byte
	correlation string
}

// insertJasperRows inserts rows exactly as Jasper 2.0 does (DatabaseConstants.OutgoingFields,
// no extension column), unowned (owner_id 0 as given, or owner), with the zero conversation id
// Jasper stores for Guid.Empty.
func insertJasperRows(t testing.TB, s string, owner int32, rows []jasperRow) {
	t.Helper()
	batch := &pgx.Batch{}
	q := fmt.Sprintf(`insert into %q.jasper_outgoing_envelopes (body, id, owner_id, destination, deliver_by, attempts, conversation_id, correlation_id, parent_id, saga_id, message_type, content_type, reply_requested, ack_requested, reply_uri) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`, s)
	for _, r := range rows {
		batch.Queue(q, r.body, r.id, owner, r.destination, nil, 0, uuid.UUID{}, r.correlation, nil, nil,
			"OrderPlaced", "application/json", nil, false, nil)
	}
	if err := testdb.Pool(t).SendBatch(context.Background(), batch).Close(); err != nil {
		t.Fatalf("insert Jasper rows: %v", err)
	}
}

// bulkInsertJasperRows inserts n rows for destination in one statement (Jasper's column list).
func bulkInsertJasperRows(t testing.TB, s, destination string, n int) {
	t.Helper()
	q := fmt.Sprintf(`insert into %q.jasper_outgoing_envelopes (body, id, owner_id, destination, deliver_by, attempts, conversation_id, correlation_id, parent_id, saga_id, message_type, content_type, reply_requested, ack_requested, reply_uri)
select convert_to(json_build_object('n', g, 'pad', repeat('x', 200))::text, 'UTF8'), gen_random_uuid(), 0, $1, null, 0,
  '00000000-0000-0000-0000-000000000000', 'corr-' || g, null, null, 'OrderPlaced', 'application/json', null, false, null
from generate_series(1, $2) g`, s)
	if _, err := testdb.Pool(t).Exec(context.Background(), q, destination, n); err != nil {
		t.Fatalf("insert Jasper rows: %v", err)
	}
}

func makeRows(destination string, n int) []jasperRow {
	rows := make([]jasperRow, n)
	for i := range rows {
		id, _ := uuid.NewV7()
		rows[i] = jasperRow{
			id:          id,
			destination: destination,
			body:        []byte(fmt.Sprintf(`{"order":%d}`, i)),
			correlation: fmt.Sprintf("corr-%d", i),
		}
	}
	return rows
}

func outgoingCount(t testing.TB, s, where string) int {
	t.Helper()
	var n int
	q := fmt.Sprintf(`select count(*) from %q.jasper_outgoing_envelopes`, s)
	if where != "" {
		q += " where " + where
	}
	if err := testdb.Pool(t).QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// relayProcess is a running `watermill-jasper relay`.
type relayProcess struct {
	t      testing.TB
	cmd    *exec.Cmd
	mu     sync.Mutex
	stdout []string
	stderr []string
	done   chan struct{}
	code   int
}

// startRelay starts the relay on schema s with args (plus --dsn and --schema).
func startRelay(t testing.TB, s string, args ...string) *relayProcess {
	t.Helper()
	return startRelayOn(t, testdb.PostgresDSN(), s, args...)
}

// startRelayOn starts the relay on schema s of the database dsn with args.
func startRelayOn(t testing.TB, dsn, s string, args ...string) *relayProcess {
	t.Helper()
	args = append([]string{"relay", "--dsn", dsn, "--schema", s}, args...)
	cmd := exec.Command(binary, args...)
	cmd.Env = cliEnv()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &relayProcess{t: t, cmd: cmd, done: make(chan struct{})}
	var readers sync.WaitGroup
	read := func(r io.Reader, lines *[]string) {
		defer readers.Done()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			*lines = append(*lines, sc.Text())
			p.mu.Unlock()
		}
	}
	readers.Add(2)
	go read(stdout, &p.stdout)
	go read(stderr, &p.stderr)
	go func() {
		readers.Wait()
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); ok {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -1
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *relayProcess) lines() (stdout, stderr []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.stdout...), append([]string(nil), p.stderr...)
}

func (p *relayProcess) String() string {
	out, errs := p.lines()
	return fmt.Sprintf("stdout:\n%s\nstderr:\n%s", strings.Join(out, "\n"), strings.Join(errs, "\n"))
}

// waitFor waits up to timeout for cond, failing with the process's output.
func (p *relayProcess) waitFor(what string, timeout time.Duration, cond func() bool) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		select {
		case <-p.done:
			if cond() {
				return
			}
			p.t.Fatalf("relay exited (status %d) while waiting for %s:\n%s", p.code, what, p)
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("timed out waiting for %s:\n%s", what, p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *relayProcess) stderrHas(s string) bool {
	_, errs := p.lines()
	for _, l := range errs {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// stop sends sig and waits for the exit status.
func (p *relayProcess) stop(sig syscall.Signal) int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		p.t.Fatalf("relay did not exit after %v:\n%s", sig, p)
	}
	return p.code
}

// consumer receives from queue q into a map of message id -> deliveries.
type consumer struct {
	mu   sync.Mutex
	got  map[string][]amqp091.Delivery
	dups int
}

func consume(t testing.TB, conn *amqp091.Connection, q string) *consumer {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	if err := ch.Qos(1000, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(q, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &consumer{got: map[string][]amqp091.Delivery{}}
	go func() {
		for d := range deliveries {
			c.mu.Lock()
			if len(c.got[d.MessageId]) > 0 {
				c.dups++
			}
			c.got[d.MessageId] = append(c.got[d.MessageId], d)
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *consumer) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.got)
}

// TestRelayJasperRowsToRabbitMQ: rows inserted the way Jasper 2.0 inserts them are relayed to
// RabbitMQ by the relay process, with their ids, payloads and metadata; a row for a non-RabbitMQ
// destination is dead-lettered; SIGTERM stops the relay with a summary and exit status 0.
func TestRelayJasperRowsToRabbitMQ(t *testing.T) {
	t.Parallel()
	conn := rabbit(t)
	q := testQueue(t, conn)
	s := migratedSchema(t)
	rows := makeRows("rabbitmq://queue/"+q, 300)
	insertJasperRows(t, s, 0, rows)
	insertJasperRows(t, s, 0, makeRows("local://durable/invoices", 1))
	c := consume(t, conn, q)

	p := startRelay(t, s, "--to", amqpURL(), "--progress", "200ms", "--poll-interval", "100ms")
	p.waitFor("300 messages on RabbitMQ", 60*time.Second, func() bool { return c.distinct() == len(rows) })
	p.waitFor("the outbox to be empty", 30*time.Second, func() bool { return outgoingCount(t, s, "") == 0 })
	p.waitFor("a progress line", 10*time.Second, func() bool { return p.stderrHas("relay: sent 300 (") })

	c.mu.Lock()
	for _, r := range rows {
		ds := c.got[r.id.String()]
		if len(ds) != 1 {
			t.Errorf("envelope %s arrived %d times", r.id, len(ds))
			continue
		}
		d := ds[0]
		if !bytes.Equal(d.Body, r.body) || d.ContentType != "application/json" || d.DeliveryMode != amqp091.Persistent ||
			d.Headers["jasper_message_type"] != "OrderPlaced" || d.Headers["correlation_id"] != r.correlation ||
			d.Headers["jasper_envelope_id"] != r.id.String() {
			t.Errorf("envelope %s arrived as body %q content-type %q mode %d headers %v", r.id, d.Body, d.ContentType, d.DeliveryMode, d.Headers)
		}
	}
	c.mu.Unlock()

	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("relay exited with status %d after SIGTERM:\n%s", code, p)
	}
	out, errs := p.lines()
	if len(out) != 0 {
		t.Errorf("relay wrote on stdout: %q", out)
	}
	summary := errs[len(errs)-1]
	for _, want := range []string{"relay: stopped after", "sent 300", "dead-lettered 1", "failed 0"} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary %q lacks %q", summary, want)
		}
	}
	for _, l := range errs {
		if strings.Contains(l, ":guest@") {
			t.Errorf("stderr shows the AMQP password: %s", l)
		}
	}
	if !strings.HasPrefix(errs[0], "relay: relaying schema "+s) || !strings.Contains(errs[0], "to amqp://guest:xxxxx@") {
		t.Errorf("first line %q", errs[0])
	}
	var explanation string
	if err := testdb.Pool(t).QueryRow(context.Background(),
		fmt.Sprintf(`select explanation from %q.jasper_dead_letters`, s)).Scan(&explanation); err != nil {
		t.Fatalf("dead letter: %v", err)
	}
	if !strings.Contains(explanation, "local://durable/invoices") || !strings.Contains(explanation, "not a RabbitMQ destination") {
		t.Errorf("dead letter explanation %q", explanation)
	}
}

// TestRelayAfterAKilledRelay kills a relay (SIGKILL) in the middle of its batches. The first
// relay reaches RabbitMQ through a TCP proxy: once it has relayed a first message, the proxy
// holds RabbitMQ's replies and the backlog is committed, so the relay's batch transactions
// lock envelopes whose publishes wait for confirms that never come. The batches die with the
// process (nothing was marked with its node), and a second relay sends everything: every
// message arrives and the outbox ends empty. Duplicates are the at-least-once cost of the
// crash (the held publishes reached RabbitMQ).
func TestRelayAfterAKilledRelay(t *testing.T) {
	t.Parallel()
	const total = 5000
	conn := rabbit(t)
	q := testQueue(t, conn)
	s := migratedSchema(t)
	destination := "rabbitmq://queue/" + q
	c := consume(t, conn, q)

	first, node := stuckRelay(t, s, destination, c, total)
	if code := first.stop(syscall.SIGKILL); code != -1 {
		t.Logf("killed relay exit status %d", code)
	}
	awaitNodeLockFree(t, node)
	if marked := outgoingCount(t, s, "owner_id <> 0"); marked != 0 {
		t.Fatalf("%d envelopes marked with a node's id: a relay marks none", marked)
	}
	t.Logf("killed relay (node %d) while its batches held envelopes locked; %d of %d messages arrived, %d envelopes left",
		node, c.distinct(), total+1, outgoingCount(t, s, ""))
	drainWithNewRelay(t, s, c, total+1)
}

// awaitNodeLockFree waits until no session holds node id's lock. The database ends a dead
// process's sessions, and the lock with them, once it sees their sockets closed: no event to
// wait for, so it is polled.
func awaitNodeLockFree(t *testing.T, id int32) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for nodeLockHolder(t, id) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the node lock of node %d is still held", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// drainWithNewRelay starts a relay straight to RabbitMQ on schema s, waits until want distinct
// messages arrived at c and the outbox is empty, and stops it with SIGINT (exit status 0).
func drainWithNewRelay(t *testing.T, s string, c *consumer, want int) {
	t.Helper()
	p := startRelay(t, s, "--to", amqpURL(), "--poll-interval", "100ms")
	p.waitFor("every envelope on RabbitMQ", 60*time.Second, func() bool { return c.distinct() == want })
	p.waitFor("an empty outbox", 30*time.Second, func() bool { return outgoingCount(t, s, "") == 0 })
	if code := p.stop(syscall.SIGINT); code != 0 {
		t.Fatalf("relay exited with %d after SIGINT:\n%s", code, p)
	}
	c.mu.Lock()
	t.Logf("all %d envelopes arrived; %d duplicates (published by the first relay, never confirmed to it)", want, c.dups)
	c.mu.Unlock()
}

// stuckRelay starts a relay on schema s that reaches RabbitMQ through a TCP proxy, waits until
// it relayed a first message to destination (consumed by c), then holds the broker's replies
// and commits a backlog of n envelopes. It returns the relay, once its batch transactions hold
// envelopes locked whose publishes wait for confirms that never come, and its node id.
// dbArgs are more relay flags (--dsn, --session-dsn).
func stuckRelay(t *testing.T, s, destination string, c *consumer, n int, dbArgs ...string) (*relayProcess, int32) {
	t.Helper()
	proxy, proxied := amqpProxy(t)
	p := startRelay(t, s, append(slices.Clone(dbArgs), "--to", proxied, "--poll-interval", "100ms", "--batch", "200", "--concurrency", "64", "--verbose")...)
	insertJasperRows(t, s, 0, makeRows(destination, 1))
	p.waitFor("the first message on RabbitMQ", 60*time.Second, func() bool { return c.distinct() == 1 })
	// Its confirm arrived once the row is deleted: the relay's AMQP connection and channels
	// are set up, and nothing it holds is waiting for a reply yet.
	p.waitFor("the first envelope deleted", 30*time.Second, func() bool { return outgoingCount(t, s, "") == 0 })
	proxy.HoldReplies()
	bulkInsertJasperRows(t, s, destination, n)
	// More than one: an idle relay's look-ahead locks one row for the length of a statement;
	// a batch locks up to --batch of them until it commits.
	p.waitFor("envelopes locked by the relay's batches", 60*time.Second, func() bool { return lockedOutgoing(t, s) > 1 })
	return p, p.nodeID()
}

// TestRelaySecondSignalStopsWaiting: a relay whose publishes wait for confirms that never come
// (the broker's replies are held) keeps waiting after SIGTERM; a second signal makes it stop
// waiting at once (not after the publisher's close timeout), print its summary, release its
// node lock and exit with status 0. What it had claimed is not lost: a new relay sends
// everything and the outbox ends empty.
func TestRelaySecondSignalStopsWaiting(t *testing.T) {
	t.Parallel()
	const total = 1000
	conn := rabbit(t)
	q := testQueue(t, conn)
	s := migratedSchema(t)
	c := consume(t, conn, q)
	p, node := stuckRelay(t, s, "rabbitmq://queue/"+q, c, total)

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitFor("the relay to stop gracefully", 30*time.Second, func() bool {
		return p.stderrHas("relay: stopping: waiting for the publishes in flight")
	})
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit status %d after the second signal:\n%s", code, p)
	}
	_, errs := p.lines()
	if last := errs[len(errs)-1]; !strings.HasPrefix(last, "relay: stopped after") {
		t.Errorf("last line %q, want the summary:\n%s", last, p)
	}
	if !p.stderrHas("relay: second signal: no longer waiting for the broker's confirms") {
		t.Errorf("stderr does not say that the second signal was seen:\n%s", p)
	}
	// jasperamqp logs this when its Close waited CloseTimeout for the publishes in flight.
	if p.stderrHas("closing with Publish calls still waiting for confirms") {
		t.Errorf("the relay waited for the publisher after the second signal:\n%s", p)
	}
	awaitNodeLockFree(t, node)
	t.Logf("stopped relay (node %d) left %d envelopes marked, %d in the outbox", node,
		outgoingCount(t, s, fmt.Sprintf("owner_id = %d", node)), outgoingCount(t, s, ""))
	drainWithNewRelay(t, s, c, total+1)
}

// lockedOutgoing counts the outgoing envelopes of schema s locked by other transactions (a
// relay's batches): those FOR UPDATE SKIP LOCKED skips, in a transaction rolled back at once.
func lockedOutgoing(t testing.TB, s string) int {
	t.Helper()
	ctx := context.Background()
	tx, err := testdb.Pool(t).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var n int
	q := fmt.Sprintf(`select (select count(*) from %[1]q.jasper_outgoing_envelopes) - (select count(*) from (select id from %[1]q.jasper_outgoing_envelopes for update skip locked) as free)`, s)
	if err := tx.QueryRow(ctx, q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// nodeIDPattern finds the node id in the runtime's "Node lock taken" log line (--verbose).
var nodeIDPattern = regexp.MustCompile(`Node lock taken.* node_id=(-?[0-9]+)`)

// nodeID is the relay's node id, from its log (it must run with --verbose).
func (p *relayProcess) nodeID() int32 {
	p.t.Helper()
	_, errs := p.lines()
	out, _ := p.lines()
	for _, l := range append(errs, out...) {
		if m := nodeIDPattern.FindStringSubmatch(l); m != nil {
			id, err := strconv.ParseInt(m[1], 10, 32)
			if err == nil {
				return int32(id)
			}
		}
	}
	p.t.Fatalf("no node id in the relay's log:\n%s", p)
	return 0
}

// nodeLockHolder returns the backend pid holding node id's lock (Jasper's session advisory
// lock keyed by the id), or 0.
func nodeLockHolder(t testing.TB, id int32) int32 {
	t.Helper()
	var pid int32
	err := testdb.Pool(t).QueryRow(context.Background(), `select coalesce(max(pid), 0) from pg_locks where locktype = 'advisory'
	  and granted and objsubid = 1 and classid = (($1::bigint >> 32) & 4294967295)::oid and objid = ($1::bigint & 4294967295)::oid`,
		int64(id)).Scan(&pid)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// amqpProxy starts a TCP proxy to the test broker and returns it with the broker's URL
// through it.
func amqpProxy(t testing.TB) (*tcpproxy.Proxy, string) {
	t.Helper()
	u, err := url.Parse(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	target := u.Host
	if u.Port() == "" {
		target += ":5672"
	}
	proxy, err := tcpproxy.New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	u.Host = proxy.Addr()
	return proxy, u.String()
}

// TestRelaySurvivesABrokerOutage cuts every connection between the relay and RabbitMQ (a TCP
// proxy in between) in the middle of a backlog for 1.5 s: publishes fail, the destination is
// paused, the publisher reconnects, and every envelope arrives; none is dead-lettered.
func TestRelaySurvivesABrokerOutage(t *testing.T) {
	t.Parallel()
	const total = 3000
	conn := rabbit(t)
	q := testQueue(t, conn)
	s := migratedSchema(t)
	bulkInsertJasperRows(t, s, "rabbitmq://queue/"+q, total)
	c := consume(t, conn, q)

	proxy, proxied := amqpProxy(t)

	p := startRelay(t, s, "--to", proxied, "--verbose", "--progress", "500ms", "--batch", "100", "--workers", "2", "--concurrency", "32")
	p.waitFor("the first messages", 60*time.Second, func() bool { return c.distinct() >= 300 })
	proxy.Cut()
	time.Sleep(1500 * time.Millisecond)
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	p.waitFor("every envelope on RabbitMQ", 90*time.Second, func() bool { return c.distinct() == total })
	p.waitFor("an empty outbox", 30*time.Second, func() bool { return outgoingCount(t, s, "") == 0 })
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit status %d:\n%s", code, p)
	}
	_, errs := p.lines()
	summary := errs[len(errs)-1]
	if !strings.Contains(summary, "dead-lettered 0") || strings.Contains(summary, "failed 0,") {
		t.Errorf("summary %q: want failures (the outage) and no dead letter", summary)
	}
	for _, want := range []string{"connection to RabbitMQ lost", "reconnected to RabbitMQ"} {
		if !p.stderrHas(want) {
			t.Errorf("stderr does not mention %q:\n%s", want, p)
		}
	}
	c.mu.Lock()
	t.Logf("%s; %d duplicates", summary, c.dups)
	c.mu.Unlock()
}

// TestRelayToStdout prints one line per envelope and deletes them.
func TestRelayToStdout(t *testing.T) {
	t.Parallel()
	s := migratedSchema(t)
	long := bytes.Repeat([]byte("é"), 100)
	rows := []jasperRow{
		{id: uuid.New(), destination: "rabbitmq://queue/orders", body: []byte(`{"order":1}`)},
		{id: uuid.New(), destination: "rabbitmq://exchange/events/routing/a.b", body: []byte("line1\nline2")},
		{id: uuid.New(), destination: "tcp://localhost:2222/", body: long},
	}
	insertJasperRows(t, s, 0, rows)
	// A password in the DSN (the test database trusts local connections, so any password works)
	// is never printed.
	const secret = "S3cretPw"
	u, err := url.Parse(testdb.PostgresDSN())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), secret)
	p := startRelay(t, s, "--to", "stdout", "--progress", "0", "--dsn", u.String())
	p.waitFor("three lines", 30*time.Second, func() bool { out, _ := p.lines(); return len(out) == 3 })
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit status %d:\n%s", code, p)
	}
	out, errs := p.lines()
	want := map[string]string{
		rows[0].id.String(): `rabbitmq://queue/orders ` + rows[0].id.String() + ` OrderPlaced 11 bytes "{\"order\":1}"`,
		rows[1].id.String(): `rabbitmq://exchange/events/routing/a.b ` + rows[1].id.String() + ` OrderPlaced 11 bytes "line1\nline2"`,
		rows[2].id.String(): `tcp://localhost:2222/ ` + rows[2].id.String() + ` OrderPlaced 200 bytes "` + strings.Repeat("é", 32) + `"...`,
	}
	for _, line := range out {
		f := strings.Fields(line)
		if len(f) < 2 || want[f[1]] != line {
			t.Errorf("line %q, want %q", line, want[f[min(1, len(f)-1)]])
		}
	}
	if n := outgoingCount(t, s, ""); n != 0 {
		t.Errorf("%d rows left", n)
	}
	if last := errs[len(errs)-1]; !strings.Contains(last, "sent 3") {
		t.Errorf("summary %q", last)
	}
	if !strings.Contains(errs[0], ":xxxxx@") || !strings.Contains(errs[0], " to stdout ") {
		t.Errorf("first line %q does not show the redacted DSN and the target", errs[0])
	}
	for _, l := range append(out, errs...) {
		if strings.Contains(l, secret) {
			t.Errorf("the DSN password is printed: %s", l)
		}
	}
}

func TestRelayErrors(t *testing.T) {
	t.Parallel()
	s := testdb.Schema(t) // not migrated
	dsn := testdb.PostgresDSN()
	assertFailure(t, cli(t, "", nil, "relay", "--dsn", dsn), 2, "relay needs --to", "$AMQP_URL")
	assertFailure(t, cli(t, "", nil, "relay", "--to", "http://u:S3cr3t@host/"), 2, "invalid --to http://u:xxxxx@host/")
	assertFailure(t, cli(t, "", nil, "relay", "--to", "stdout", "--batch", "0"), 2, "--batch must be at least 1")
	assertFailure(t, cli(t, "", nil, "relay", "--to", "stdout", "--batch", "20000"), 2, "--batch must be at most 10000")
	assertFailure(t, cli(t, "", nil, "relay", "--to", "stdout", "--declare-queues"), 2, "--declare-queues needs an AMQP --to")
	assertFailure(t, cli(t, "", nil, "relay", "--to", "stdout", "--dsn", dsn, "--schema", s), 1,
		"schema "+s+" is not ready for the relay", "missing table", "schema migrate --schema "+s)

	// The relay is a runtime: it needs every column the runtime needs, the incoming table's
	// extensions included (its durability agent works on both tables).
	partial := migratedSchema(t)
	dropColumn := func(table, column string) {
		t.Helper()
		if _, err := testdb.Pool(t).Exec(context.Background(), fmt.Sprintf(`alter table %q.%s drop column %s`, partial, table, column)); err != nil {
			t.Fatal(err)
		}
	}
	dropColumn("jasper_incoming_envelopes", "keep_until")
	assertFailure(t, cli(t, "", nil, "relay", "--to", "stdout", "--dsn", dsn, "--schema", partial), 1,
		"schema "+partial+" is not ready for the relay (extension: missing column jasper_incoming_envelopes.keep_until)",
		"run \"watermill-jasper schema migrate --schema "+partial+"\"")
	// A nullable column of Jasper's is one schema migrate adds too.
	dropColumn("jasper_outgoing_envelopes", "saga_id")
	assertFailure(t, cli(t, "", nil, "relay", "--to", "stdout", "--dsn", dsn, "--schema", partial), 1,
		"missing column jasper_outgoing_envelopes.saga_id", "run \"watermill-jasper schema migrate --schema "+partial+"\" (safe")
	// A NOT NULL one it cannot add to existing rows: the hint still sends to schema migrate,
	// which names it.
	dropColumn("jasper_outgoing_envelopes", "destination")
	assertFailure(t, cli(t, "", nil, "relay", "--to", "stdout", "--dsn", dsn, "--schema", partial), 1,
		"missing column jasper_outgoing_envelopes.destination", "run \"watermill-jasper schema migrate --schema "+partial+"\": ",
		"refuses, naming them, the NOT NULL columns")

	m := migratedSchema(t)
	const secret = "Wr0ngS3cret"
	for _, to := range []string{"amqp://guest:" + secret + "@localhost:5672/", "amqp://guest:" + secret + "@127.0.0.1:1/"} {
		r := cli(t, "", nil, "relay", "--to", to, "--dsn", dsn, "--schema", m)
		assertFailure(t, r, 1, "guest:xxxxx@")
		if strings.Contains(r.stderr, secret) {
			t.Errorf("stderr shows the password: %s", r.stderr)
		}
	}
	// $AMQP_URL is the default of --to.
	r := cli(t, "", []string{amqpURLEnv + "=amqp://guest:" + secret + "@127.0.0.1:1/"}, "relay", "--dsn", dsn, "--schema", m)
	assertFailure(t, r, 1, "127.0.0.1:1")
	if strings.Contains(r.stderr, secret) {
		t.Errorf("stderr shows the password: %s", r.stderr)
	}
}

// BenchmarkRelayDrain measures how fast the relay process drains a backlog of 20,000 Jasper rows
// (about 240-byte JSON payloads) into a durable RabbitMQ queue: from the relay's start to an
// empty outbox, every message confirmed by RabbitMQ.
// Run: go test -run '^$' -bench RelayDrain -benchtime 1x ./cmd/watermill-jasper/
func BenchmarkRelayDrain(b *testing.B) {
	const rows = 20000
	conn := rabbit(b)
	for range b.N {
		b.StopTimer()
		q := testQueue(b, conn)
		s := migratedSchema(b)
		bulkInsertJasperRows(b, s, "rabbitmq://queue/"+q, rows)
		args := []string{"--to", amqpURL(), "--progress", "1s"}
		if extra := os.Getenv("RELAY_BENCH_ARGS"); extra != "" {
			args = append(args, strings.Fields(extra)...)
		}
		b.StartTimer()
		start := time.Now()
		p := startRelay(b, s, args...)
		p.waitFor("an empty outbox", 5*time.Minute, func() bool { return outgoingCount(b, s, "") == 0 })
		elapsed := time.Since(start)
		b.StopTimer()
		if code := p.stop(syscall.SIGTERM); code != 0 {
			b.Fatalf("exit status %d:\n%s", code, p)
		}
		ch, err := conn.Channel()
		if err != nil {
			b.Fatal(err)
		}
		qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		_ = ch.Close()
		if err != nil || qi.Messages != rows {
			b.Fatalf("queue holds %d messages (%v), want %d", qi.Messages, err, rows)
		}
		_, errs := p.lines()
		ps := p.cmd.ProcessState
		b.Logf("%d rows drained in %v = %.0f msgs/s (process start to empty outbox); relay CPU %v user + %v system; %s", rows,
			elapsed.Round(time.Millisecond), float64(rows)/elapsed.Seconds(), ps.UserTime().Round(time.Millisecond),
			ps.SystemTime().Round(time.Millisecond), strings.TrimPrefix(errs[len(errs)-1], "relay: "))
		b.ReportMetric(float64(rows)/elapsed.Seconds(), "msgs/s")
		b.StartTimer()
	}
}
