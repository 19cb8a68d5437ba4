package main

// The help of the command tree: cobra's help templates for the root command, the groups and
// the commands with flags, and the template functions they use (wrapped paragraphs, the flags
// of a group's subcommands, the flags every subcommand shares).

import (
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

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

// examples renders command lines (without the leading program name) as cobra's Example text.
func examples(lines []string) string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = "  " + program + " " + l
	}
	return strings.Join(out, "\n")
}

// helpWidth is the width the help wraps its text at.
const helpWidth = 92

// The help templates of the root command, of a group and of a command with flags. The template
// functions are registered by init below.
const (
	rootHelp = `Usage:
  {{.Name}} <command> [<subcommand>] [flags]

{{wrap .Long}}
Commands:{{range .Commands}}{{if .IsAvailableCommand}}
  {{rpad .Name .NamePadding}} {{.Short}}{{end}}{{end}}

Flags of every command that uses the database (given after the command):
{{dbFlagUsages}}
Run "{{.Name}} <command> --help" for a command's subcommands and all their flags.
Errors are one line on stderr; the exit status is 1 on failure and 2 on a usage error.

Examples:
{{.Example}}
`
	groupHelp = `Usage:
  {{.CommandPath}} <subcommand> [flags]

{{wrap .Long}}
Subcommands:{{range .Commands}}{{if .IsAvailableCommand}}
  {{.Name}}
{{indent 6 (wrap (sentence .Short))}}{{subFlags $ .}}{{end}}{{end}}{{with sharedFlags .}}
Flags of every subcommand:
{{.}}{{end}}
Run "{{.CommandPath}} <subcommand> --help" for the details of a subcommand.

Examples:
{{.Example}}
`
	leafHelp = `Usage:
  {{.UseLine}}

{{wrap .Long}}
Flags:
{{flagUsages .LocalFlags}}
Examples:
{{.Example}}
`
)

// init makes cobra list the commands in the table's order and registers the help templates'
// functions.
func init() {
	cobra.EnableCommandSorting = false // the root usage lists the commands in the table's order
	cobra.AddTemplateFunc("wrap", wrapParagraphs)
	cobra.AddTemplateFunc("indent", indent)
	cobra.AddTemplateFunc("sentence", sentence)
	cobra.AddTemplateFunc("flagUsages", flagUsages)
	cobra.AddTemplateFunc("subFlags", subFlags)
	cobra.AddTemplateFunc("sharedFlags", sharedFlags)
	cobra.AddTemplateFunc("dbFlagUsages", func() string {
		fs := unsortedFlagSet()
		newDBFlags(fs)
		return flagUsages(fs)
	})
}

// unsortedFlagSet returns an empty flag set that lists its flags in the order they are added.
func unsortedFlagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet(program, pflag.ContinueOnError)
	fs.SortFlags = false
	return fs
}

// flagUsages lists the flags of fs (without --help), wrapped; "  (none)" when there are none.
func flagUsages(fs *pflag.FlagSet) string {
	shown := unsortedFlagSet()
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" {
			shown.AddFlag(f)
		}
	})
	if !shown.HasFlags() {
		return "  (none)\n"
	}
	return shown.FlagUsagesWrapped(helpWidth)
}

// sharedFlags are the flags (but --help) that every subcommand of the group g has, when it has
// several, listed; "" when there are none.
func sharedFlags(g *cobra.Command) string {
	fs := unsortedFlagSet()
	subs := g.Commands()
	if len(subs) < 2 {
		return ""
	}
	subs[0].LocalFlags().VisitAll(func(f *pflag.Flag) {
		if isShared(g, f.Name) {
			fs.AddFlag(f)
		}
	})
	if !fs.HasFlags() {
		return ""
	}
	return fs.FlagUsagesWrapped(helpWidth)
}

// isShared reports whether every subcommand of g, which has several, has the flag name.
func isShared(g *cobra.Command, name string) bool {
	subs := g.Commands()
	if len(subs) < 2 || name == "help" {
		return false
	}
	for _, s := range subs {
		if s.LocalFlags().Lookup(name) == nil {
			return false
		}
	}
	return true
}

// subFlags lists the flags of the subcommand sub of g that not every subcommand has, indented
// under the subcommand's name.
func subFlags(g, sub *cobra.Command) string {
	fs := unsortedFlagSet()
	sub.LocalFlags().VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" && !isShared(g, f.Name) {
			fs.AddFlag(f)
		}
	})
	if !fs.HasFlags() {
		return ""
	}
	return indent(4, fs.FlagUsagesWrapped(helpWidth-4))
}

// indent prefixes every non-empty line of s with n spaces.
func indent(n int, s string) string {
	pad := strings.Repeat(" ", n)
	lines := strings.SplitAfter(s, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != "" {
			lines[i] = pad + l
		}
	}
	return strings.Join(lines, "")
}

// wrapParagraphs returns text wrapped at helpWidth columns, each line ending with a newline;
// blank lines ("\n\n") separate paragraphs.
func wrapParagraphs(text string) string {
	var b strings.Builder
	for i, p := range strings.Split(strings.TrimSpace(text), "\n\n") {
		if i > 0 {
			b.WriteString("\n")
		}
		line := ""
		for _, word := range strings.Fields(p) {
			if line != "" && len(line)+1+len(word) > helpWidth {
				b.WriteString(line + "\n")
				line = ""
			}
			if line != "" {
				line += " "
			}
			line += word
		}
		if line != "" {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}
