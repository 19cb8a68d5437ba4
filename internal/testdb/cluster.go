package testdb

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/watermill-jasper/watermill-jasper/internal/dbx"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/internal/store/postgres"
)

// Cluster is a private PostgreSQL server of one test: initdb in a temporary directory, its
// own settings, a free port on 127.0.0.1, trust authentication, database "test". Tests that
// need other server settings than the shared server's (wal_level=logical), or stop, crash
// and restart the database, use one; the shared server is never touched. It is stopped
// (immediate) and removed when the test ends.
type Cluster struct {
	t    testing.TB
	bin  string // PostgreSQL's bin directory
	dir  string // data directory
	port int
	cred *syscall.Credential // run as this user when the test runs as root (initdb refuses root)
}

// StartCluster initdb's and starts a private cluster with the given postgresql.conf lines
// (e.g. "wal_level = logical"). A machine without PostgreSQL's server binaries fails the
// test saying how to install them.
func StartCluster(t testing.TB, settings ...string) *Cluster {
	t.Helper()
	c := &Cluster{t: t, bin: postgresBin(t)}
	root, err := os.MkdirTemp("", "wj-pg-")
	if err != nil {
		t.Fatal(err)
	}
	c.dir = filepath.Join(root, "data")
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root: run them as the postgres user.
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("private PostgreSQL cluster: running as root needs a postgres user to run initdb as: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(root, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if _, err := os.Stat(filepath.Join(c.dir, "postmaster.pid")); err == nil {
			_ = c.pgCtl("stop", "-m", "immediate", "-w")
		}
		_ = os.RemoveAll(root)
	})
	c.run("initdb", "-D", c.dir, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
	c.port = freePort(t)
	conf := append([]string{
		fmt.Sprintf("port = %d", c.port), "listen_addresses = '127.0.0.1'", "unix_socket_directories = ''",
		"fsync = off", "full_page_writes = off", "shared_buffers = 32MB", "max_connections = 100",
	}, settings...)
	f, err := os.OpenFile(filepath.Join(c.dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("\n" + strings.Join(conf, "\n") + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	c.Start()
	conn, err := pgx.Connect(context.Background(), c.dsn("postgres"))
	if err != nil {
		t.Fatalf("private PostgreSQL cluster: connect: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "CREATE DATABASE test"); err != nil {
		t.Fatalf("private PostgreSQL cluster: create database test: %v", err)
	}
	return c
}

// DSN is the URL of the cluster's database "test" as user postgres.
func (c *Cluster) DSN() string { return c.dsn("test") }

func (c *Cluster) dsn(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// Port is the cluster's TCP port.
func (c *Cluster) Port() int { return c.port }

// Start starts the server and waits until it accepts connections.
func (c *Cluster) Start() {
	c.t.Helper()
	if err := c.pgCtl("start", "-w", "-t", "60", "-l", filepath.Join(filepath.Dir(c.dir), "server.log")); err != nil {
		c.t.Fatalf("private PostgreSQL cluster: start: %v\n%s", err, c.serverLog())
	}
}

// Crash stops the server as a crash would (pg_ctl stop -m immediate: no checkpoint, every
// backend killed); Start recovers it from the write-ahead log.
func (c *Cluster) Crash() {
	c.t.Helper()
	if err := c.pgCtl("stop", "-m", "immediate", "-w"); err != nil {
		c.t.Fatalf("private PostgreSQL cluster: stop -m immediate: %v", err)
	}
}

// serverLog is the tail of the server's log, for a failure message.
func (c *Cluster) serverLog() string {
	b, _ := os.ReadFile(filepath.Join(filepath.Dir(c.dir), "server.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// pgCtl runs pg_ctl on the data directory.
func (c *Cluster) pgCtl(args ...string) error {
	cmd := c.command("pg_ctl", append([]string{"-D", c.dir}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// run runs a PostgreSQL program and fails the test on error.
func (c *Cluster) run(prog string, args ...string) {
	c.t.Helper()
	if out, err := c.command(prog, args...).CombinedOutput(); err != nil {
		c.t.Fatalf("private PostgreSQL cluster: %s: %v\n%s", prog, err, out)
	}
}

func (c *Cluster) command(prog string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.bin, prog), args...)
	cmd.Dir = filepath.Dir(c.dir)
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd
}

// postgresBin finds PostgreSQL's server programs (Debian: /usr/lib/postgresql/N/bin, the
// newest N), or fails the test saying how to install them.
func postgresBin(t testing.TB) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	t.Fatal("a private PostgreSQL cluster needs PostgreSQL's server programs (initdb, pg_ctl): apt-get install -y postgresql")
	return ""
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitReady waits until the cluster accepts connections again (after Start, for callers that
// started it from another goroutine), up to timeout.
func (c *Cluster) WaitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := pgx.Connect(ctx, c.DSN())
		if err == nil {
			return conn.Close(ctx)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("private PostgreSQL cluster not ready after %s: %w", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Driver returns a pgx pool on the cluster's database (short connect timeout, so that a
// stopped server fails fast) and its store driver; the pool is closed when the test ends.
func (c *Cluster) Driver(t testing.TB) (store.Driver, *pgxpool.Pool) {
	t.Helper()
	pc, err := pgxpool.ParseConfig(c.DSN())
	if err != nil {
		t.Fatal(err)
	}
	pc.ConnConfig.ConnectTimeout = 2 * time.Second
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return driver(t, postgres.New, dbx.FromPgx(pool), nil), pool
}
