package main

// The database connection shared by every command: the --dsn and --schema flags, opening a
// handle for the DSN's dialect, and keeping passwords out of every line the CLI prints.
//
// A command that needs the database and has no flags of its own is set up by onDB; one with
// flags registers --dsn and --schema with newDBFlags and runs on the database with run (or
// with, when it takes arguments):
//
//	db := newDBFlags(fs)
//	... // the command's own flags
//	return db.run(nil, func(ctx context.Context, e *env, drv database.Driver, cfg schema.Config) error {
//		... // drv: pinged database.Driver, cfg: validated schema.Config; closed after the return
//	})

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/pflag"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/schema"
	"github.com/watermill-jasper/watermill-jasper/sqlserver"
)

const (
	// dsnEnv names the variable holding the default DSN.
	dsnEnv = "DATABASE_URL"
	// defaultDSN is used when neither --dsn nor $DATABASE_URL is set.
	defaultDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	// connectTimeout bounds opening and pinging the database, so an unreachable one fails fast.
	connectTimeout = 10 * time.Second
	// redactedSecret replaces passwords in everything printed.
	redactedSecret = "xxxxx"
)

// Help texts of the shared flags (also shown by the root usage).
const (
	dsnUsage = "database `URL`: postgres://user:password@host:5432/db?sslmode=disable (or postgresql://...) " +
		"for PostgreSQL, sqlserver://user:password@host:1433?database=db for SQL Server " +
		"(default: $" + dsnEnv + ", else " + defaultDSN + ")"
	schemaUsage = "`NAME` of the schema holding the tables: letters, digits and underscores " +
		"(default: public on PostgreSQL, dbo on SQL Server)"
)

// stringFlag is a string flag that remembers whether it was given, so that an explicitly
// empty value can be told from an absent one.
type stringFlag struct {
	value string
	set   bool
}

// String returns the value.
func (s *stringFlag) String() string {
	if s == nil {
		return ""
	}
	return s.value
}

// Type names the value in the help when the usage names none.
func (s *stringFlag) Type() string { return "string" }

// Set records the value given on the command line.
func (s *stringFlag) Set(v string) error {
	s.value, s.set = v, true
	return nil
}

// dbFlags are the --dsn and --schema flags of every command that uses the database.
type dbFlags struct {
	dsn    stringFlag
	schema stringFlag
	compat stringFlag
}

// register adds --dsn, --schema and --compatibility to fs.
func (f *dbFlags) register(fs *pflag.FlagSet) {
	fs.Var(&f.dsn, "dsn", dsnUsage)
	fs.Var(&f.schema, "schema", schemaUsage)
	fs.Var(&f.compat, "compatibility", "who else uses the schema: empty (this library, and .NET nodes that only relay), or "+
		string(schema.Jasper2)+" when .NET Jasper 2.0 nodes share it (docs/coexistence.md)")
}

// newDBFlags returns the --dsn and --schema flags, registered on fs.
func newDBFlags(fs *pflag.FlagSet) *dbFlags {
	f := &dbFlags{}
	f.register(fs)
	return f
}

// dbRunFunc runs a command on the database that dbFlags.open opened: drv and its cfg.
type dbRunFunc func(ctx context.Context, e *env, drv database.Driver, cfg schema.Config) error

// with opens the database (dbFlags.open), runs fn on it and closes it.
func (f *dbFlags) with(ctx context.Context, e *env, fn dbRunFunc) error {
	drv, cfg, closeDB, err := f.open(ctx)
	if err != nil {
		return err
	}
	defer closeDB()
	return fn(ctx, e, drv, cfg)
}

// run is the function of a command that takes no arguments: it runs check (when not nil: the
// checks of the command's own flags, before connecting), then fn on the database.
func (f *dbFlags) run(check func() error, fn dbRunFunc) runFunc {
	return func(ctx context.Context, e *env, _ []string) error {
		if check != nil {
			if err := check(); err != nil {
				return err
			}
		}
		return f.with(ctx, e, fn)
	}
}

// onDB is the setup of a command whose only flags are --dsn and --schema and which takes no
// arguments: it runs fn on the database.
func onDB(fn dbRunFunc) func(*pflag.FlagSet) runFunc {
	return func(fs *pflag.FlagSet) runFunc { return newDBFlags(fs).run(nil, fn) }
}

// DSN returns the database URL: --dsn, else $DATABASE_URL, else defaultDSN. An explicitly
// empty --dsn is a usage error.
func (f *dbFlags) DSN() (string, error) {
	if f.dsn.set {
		if strings.TrimSpace(f.dsn.value) == "" {
			return "", usageErrorf("--dsn is empty: give a database URL such as %s", defaultDSN)
		}
		return f.dsn.value, nil
	}
	if v := os.Getenv(dsnEnv); v != "" {
		return v, nil
	}
	return defaultDSN, nil
}

