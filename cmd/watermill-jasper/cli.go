package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

const program = "watermill-jasper"

// env is where a command reads and writes.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// command is one entry of the command table (commands.go): a top-level command such as
// "schema" or "relay". Build it with spec.command (a command with flags) or group.command
// (a command made of subcommands).
type command struct {
	name    string
	summary string // one line, shown in the root usage
	// run runs the command with the arguments that follow its name.
	run func(ctx context.Context, e *env, args []string) error
	// help prints the complete usage of the command (every subcommand and flag).
	help func(w io.Writer)
	// specs are the command itself (a command with flags) or its subcommands (a group).
	specs []spec
}

// errHelp is returned after a usage was printed on request: exit status 0, nothing more printed.
var errHelp = errors.New("help shown")

// errUsageShown is returned after a usage was printed because arguments were missing: exit
// status 2, nothing more printed.
var errUsageShown = errors.New("usage shown")

// usageError is a mistake in the command line (exit status 2).
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

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
	setup func(fs *flag.FlagSet) runFunc
}

// runFunc runs a command whose flags are parsed; args are its positional arguments.
type runFunc func(ctx context.Context, e *env, args []string) error

// command turns the spec into a command-table entry.
func (s spec) command() command {
	return command{name: lastWord(s.name), summary: s.summary, run: s.run, help: s.printUsage, specs: []spec{s}}
}

func lastWord(s string) string { return s[strings.LastIndex(s, " ")+1:] }

func (s spec) newFlagSet() (*flag.FlagSet, runFunc) {
	fs := flag.NewFlagSet(program+" "+s.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs, s.setup(fs)
}

func (s spec) run(ctx context.Context, e *env, args []string) error {
	fs, run := s.newFlagSet()
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			s.printUsage(e.stdout)
			return errHelp
		}
		return usageErrorf("%s: %s (see %s %s --help)", s.name, flagDashes.Replace(err.Error()), program, s.name)
	}
	if s.args == "" && fs.NArg() > 0 {
		return usageErrorf("%s takes no arguments, got %q (see %s %s --help)", s.name, fs.Arg(0), program, s.name)
	}
	return run(ctx, e, fs.Args())
}

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

// flagDashes writes the flag package's "-name" as "--name", as the help does.
var flagDashes = strings.NewReplacer("not defined: -", "not defined: --", "argument: -", "argument: --", "for flag -", "for flag --", "for -", "for --")

func (s spec) synopsis() string {
	line := program + " " + s.name + " [flags]"
	if s.args != "" {
		line += " " + s.args
	}
	return line
}

// printUsage prints the complete help of the command: synopsis, description, every flag
// and the examples.
func (s spec) printUsage(w io.Writer) {
	fs, _ := s.newFlagSet()
	fmt.Fprintf(w, "Usage:\n  %s\n\n", s.synopsis())
	writeParagraphs(w, sentence(s.summary)+" "+s.description)
	fmt.Fprintln(w, "\nFlags:")
	printFlags(w, fs)
	printExamples(w, s.examples)
}

// group is a command made of subcommands, such as "schema script|migrate|verify".
type group struct {
	name        string
	summary     string
	description string
	subs        []spec
	examples    []string
}

// command turns the group into a command-table entry.
func (g group) command() command {
	return command{name: g.name, summary: g.summary, run: g.run, help: g.printUsage, specs: g.subs}
}

func (g group) subNames() string {
	names := make([]string, len(g.subs))
	for i, s := range g.subs {
		names[i] = lastWord(s.name)
	}
	return strings.Join(names, ", ")
}

func (g group) run(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		g.printUsage(e.stderr)
		return errUsageShown
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 && args[0] == "help" {
			for _, s := range g.subs {
				if lastWord(s.name) == args[1] {
					s.printUsage(e.stdout)
					return errHelp
				}
			}
		}
		g.printUsage(e.stdout)
		return errHelp
	}
	for _, s := range g.subs {
		if lastWord(s.name) == args[0] {
			return s.run(ctx, e, args[1:])
		}
	}
	if strings.HasPrefix(args[0], "-") {
		return usageErrorf("%s: give a subcommand (%s) before the flags (see %s %s --help)", g.name, g.subNames(), program, g.name)
	}
	return usageErrorf("%s: unknown subcommand %q, want one of %s (see %s %s --help)", g.name, args[0], g.subNames(), program, g.name)
}

