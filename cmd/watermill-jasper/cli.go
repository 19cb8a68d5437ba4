package main

// The command tree: the commands are described by specs (a command with flags) and groups (a
// command made of subcommands), which become cobra commands; cobra and pflag parse the command
// line and print the help.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// program is the name of the command, which every line it prints starts with.
const program = "watermill-jasper"

// env is where a command reads and writes.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// errUsageShown is returned after a usage was printed on stderr because arguments were missing:
// exit status 2, nothing more printed.
var errUsageShown = errors.New("usage shown")

// usageError is a mistake in the command line (exit status 2).
type usageError struct{ err error }

// Error returns the message of the mistake.
func (e *usageError) Error() string { return e.err.Error() }

// Unwrap returns the error the usage error wraps.
func (e *usageError) Unwrap() error { return e.err }

// usageErrorf returns a usage error (exit status 2) with the message format and args.
func usageErrorf(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// spec describes a command that takes flags: a top-level one such as "relay", or a
// subcommand such as "schema migrate".
type spec struct {
	// name is the full command line after "watermill-jasper", e.g. "schema migrate".
	name    string
	summary string
	// args is the synopsis of the positional arguments, e.g. "ID...", or "" when the command
	// takes none (any positional argument is then a usage error).
	args        string
	description string
	// examples are command lines, written without the leading "watermill-jasper ".
	examples []string
	// setup registers the flags on fs and returns the function that runs the command once
	// they are parsed; args are the positional arguments.
	setup func(fs *pflag.FlagSet) runFunc
}

// runFunc runs a command whose flags are parsed; args are its positional arguments.
type runFunc func(ctx context.Context, e *env, args []string) error

// lastWord returns the last word of s: the name of a command given by its path.
func lastWord(s string) string { return s[strings.LastIndex(s, " ")+1:] }

// cobraCommand returns the cobra command of the spec, which runs on e.
func (s spec) cobraCommand(e *env) *cobra.Command {
	use := lastWord(s.name) + " [flags]"
	if s.args != "" {
		use += " " + s.args
	}
	c := &cobra.Command{
		Use:     use,
		Short:   s.summary,
		Long:    sentence(s.summary) + " " + s.description,
		Example: examples(s.examples),
	}
	if s.args == "" {
		c.Args = func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf("%s takes no arguments, got %q (see %s %s --help)", s.name, args[0], program, s.name)
			}
			return nil
		}
	}
	c.Flags().SortFlags = false // the help lists the flags in the order setup registers them
	run := s.setup(c.Flags())
	c.RunE = func(c *cobra.Command, args []string) error { return run(c.Context(), e, args) }
	c.SetHelpTemplate(leafHelp)
	return c
}

// group is a command made of subcommands, such as "schema script|migrate|verify".
type group struct {
	name        string
	summary     string
	description string
	subs        []spec
	examples    []string
}

// cobraCommand returns the cobra command of the group and its subcommands, which run on e.
// Without a subcommand it prints its usage on stderr (exit status 2); "help SUBCOMMAND" prints
// the subcommand's.
func (g group) cobraCommand(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:     g.name + " <subcommand>",
		Short:   g.summary,
		Long:    sentence(g.summary) + " " + g.description,
		Example: examples(g.examples),
		Args:    cobra.ArbitraryArgs,
	}
	for _, s := range g.subs {
		c.AddCommand(s.cobraCommand(e))
	}
	c.RunE = func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			return showUsage(c, e.stderr)
		}
		if args[0] == "help" {
			return helpOf(c, args[1:])
		}
		return usageErrorf("%s: unknown subcommand %q, want one of %s (see %s %s --help)", g.name, args[0], subNames(c), program, g.name)
	}
	c.SetHelpTemplate(groupHelp)
	return c
}

// showUsage prints the help of c on w and returns errUsageShown (exit status 2).
func showUsage(c *cobra.Command, w io.Writer) error {
	c.SetOut(w)
	if err := c.Help(); err != nil {
		return err
	}
	return errUsageShown
}

// helpOf prints on stdout the help of the command that path names under c (c's own when path
// is empty); an unknown command is a usage error.
func helpOf(c *cobra.Command, path []string) error {
	target, rest, err := c.Find(path)
	if err != nil || len(rest) > 0 || target == nil {
		return usageErrorf("unknown command %q (see %s --help)", strings.Join(path, " "), program)
	}
	target.InitDefaultHelpFlag()
	return target.Help()
}

// subNames lists the names of the subcommands of c, comma-separated.
func subNames(c *cobra.Command) string {
	var names []string
	for _, s := range c.Commands() {
		if s.IsAvailableCommand() {
			names = append(names, s.Name())
		}
	}
	return strings.Join(names, ", ")
}

// flagError turns an error of the flag parser into a usage error that names the command.
// Flags given before a command or subcommand are reported as such, and a long flag written with
// one dash (-dsn) is told to take two.
func flagError(c *cobra.Command, err error) error {
	path := strings.TrimPrefix(c.CommandPath(), program+" ")
	if m := singleDash.FindStringSubmatch(err.Error()); m != nil && c.HasParent() && !c.HasSubCommands() {
		return usageErrorf("%s: unknown flag -%s: long flags take two dashes, --%s (see %s %s --help)", path, m[1], m[1], program, path)
	}
	switch {
	case !c.HasParent():
		return usageErrorf("give a command (%s) before the flags (see %s --help)", subNames(c), program)
	case c.HasSubCommands():
		return usageErrorf("%s: give a subcommand (%s) before the flags (see %s %s --help)", path, subNames(c), program, path)
	}
	return usageErrorf("%s: %v (see %s %s --help)", path, err, program, path)
}

// singleDash matches pflag's error for a long flag written with one dash, e.g. -dsn.
var singleDash = regexp.MustCompile(`^unknown shorthand flag: '.' in -([A-Za-z][A-Za-z0-9-]+)`)

// notNegative is the check of a flag (name, e.g. "--limit") whose value must not be negative.
func notNegative[T int | time.Duration](name string, value *T) func() error {
	return func() error {
		if *value < 0 {
			return usageErrorf("%s must not be negative, got %v", name, *value)
		}
		return nil
	}
}

// positive is the check of flags (names, e.g. "--backlog and --runs") whose values must be at
// least 1.
func positive(names string, values ...*int) func() error {
	return func() error {
		for _, v := range values {
			if *v < 1 {
				return usageErrorf("%s must be positive", names)
			}
		}
		return nil
	}
}

// atLeast100ms is the check of duration flags (names) whose values must be at least 100ms.
func atLeast100ms(names string, values ...*time.Duration) func() error {
	return func() error {
		for _, v := range values {
			if *v < 100*time.Millisecond {
				return usageErrorf("%s must be at least 100ms", names)
			}
		}
		return nil
	}
}

// checks is the check made of cs, run in order: the first error.
func checks(cs ...func() error) func() error {
	return func() error {
		for _, c := range cs {
			if err := c(); err != nil {
				return err
			}
		}
		return nil
	}
}
