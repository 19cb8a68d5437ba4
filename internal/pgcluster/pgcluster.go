// Package pgcluster runs a private PostgreSQL server: initdb in a temporary directory, its own
// settings (fsync off, a free port on 127.0.0.1, trust authentication), pg_ctl start, and
// crash-like stops (pg_ctl stop -m immediate) followed by restarts that recover from the
// write-ahead log. Tests use it through internal/testdb; the soak command uses it directly
// to restart its own database mid-run.
//
// When the process runs as root, initdb and postgres run as the postgres user (initdb
// refuses root).
package pgcluster

import (
	"context"
	"errors"
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
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoServerPrograms is wrapped by the error of Bin (and New) when PostgreSQL's server
// programs cannot be found.
var ErrNoServerPrograms = errors.New("a private PostgreSQL cluster needs PostgreSQL's server programs (initdb, pg_ctl): apt-get install -y postgresql")

// Options configure a Cluster.
type Options struct {
	// Bin is the directory of PostgreSQL's server programs. Default: Bin("").
	Bin string
	// Settings are extra postgresql.conf lines (e.g. "wal_level = logical").
	Settings []string
	// Database is created after the first start. Default "test".
	Database string
}

// Cluster is a private PostgreSQL server. Close stops it (immediate) and removes its files.
type Cluster struct {
	bin  string // PostgreSQL's bin directory
	root string // temporary directory: data directory and server log
	dir  string // data directory
	port int
	db   string
	cred *syscall.Credential // run as this user when the process runs as root
}

// New initdb's and starts a private cluster and creates its database. On error nothing is
// left behind.
func New(ctx context.Context, opts Options) (_ *Cluster, err error) {
	bin, err := Bin(opts.Bin)
	if err != nil {
		return nil, err
	}
	c := &Cluster{bin: bin, db: opts.Database}
	if c.db == "" {
		c.db = "test"
	}
	c.root, err = os.MkdirTemp("", "wj-pg-")
	if err != nil {
		return nil, fmt.Errorf("private PostgreSQL cluster: %w", err)
	}
	defer func() {
		if err != nil {
			_ = c.Close()
		}
	}()
	c.dir = filepath.Join(c.root, "data")
	if c.cred, err = ServerUser(c.root); err != nil {
		return nil, fmt.Errorf("private PostgreSQL cluster: %w", err)
	}
	if out, err := c.command(ctx, "initdb", "-D", c.dir, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("private PostgreSQL cluster: initdb: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if c.port, err = FreePort(); err != nil {
		return nil, err
	}
	conf := append([]string{
		fmt.Sprintf("port = %d", c.port), "listen_addresses = '127.0.0.1'", "unix_socket_directories = ''",
		"fsync = off", "full_page_writes = off", "shared_buffers = 32MB", "max_connections = 100",
	}, opts.Settings...)
	f, err := os.OpenFile(filepath.Join(c.dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("private PostgreSQL cluster: %w", err)
	}
	if _, err := f.WriteString("\n" + strings.Join(conf, "\n") + "\n"); err != nil {
		f.Close()
		return nil, fmt.Errorf("private PostgreSQL cluster: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("private PostgreSQL cluster: %w", err)
	}
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, c.DSNOf("postgres"))
	if err != nil {
		return nil, fmt.Errorf("private PostgreSQL cluster: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{c.db}.Sanitize()); err != nil {
		return nil, fmt.Errorf("private PostgreSQL cluster: create database %s: %w", c.db, err)
	}
	return c, nil
}

// DSN is the URL of the cluster's database as user postgres (no password: trust
// authentication).
func (c *Cluster) DSN() string { return c.DSNOf(c.db) }

// DSNOf is the URL of database db of the cluster as user postgres.
func (c *Cluster) DSNOf(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// Port is the cluster's TCP port.
func (c *Cluster) Port() int { return c.port }

// Addr is the cluster's address, "127.0.0.1:port".
func (c *Cluster) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)) }

// Start starts the server and waits (up to a minute) until it accepts connections.
func (c *Cluster) Start(ctx context.Context) error {
	if err := c.pgCtl(ctx, "start", "-w", "-t", "60", "-l", filepath.Join(c.root, "server.log")); err != nil {
		return fmt.Errorf("private PostgreSQL cluster: start: %w\n%s", err, c.ServerLog())
	}
	return nil
}

// Crash stops the server as a crash would (pg_ctl stop -m immediate: no checkpoint, every
// backend killed); Start recovers it from the write-ahead log.
func (c *Cluster) Crash(ctx context.Context) error {
	if err := c.pgCtl(ctx, "stop", "-m", "immediate", "-w"); err != nil {
		return fmt.Errorf("private PostgreSQL cluster: stop -m immediate: %w", err)
	}
	return nil
}

// WaitReady waits until the cluster accepts connections (after Start, for callers that
// started it from another goroutine), up to timeout.
func (c *Cluster) WaitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := pgx.Connect(ctx, c.DSN())
		if err == nil {
			return conn.Close(ctx)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("private PostgreSQL cluster not ready after %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close stops the server if it runs (immediate) and removes its files. It is idempotent.
func (c *Cluster) Close() error {
	if c.root == "" {
		return nil
	}
	var err error
	if _, statErr := os.Stat(filepath.Join(c.dir, "postmaster.pid")); statErr == nil {
		err = c.pgCtl(context.Background(), "stop", "-m", "immediate", "-w")
	}
	if rmErr := os.RemoveAll(c.root); rmErr != nil && err == nil {
		err = rmErr
	}
	c.root = ""
	if err != nil {
		return fmt.Errorf("private PostgreSQL cluster: close: %w", err)
	}
	return nil
}

// ServerLog is the tail of the server's log, for a failure message.
func (c *Cluster) ServerLog() string {
	b, _ := os.ReadFile(filepath.Join(c.root, "server.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// pgCtl runs pg_ctl on the data directory.
func (c *Cluster) pgCtl(ctx context.Context, args ...string) error {
	out, err := c.command(ctx, "pg_ctl", append([]string{"-D", c.dir}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (c *Cluster) command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, prog), args...)
	cmd.Dir = c.root
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd
}

// Bin returns the directory of PostgreSQL's server programs: dir when given (it must hold
// initdb), else Debian's /usr/lib/postgresql/N/bin of the newest N, else the directory of
// initdb on $PATH.
func Bin(dir string) (string, error) {
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err != nil {
			return "", fmt.Errorf("%w (no initdb in %s)", ErrNoServerPrograms, dir)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", ErrNoServerPrograms
}

// ServerUser returns the credential to run PostgreSQL's programs (and PgBouncer) with: nil
// when this process is not root; when it is (they refuse to run as root), the postgres user's,
// which is also given dir (their working directory).
func ServerUser(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs a postgres user to run PostgreSQL's programs as: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// FreePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("private PostgreSQL cluster: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
