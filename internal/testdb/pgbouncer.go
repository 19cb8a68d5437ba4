package testdb

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/pgcluster"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
)

// PgBouncer is a private PgBouncer of one test in front of the test database (PostgresDSN),
// in transaction pooling mode, on a free port of 127.0.0.1, with trust authentication. Its
// server connections carry the application_name ApplicationName, so that the test can find
// what they hold in pg_locks and pg_stat_activity. It is stopped when the test ends.
type PgBouncer struct {
	t    testing.TB
	port int
	// ApplicationName is the application_name of the pooler's server connections.
	ApplicationName string
	target          *pgx.ConnConfig
}

// pgbouncerHint says how to install PgBouncer.
const pgbouncerHint = "PgBouncer is not installed: apt-get install -y pgbouncer (.ci/run installs it)"

// StartPgBouncer starts a PgBouncer in transaction mode in front of the test database with
// at most poolSize server connections. A machine without the pgbouncer program fails the
// test saying how to install it.
func StartPgBouncer(t testing.TB, poolSize int) *PgBouncer {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/pgbouncer"); serr != nil {
			t.Fatal(pgbouncerHint)
		}
		bin = "/usr/sbin/pgbouncer"
	}
	target, err := pgx.ParseConfig(PostgresDSN())
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "wj-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	port, err := pgcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	b := &PgBouncer{t: t, port: port, ApplicationName: fmt.Sprintf("wj-pgbouncer-%d", port), target: target}

	ini := fmt.Sprintf(`[databases]
%s = host=%s port=%d dbname=%s application_name=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = transaction
default_pool_size = %d
max_client_conn = 1000
server_lifetime = 3600
server_idle_timeout = 600
logfile = %s
pidfile = %s
`, target.Database, target.Host, target.Port, target.Database, b.ApplicationName,
		port, filepath.Join(dir, "userlist.txt"), poolSize,
		filepath.Join(dir, "pgbouncer.log"), filepath.Join(dir, "pgbouncer.pid"))
	files := map[string]string{
		"pgbouncer.ini": ini,
		"userlist.txt":  fmt.Sprintf("%q \"\"\n", target.User),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "-q", filepath.Join(dir, "pgbouncer.ini")) // -q: log to the file only
	// PgBouncer refuses to run as root: as root it runs as the postgres user.
	cred, err := pgcluster.ServerUser(dir)
	if err != nil {
		t.Fatalf("PgBouncer: %v", err)
	}
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start PgBouncer: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT) // immediate shutdown
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", b.Addr(), time.Second)
		if err == nil {
			_ = c.Close()
			break
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			t.Fatalf("PgBouncer exited at start (%v):\n%s", err, log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("PgBouncer did not listen on %s within 10 s", b.Addr())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return b
}

// Addr is the pooler's host:port.
func (b *PgBouncer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)) }

// DSN is the URL of the test database through the pooler, with the given query parameters
// ("default_query_exec_mode=exec").
func (b *PgBouncer) DSN(params ...string) string {
	u := url.URL{Scheme: "postgres", User: url.User(b.target.User), Host: b.Addr(), Path: "/" + b.target.Database}
	u.RawQuery = strings.Join(append([]string{"sslmode=disable"}, params...), "&")
	return u.String()
}

// Driver returns a pgx pool of at most maxConns connections through the pooler, in query
// exec mode mode (pgx.QueryExecModeExec or SimpleProtocol: the modes a pooler in transaction
// mode needs), and its store driver; the pool is closed when the test ends.
func (b *PgBouncer) Driver(t testing.TB, maxConns int32, mode pgx.QueryExecMode) (store.Driver, *pgxpool.Pool) {
	t.Helper()
	pc, err := pgxpool.ParseConfig(b.DSN())
	if err != nil {
		t.Fatal(err)
	}
	pc.MaxConns = maxConns
	pc.ConnConfig.DefaultQueryExecMode = mode
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return driver(t, postgres.New, dbx.FromPgx(pool), nil), pool
}

// AdvisoryLocks counts the advisory locks held by the pooler's server connections: a
// session lock taken through the pooler stays on a server connection other clients then use.
func (b *PgBouncer) AdvisoryLocks(t testing.TB) int64 {
	t.Helper()
	var n int64
	err := Pool(t).QueryRow(context.Background(), `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND a.application_name = $1`, b.ApplicationName).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
