// Package testproc runs a test binary's own code as a child OS process, so that tests can
// kill a real process (SIGKILL) without building a separate program: the test binary is
// started again with an environment variable naming the child's main function, and TestMain
// calls Main first, which runs that function and exits instead of running the tests.
//
// The child writes events to stdout, one JSON object per line (Emit); the parent reads them
// (Proc.Await).
package testproc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// env names the variable that selects the child's main function.
const env = "WATERMILL_JASPER_TESTPROC"

// Main runs the child main function named by the environment, if any, and exits with its
// status; otherwise it returns at once. Call it first in TestMain.
func Main(mains map[string]func() error) {
	name := os.Getenv(env)
	if name == "" {
		return
	}
	f, ok := mains[name]
	if !ok {
		Emit(Event{"event": "error", "error": "testproc: no child main " + name})
		os.Exit(2)
	}
	if err := f(); err != nil {
		Emit(Event{"event": "error", "error": err.Error()})
		os.Exit(1)
	}
	os.Exit(0)
}

// Event is one line a child writes.
type Event map[string]any

// Str returns the string field k.
func (e Event) Str(k string) string { s, _ := e[k].(string); return s }

// Num returns the number field k.
func (e Event) Num(k string) int64 {
	f, _ := e[k].(float64)
	return int64(f)
}

// Field returns the number field k of the event's "fields" object (a log line's fields).
func (e Event) Field(k string) int64 {
	m, _ := e["fields"].(map[string]any)
	f, _ := m[k].(float64)
	return int64(f)
}

var out = struct {
	sync.Mutex
	enc *json.Encoder
}{enc: json.NewEncoder(os.Stdout)}

// Emit writes one event line on stdout (safe for concurrent use).
func Emit(e Event) {
	out.Lock()
	defer out.Unlock()
	_ = out.enc.Encode(e)
}

// Proc is a running child process.
type Proc struct {
	t      testing.TB
	Name   string
	cmd    *exec.Cmd
	events chan Event
	stderr bytes.Buffer
	exited chan struct{}
	err    error // of Wait, once exited is closed
}

// Args returns the arguments Start gave the child (to parse with a flag.FlagSet of its own).
func Args() []string {
	if len(os.Args) < 2 {
		return nil
	}
	return os.Args[2:]
}

// Start runs the child main function main of this test binary with args (the child reads
// them with Args). The child is killed when the test ends.
func Start(t testing.TB, procName, main string, args ...string) *Proc {
	t.Helper()
	p := &Proc{t: t, Name: procName, events: make(chan Event, 100000), exited: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], append([]string{"-test.run=^$"}, args...)...)
	p.cmd.Env = append(os.Environ(), env+"="+main)
	p.cmd.Stderr = &p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var e Event
			if json.Unmarshal(sc.Bytes(), &e) != nil {
				continue
			}
			if e.Str("event") == "log" && e.Str("level") == "error" {
				t.Logf("%s: %s", procName, sc.Text())
			}
			p.events <- e
		}
		p.err = p.cmd.Wait()
		close(p.events)
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// Events is the channel of the child's events (closed when it exits).
func (p *Proc) Events() <-chan Event { return p.events }

// Await reads the child's events until match accepts one and returns it; it fails the test
// when the child exits, reports an error event, or timeout passes first.
func (p *Proc) Await(timeout time.Duration, match func(Event) bool) Event {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case e, ok := <-p.events:
			if !ok {
				p.t.Fatalf("%s exited (%v) before the awaited event; stderr:\n%s", p.Name, p.err, p.stderr.String())
			}
			if e.Str("event") == "error" {
				p.t.Fatalf("%s: %s", p.Name, e.Str("error"))
			}
			if match(e) {
				return e
			}
		case <-deadline:
			p.t.Fatalf("%s: timed out waiting for an event", p.Name)
		}
	}
}

// Stop sends SIGTERM and waits up to timeout for a clean exit (status 0).
func (p *Proc) Stop(timeout time.Duration) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit %s after SIGTERM", p.Name, timeout)
	}
	if p.err != nil {
		p.t.Fatalf("%s exited with %v; stderr:\n%s", p.Name, p.err, p.stderr.String())
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() {
	p.t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		p.t.Fatal(err)
	}
	<-p.exited
}