// dialect returns the dialect named by the DSN's scheme, without connecting.
func (f *dbFlags) dialect() (database.Dialect, error) {
	dsn, err := f.DSN()
	if err != nil {
		return "", err
	}
	return dialectOfDSN(dsn)
}

// config returns the validated, normalized schema config for dialect d: --schema, else the
// dialect's default schema. An explicitly empty or invalid name is a usage error.
func (f *dbFlags) config(d database.Dialect) (schema.Config, error) {
	name := schema.DefaultSchema(d)
	if f.schema.set {
		name = f.schema.value
		if err := schema.ValidateIdentifier(name); err != nil {
			return schema.Config{}, &usageError{fmt.Errorf("invalid --schema: %w", err)}
		}
	}
	compat := schema.Compatibility(f.compat.value)
	if err := compat.Validate(); err != nil {
		return schema.Config{}, &usageError{fmt.Errorf("invalid --compatibility: %w", err)}
	}
	cfg, err := schema.Config{Dialect: d, Schema: name, Compatibility: compat}.Normalized()
	if err != nil {
		return schema.Config{}, &usageError{fmt.Errorf("invalid --schema: %w", err)}
	}
	return cfg, nil
}

// open checks --schema, then connects to --dsn and pings the database. It returns the
// driver, the schema config for the database's dialect and the function that closes the
// pool. Every error is one line without the DSN's password.
func (f *dbFlags) open(ctx context.Context) (database.Driver, schema.Config, func(), error) {
	dsn, err := f.DSN()
	if err != nil {
		return nil, schema.Config{}, nil, err
	}
	d, err := dialectOfDSN(dsn)
	if err != nil {
		return nil, schema.Config{}, nil, err
	}
	cfg, err := f.config(d)
	if err != nil {
		return nil, schema.Config{}, nil, err
	}
	db, closeDB, err := openDB(ctx, "--dsn", dsn)
	if err != nil {
		return nil, schema.Config{}, nil, err
	}
	return db, cfg, closeDB, nil
}

// dialectOfDSN picks the dialect from the DSN's scheme: postgres:// and postgresql:// are
// PostgreSQL, sqlserver:// is SQL Server. The error never quotes the DSN.
func dialectOfDSN(dsn string) (database.Dialect, error) { return dialectOf("--dsn", dsn) }

// dialectOf is dialectOfDSN for the DSN of the flag named flagName.
func dialectOf(flagName, dsn string) (database.Dialect, error) {
	scheme, _, ok := strings.Cut(dsn, "://")
	if !ok {
		return "", usageErrorf("%s is not a database URL: want postgres://..., postgresql://... or sqlserver://...", flagName)
	}
	switch strings.ToLower(scheme) {
	case "postgres", "postgresql":
		return database.Postgres, nil
	case "sqlserver":
		return database.SQLServer, nil
	}
	if schemeRE.MatchString(scheme) {
		return "", usageErrorf("%s scheme %q is not supported: want postgres://, postgresql:// or sqlserver://", flagName, scheme)
	}
	return "", usageErrorf("%s is not a database URL: want postgres://..., postgresql://... or sqlserver://...", flagName)
}

