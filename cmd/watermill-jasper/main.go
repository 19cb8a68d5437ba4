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
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr})
	stop()
	os.Exit(code)
}

// run runs the command line args and returns the exit status: 0 on success, 1 on failure,
// 2 on a usage error. A failure prints exactly one line on stderr.
func run(ctx context.Context, args []string, e *env) int {
	err := dispatch(ctx, e, args)
	switch {
	case err == nil, errors.Is(err, errHelp):
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

func dispatch(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		printRootUsage(e.stderr)
		return errUsageShown
	}
	switch args[0] {
	case "-h", "-help", "--help":
		printRootUsage(e.stdout)
		return errHelp
	case "help":
		if len(args) > 1 {
			if c, ok := findCommand(args[1]); ok {
				return c.run(ctx, e, append(args[2:], "--help"))
			}
			return usageErrorf("unknown command %q (see %s --help)", args[1], program)
		}
		printRootUsage(e.stdout)
		return errHelp
	}
	if c, ok := findCommand(args[0]); ok {
		return c.run(ctx, e, args[1:])
	}
	if strings.HasPrefix(args[0], "-") {
		return usageErrorf("give a command (%s) before the flags (see %s --help)", commandNames(), program)
	}
	return usageErrorf("unknown command %q, want one of %s (see %s --help)", args[0], commandNames(), program)
}

func findCommand(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func commandNames() string {
	names := make([]string, len(commands))
	for i, c := range commands {
		names[i] = c.name
	}
	return strings.Join(names, ", ")
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

func printRootUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage:\n  %s <command> [<subcommand>] [flags]\n\n", program)
	writeParagraphs(w, program+" manages the tables of Jasper's durable inbox/outbox that watermill-jasper uses "+
		"(jasper_incoming_envelopes, jasper_outgoing_envelopes, jasper_dead_letters), on PostgreSQL and SQL Server.")
	fmt.Fprintln(w, "\nCommands:")
	width := 0
	for _, c := range commands {
		width = max(width, len(c.name))
	}
	for _, c := range commands {
		fmt.Fprintf(w, "  %-*s  %s\n", width, c.name, c.summary)
	}
	fmt.Fprintln(w, "\nFlags of every command that uses the database (given after the command):")
	fs, _ := spec{setup: onDB(nil)}.newFlagSet()
	printFlags(w, fs)
	fmt.Fprintf(w, "\nRun \"%s <command> --help\" for a command's subcommands and all their flags.\n", program)
	fmt.Fprintln(w, "Errors are one line on stderr; the exit status is 1 on failure and 2 on a usage error.")
	printExamples(w, []string{
		"schema migrate --dsn postgres://app@db.internal:5432/app --schema messaging",
		"schema verify --schema messaging",
		"storage counts --dsn 'sqlserver://app@sql.internal:1433?database=app'",
	})
}
