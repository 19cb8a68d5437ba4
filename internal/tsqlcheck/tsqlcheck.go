// Package tsqlcheck checks T-SQL syntax offline, for the tests of the SQL Server statements
// (no SQL Server runs where the tests run). It parses with the grammars-v4 T-SQL grammar,
// pre-built for JavaScript by the npm package antlr4ts-sql, through tools/tsqlcheck/check.js
// and the machine's Node.js. It never installs anything: the pinned packages of
// tools/tsqlcheck/package-lock.json are installed once with `(cd tools/tsqlcheck && npm ci)`
// (.ci/run does), and Parse fails, saying so, until they are. The tests that parse
// statements carry the build tag tsqlcheck, so that `go test ./...` needs neither Node.js
// nor the npm registry: `go test -tags tsqlcheck -run Parse ./internal/store/sqlserver
// ./internal/tsqlcheck` runs them.
//
// A grammar is not SQL Server: a statement it accepts may still fail on a server (names,
// types, semantics), and it is somewhat more permissive than SQL Server. What it rejects
// is not T-SQL.
package tsqlcheck

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// toolDir is tools/tsqlcheck of this module, found from this file's path.
func toolDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("tsqlcheck: cannot locate the module")
	}
	dir := filepath.Join(filepath.Dir(file), "..", "..", "tools", "tsqlcheck")
	if _, err := os.Stat(filepath.Join(dir, "check.js")); err != nil {
		return "", fmt.Errorf("tsqlcheck: %w", err)
	}
	return dir, nil
}

// installHint is the command that installs the grammar's pinned packages.
const installHint = "(cd tools/tsqlcheck && npm ci)"

// installed fails unless the pinned packages of tools/tsqlcheck are installed. The check
// never installs them itself: tests must not reach a registry.
func installed(dir string) error {
	marker := filepath.Join(dir, "node_modules", "antlr4ts-sql", "package.json")
	if _, err := os.Stat(marker); err != nil {
		return fmt.Errorf("tsqlcheck: the T-SQL grammar is not installed (%s missing): run %s from the module root", marker, installHint)
	}
	return nil
}

// Parse parses every statement and returns, for each one the grammar rejects, its first
// syntax error (keyed by the statement's name). An error means the check could not run.
func Parse(statements map[string]string) (map[string]string, error) {
	dir, err := toolDir()
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("node"); err != nil {
		return nil, errors.New("tsqlcheck: node not found: install Node.js (Debian: apt-get install nodejs)")
	}
	if err := installed(dir); err != nil {
		return nil, err
	}
	in, err := json.Marshal(statements)
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("node", "check.js")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("tsqlcheck: node check.js: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	failures := map[string]string{}
	if err := json.Unmarshal(stdout.Bytes(), &failures); err != nil {
		return nil, fmt.Errorf("tsqlcheck: read the parser's answer: %w", err)
	}
	return failures, nil
}