// printUsage prints the group's help: its subcommands with all their flags and examples.
// Flags that every subcommand has are listed once, after the subcommands.
func (g group) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage:\n  %s %s <subcommand> [flags]\n\n", program, g.name)
	writeParagraphs(w, sentence(g.summary)+" "+g.description)
	sets := make([]*flag.FlagSet, len(g.subs))
	shared := map[string]int{}
	for i, s := range g.subs {
		sets[i], _ = s.newFlagSet()
		sets[i].VisitAll(func(f *flag.Flag) { shared[f.Name]++ })
	}
	isShared := func(f *flag.Flag) bool { return shared[f.Name] == len(g.subs) && len(g.subs) > 1 }
	fmt.Fprintln(w, "\nSubcommands:")
	for i, s := range g.subs {
		fmt.Fprintf(w, "  %s\n", lastWord(s.name))
		writeIndented(w, sentence(s.summary), "      ")
		visitFlags(w, sets[i], "      ", func(f *flag.Flag) bool { return !isShared(f) })
	}
	if len(g.subs) > 1 {
		fmt.Fprintln(w, "\nFlags of every subcommand:")
		visitFlags(w, sets[0], "  ", isShared)
	}
	fmt.Fprintf(w, "\nRun \"%s %s <subcommand> --help\" for the details of a subcommand.\n", program, g.name)
	printExamples(w, g.examples)
}

// sentence capitalises s and ends it with a full stop.
func sentence(s string) string {
	if s == "" {
		return s
	}
	s = strings.ToUpper(s[:1]) + s[1:]
	if !strings.HasSuffix(s, ".") {
		s += "."
	}
	return s
}

// printFlags lists every flag of fs, with its argument name, help text and default.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	if visitFlags(w, fs, "  ", func(*flag.Flag) bool { return true }) == 0 {
		fmt.Fprintln(w, "  (none)")
	}
}

// visitFlags prints the flags of fs that keep accepts and returns how many it printed.
func visitFlags(w io.Writer, fs *flag.FlagSet, indent string, keep func(*flag.Flag) bool) int {
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		if !keep(f) {
			return
		}
		n++
		name, usage := flag.UnquoteUsage(f)
		line := indent + "--" + f.Name
		if name != "" {
			line += " " + name
		}
		if isBool(f) {
			line = indent + "--" + f.Name
		}
		if f.DefValue != "" && f.DefValue != "false" && !strings.Contains(usage, "default") {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintln(w, line)
		writeIndented(w, usage, indent+"    ")
	})
	return n
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func printExamples(w io.Writer, examples []string) {
	if len(examples) == 0 {
		return
	}
	title := "Example:"
	if len(examples) > 1 {
		title = "Examples:"
	}
	fmt.Fprintln(w, "\n"+title)
	for _, ex := range examples {
		fmt.Fprintf(w, "  %s %s\n", program, ex)
	}
}

// writeParagraphs writes text wrapped at 92 columns; blank lines ("\n\n") separate paragraphs.
func writeParagraphs(w io.Writer, text string) {
	for i, p := range strings.Split(strings.TrimSpace(text), "\n\n") {
		if i > 0 {
			fmt.Fprintln(w)
		}
		writeIndented(w, p, "")
	}
}

// writeIndented writes text wrapped at 92 columns, each line starting with indent.
func writeIndented(w io.Writer, text, indent string) {
	const width = 92
	line := indent
	for _, word := range strings.Fields(text) {
		if len(line) > len(indent) && len(line)+1+len(word) > width {
			fmt.Fprintln(w, line)
			line = indent
		}
		if len(line) > len(indent) {
			line += " "
		}
		line += word
	}
	if len(line) > len(indent) {
		fmt.Fprintln(w, line)
	}
}
