// Command watermill-jasper manages the Jasper durable inbox/outbox tables used by
// watermill-jasper: it prints, creates and checks the schema and counts, releases or deletes
// the stored envelopes, on PostgreSQL and SQL Server.
//
// Run "watermill-jasper --help" for the commands, and "watermill-jasper COMMAND --help" for
// each command's flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// main runs the command line with SIGINT and SIGTERM cancelling the context and exits with
// run's status.
func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr})
	stop()
	os.Exit(code)
}

// run runs the command line args and returns the exit status: 0 on success, 1 on failure,
// 2 on a usage error. A failure prints exactly one line on stderr.
func run(ctx context.Context, args []string, e *env) int {
	root := newRootCmd(e)
	root.SetArgs(append([]string{}, args...)) // never nil: cobra would read os.Args
	err := root.ExecuteContext(ctx)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsageShown):
		return 2
	}
	fmt.Fprintln(e.stderr, errorLine(err, args))
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// newRootCmd returns the command tree (the command table of commands.go), running on e: help
// on e.stdout, errors returned to run, which prints them. Without arguments it prints its usage
// on stderr (exit status 2); "help COMMAND [SUBCOMMAND]" prints the command's.
func newRootCmd(e *env) *cobra.Command {
	root := &cobra.Command{
		Use: program,
		Long: program + " manages the tables of Jasper's durable inbox/outbox that watermill-jasper uses " +
			"(jasper_incoming_envelopes, jasper_outgoing_envelopes, jasper_dead_letters), on PostgreSQL and SQL Server.",
		Example: examples([]string{
			"schema migrate --dsn postgres://app@db.internal:5432/app --schema messaging",
			"schema verify --schema messaging",
			"storage counts --dsn 'sqlserver://app@sql.internal:1433?database=app'",
		}),
		Args:          cobra.ArbitraryArgs,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetFlagErrorFunc(flagError)
	root.SetHelpTemplate(rootHelp)
	for _, c := range commands {
		root.AddCommand(c.cobraCommand(e))
	}
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [command [subcommand]]",
		Short: "print the help of a command",
		Args:  cobra.ArbitraryArgs,
		RunE:  func(c *cobra.Command, args []string) error { return helpOf(c.Root(), args) },
	})
	root.RunE = func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			return showUsage(c, e.stderr)
		}
		return usageErrorf("unknown command %q, want one of %s (see %s --help)", args[0], subNames(c), program)
	}
	return root
}

// errorLine renders err as the one line printed on stderr: prefixed "watermill-jasper: ",
// newlines flattened, and without the password of any DSN the process was given.
func errorLine(err error, args []string) string {
	msg := strings.ReplaceAll(err.Error(), program+": ", "")
	msg = strings.Join(strings.FieldsFunc(msg, func(r rune) bool { return r == '\n' || r == '\r' }), " ")
	for _, dsn := range candidateDSNs(args) {
		msg = scrub(msg, dsn)
	}
	return program + ": " + strings.TrimSpace(msg)
}

// candidateDSNs returns $DATABASE_URL and every argument that looks like a URL: the last
// defence against printing a password that a driver copied into an error.
func candidateDSNs(args []string) []string {
	out := []string{os.Getenv(dsnEnv)}
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			if _, v, ok := strings.Cut(a, "="); ok {
				a = v
			}
		}
		if strings.Contains(a, "://") || strings.Contains(strings.ToLower(a), "password=") {
			out = append(out, a)
		}
	}
	return out
}
