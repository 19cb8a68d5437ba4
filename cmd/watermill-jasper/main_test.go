package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// binary is the CLI built once by TestMain; the tests run it as a subprocess.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "watermill-jasper-cli-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, program)
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build the CLI:", err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// errorLines returns the lines printed on stderr.
func (r result) errorLines() []string {
	return strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// cli runs the binary with args and stdin, without $DATABASE_URL unless extraEnv sets it.
func cli(t *testing.T, stdin string, extraEnv []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, dsnEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errOut.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return r
}

// db runs a command against the test PostgreSQL in schema s.
func db(t *testing.T, stdin, s string, args ...string) result {
	t.Helper()
	return cli(t, stdin, nil, append(args, "--dsn", testdb.PostgresDSN(), "--schema", s)...)
}

// assertFailure checks a failed run: the exit status and exactly one stderr line with the
// program's prefix and every wanted fragment.
func assertFailure(t *testing.T, r result, code int, want ...string) {
	t.Helper()
	if r.code != code {
		t.Errorf("want exit status %d, got %s", code, r)
	}
	lines := r.errorLines()
	if len(lines) != 1 || !strings.HasPrefix(lines[0], program+": ") {
		t.Errorf("want exactly one stderr line starting %q, got %q", program+": ", r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr should mention %q, got %q", w, r.stderr)
		}
	}
}

func assertSuccess(t *testing.T, r result) {
	t.Helper()
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("want success, got %s", r)
	}
}

// commandTree returns the available commands of the CLI's command tree, in the root usage's
// order.
func commandTree() []*cobra.Command {
	var out []*cobra.Command
	for _, c := range newRootCmd(&env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard}).Commands() {
		if c.IsAvailableCommand() {
			out = append(out, c)
		}
	}
	return out
}

func TestRootUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		r := cli(t, "", nil, args...)
		assertSuccess(t, r)
		for _, c := range commandTree() {
			if !strings.Contains(r.stdout, "\n  "+c.Name()+" ") {
				t.Errorf("%v: root usage does not list %s:\n%s", args, c.Name(), r.stdout)
			}
		}
		for _, w := range []string{"Usage:", "--dsn URL", "--schema NAME", "$DATABASE_URL", defaultDSN, "Examples:"} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("%v: root usage lacks %q", args, w)
			}
		}
	}
	r := cli(t, "", nil)
	if r.code != 2 || !strings.Contains(r.stderr, "Usage:") || r.stdout != "" {
		t.Errorf("no arguments: want the usage on stderr and exit 2, got %s", r)
	}
	assertFailure(t, cli(t, "", nil, "frobnicate"), 2, `unknown command "frobnicate"`)
	assertFailure(t, cli(t, "", nil, "help", "frobnicate"), 2, `unknown command "frobnicate"`)
	assertFailure(t, cli(t, "", nil, "--dsn", "postgres://x"), 2, "give a command")
}

// TestEveryCommandHasCompleteHelp checks, for every command of the tree and every
// subcommand, that --help, -h and help COMMAND exit 0 and list every flag and an example.
func TestEveryCommandHasCompleteHelp(t *testing.T) {
	t.Parallel()
	for _, c := range commandTree() {
		r := cli(t, "", nil, c.Name(), "--help")
		assertSuccess(t, r)
		if !strings.Contains(r.stdout, "Usage:") || !strings.Contains(r.stdout, "Example") {
			t.Errorf("%s --help: no usage or example:\n%s", c.Name(), r.stdout)
		}
		leaves := c.Commands()
		if !c.HasSubCommands() {
			leaves = []*cobra.Command{c}
		}
		for _, s := range leaves {
			path := strings.TrimPrefix(s.CommandPath(), program+" ")
			args := strings.Fields(path)
			for _, h := range [][]string{append(args, "--help"), append(args, "-h"), append([]string{"help"}, args...)} {
				r := cli(t, "", nil, h...)
				assertSuccess(t, r)
				if !strings.Contains(r.stdout, "Usage:\n  "+program+" "+path) || !strings.Contains(r.stdout, "Example") {
					t.Errorf("%v: no usage or example:\n%s", h, r.stdout)
				}
				s.Flags().VisitAll(func(f *pflag.Flag) {
					if !strings.Contains(r.stdout, "--"+f.Name) {
						t.Errorf("%v does not document --%s", h, f.Name)
					}
				})
			}
			if c.HasSubCommands() {
				// A group's own help lists every subcommand and every flag too.
				group := cli(t, "", nil, c.Name(), "-h").stdout
				if !strings.Contains(group, "\n  "+s.Name()+"\n") {
					t.Errorf("%s -h does not list %s", c.Name(), s.Name())
				}
				s.Flags().VisitAll(func(f *pflag.Flag) {
					if !strings.Contains(group, "--"+f.Name) {
						t.Errorf("%s -h does not document --%s of %s", c.Name(), f.Name, path)
					}
				})
			}
		}
		if c.HasSubCommands() {
			r := cli(t, "", nil, c.Name())
			if r.code != 2 || !strings.Contains(r.stderr, "Usage:") {
				t.Errorf("%s without a subcommand: want its usage on stderr and exit 2, got %s", c.Name(), r)
			}
			assertFailure(t, cli(t, "", nil, c.Name(), "nope"), 2, `unknown subcommand "nope"`)
		}
	}
	assertFailure(t, cli(t, "", nil, "storage", "counts", "--nope"), 2, "--nope", "storage counts --help")
	assertFailure(t, cli(t, "", nil, "storage", "counts", "extra"), 2, `"extra"`)
	assertFailure(t, cli(t, "", nil, "storage", "counts", "--output", "xml"), 2, "--output", "want text or json")
	// Long flags take two dashes: the error says so for a long flag written with one.
	assertFailure(t, cli(t, "", nil, "schema", "migrate", "-dsn", "postgres://x"), 2, "unknown flag -dsn", "two dashes, --dsn")
}

func testDSN() string { return testdb.PostgresDSN() }
