package progress

import (
	"bytes"
	"regexp"
	"testing"
)

// TestLines checks the line mode (w is not a terminal): one line per step, and the log lines
// written through the bar unchanged.
func TestLines(t *testing.T) {
	var w bytes.Buffer
	p := New(&w, "bench outbox", -1)
	p.Step(0, 4, "run 1/2")
	if _, err := p.Write([]byte("publish ours: 1234 tx/s\n")); err != nil {
		t.Fatal(err)
	}
	p.Step(1, 4, "")
	p.Step(7, -1, "7 replayed")
	p.Finish()
	want := regexp.MustCompile(`^bench outbox: 0 of 4 done \(0%\), run 1/2, \S+\n` +
		`publish ours: 1234 tx/s\n` +
		`bench outbox: 1 of 4 done \(25%\), \S+\n` +
		`bench outbox: 7, 7 replayed, \S+\n$`)
	if !want.MatchString(w.String()) {
		t.Errorf("got %q", w.String())
	}
}

// TestIsTerminal: a buffer is not a terminal.
func TestIsTerminal(t *testing.T) {
	if IsTerminal(&bytes.Buffer{}) {
		t.Error("a buffer is a terminal")
	}
}
