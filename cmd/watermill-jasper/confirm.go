package main

// Asking on stdin before deleting: storage clear and dead-letters purge.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/watermill-jasper/watermill-jasper/cmd/watermill-jasper/internal/progress"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// askDelete asks before deleting n rows (what, e.g. "rows") of cfg's schema. When n is 0 it
// says there is nothing to delete and returns false. Otherwise it prints question and
// " [y/N] " on stdout and reads the answer from stdin: true for y or yes, else false and the
// error that aborts the command.
func askDelete(e *env, cfg schema.Config, what string, n int64, question string) (bool, error) {
	if n == 0 {
		fmt.Fprintf(e.stdout, "schema %s holds no %s: nothing to delete\n", cfg.Schema, what)
		return false, nil
	}
	fmt.Fprint(e.stdout, question+" [y/N] ")
	ok, err := confirmed(e.stdin)
	if !progress.IsTerminal(e.stdin) {
		fmt.Fprintln(e.stdout) // the answer was not echoed: end the prompt's line
	}
	if err != nil {
		return false, fmt.Errorf("read the answer: %w", err)
	}
	if !ok {
		return false, errors.New("aborted: nothing deleted (answer y to delete, or pass --yes)")
	}
	return true, nil
}

// confirmed reads one line and reports whether it is y or yes (any case).
func confirmed(in io.Reader) (bool, error) {
	if in == nil {
		return false, nil
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	return false, nil
}