var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]{0,20}$`)

// openDB opens a pool for dsn and pings it, giving up after connectTimeout, and returns its
// driver: database.FromPgx over a pgxpool for postgres:// and postgresql://,
// sqlserver.FromStdSQL over database/sql with go-mssqldb for sqlserver:// (the CLI supports
// SQL Server, so it links go-mssqldb; a library user links it only through package
// sqlserver). closeFn closes the pool. Errors are one line, name the flag flagName (--dsn)
// and never contain the DSN's password.
func openDB(ctx context.Context, flagName, dsn string) (db database.Driver, closeFn func(), err error) {
	d, err := dialectOf(flagName, dsn)
	if err != nil {
		return nil, nil, err
	}
	if _, err := url.Parse(dsn); err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error quotes the whole URL
		}
		return nil, nil, redactError(usageErrorf("invalid %s: %v", flagName, err), dsn)
	}
	pingCtx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	switch d {
	case database.Postgres:
		pcfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			return nil, nil, redactError(usageErrorf("invalid %s for PostgreSQL: %s", flagName, parseConfigMessage(err)), dsn)
		}
		if pcfg.ConnConfig.ConnectTimeout == 0 {
			pcfg.ConnConfig.ConnectTimeout = connectTimeout
		}
		pool, err := pgxpool.NewWithConfig(pingCtx, pcfg)
		if err != nil {
			return nil, nil, redactError(fmt.Errorf("cannot connect to PostgreSQL: %w", err), dsn)
		}
		if err := pool.Ping(pingCtx); err != nil {
			pool.Close()
			return nil, nil, redactError(fmt.Errorf("cannot connect to PostgreSQL: %w", err), dsn)
		}
		return database.FromPgx(pool), pool.Close, nil
	default:
		sqlDB, err := sql.Open("sqlserver", dsn)
		if err != nil {
			return nil, nil, redactError(usageErrorf("invalid %s for SQL Server: %v", flagName, err), dsn)
		}
		if err := sqlDB.PingContext(pingCtx); err != nil {
			_ = sqlDB.Close()
			return nil, nil, redactError(fmt.Errorf("cannot connect to SQL Server: %w", err), dsn)
		}
		drv, err := sqlserver.FromStdSQL(sqlDB)
		if err != nil {
			_ = sqlDB.Close()
			return nil, nil, redactError(err, dsn)
		}
		return drv, func() { _ = sqlDB.Close() }, nil
	}
}

var parseConfigPrefix = regexp.MustCompile("^cannot parse `[^`]*`: ")

// parseConfigMessage is pgx's parse error without the (redacted) connection string it quotes.
func parseConfigMessage(err error) string {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return parseConfigPrefix.ReplaceAllString(pe.Error(), "")
	}
	return err.Error()
}

// redactDSN returns dsn with its password (in the user info, or in a password-like query
// parameter) replaced by xxxxx. A DSN that is not a URL is replaced entirely.
func redactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		if scheme, _, ok := strings.Cut(dsn, "://"); ok && schemeRE.MatchString(scheme) {
			return scheme + "://(unreadable DSN, redacted)"
		}
		return "(unreadable DSN, redacted)"
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), redactedSecret)
		}
	}
	q := u.Query()
	changed := false
	for k := range q {
		if isSecretKey(k) {
			for i := range q[k] {
				q[k][i] = redactedSecret
			}
			changed = true
		}
	}
	if changed {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// isSecretKey reports whether a DSN query parameter holds a secret.
func isSecretKey(k string) bool {
	k = strings.ToLower(k)
	for _, s := range []string{"password", "passwd", "pwd", "secret", "token"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

// dsnSecrets returns the secrets of dsn (passwords, raw and decoded), longest first. For a
// DSN that is not a valid URL, everything between the first colon after the scheme and the
// last @ counts as a password.
func dsnSecrets(dsn string) []string {
	var out []string
	add := func(s string) {
		if s != "" && s != redactedSecret {
			out = append(out, s)
			if dec, err := url.QueryUnescape(s); err == nil && dec != s {
				out = append(out, dec)
			}
		}
	}
	_, rest, ok := strings.Cut(dsn, "://")
	if !ok {
		rest = dsn
	}
	authority := rest
	if i := strings.IndexAny(authority, "/?#"); i >= 0 && !strings.Contains(authority[i:], "@") {
		authority = authority[:i]
	}
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		if _, pw, ok := strings.Cut(authority[:at], ":"); ok {
			add(pw)
		}
	}
	if u, err := url.Parse(dsn); err == nil {
		if u.User != nil {
			if pw, ok := u.User.Password(); ok {
				add(pw)
			}
		}
		for k, vs := range u.Query() {
			if isSecretKey(k) {
				for _, v := range vs {
					add(v)
				}
			}
		}
	}
	for _, kv := range strings.FieldsFunc(rest, func(r rune) bool { return r == '?' || r == '&' || r == ';' || r == ' ' }) {
		if k, v, ok := strings.Cut(kv, "="); ok && isSecretKey(k) {
			add(strings.Trim(v, `'"`))
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// scrub removes dsn and its secrets from msg.
func scrub(msg, dsn string) string {
	if dsn == "" {
		return msg
	}
	msg = strings.ReplaceAll(msg, dsn, redactDSN(dsn))
	for _, s := range dsnSecrets(dsn) {
		msg = strings.ReplaceAll(msg, s, redactedSecret)
	}
	return msg
}

// redactedError is an error whose message has been scrubbed of a DSN's secrets; errors.Is
// and errors.As still see the original.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactError returns err with the DSN, and every other URL given, and their passwords
// removed from its message.
func redactError(err error, dsn string, more ...string) error {
	if err == nil {
		return nil
	}
	return &redactedError{msg: scrubAll(scrub(err.Error(), dsn), more), err: err}
}
