package bench

import (
	"fmt"
	"io"
	"sync"
)

// Stepper is implemented by a progress writer that also shows how far a benchmark is (the
// command's progress bar): RunOutbox, RunSubscriber and RunInbox, given one as their progress
// writer, call Step after every leg (a timed slice of a leg, for the legs measured in slices)
// with the legs done and the legs of all the runs, and the run it was part of ("run 1/3").
// The progress lines are written to it as well.
type Stepper interface {
	Step(done, total int64, extra string)
}

// legCounter counts the legs of a benchmark's runs and reports them to its progress writer
// when that is a Stepper. perRun is the number of legs of one run: legDone calls beyond it
// raise the total rather than overflow the bar.
type legCounter struct {
	mu     sync.Mutex
	w      io.Writer
	perRun int
	runs   int
	run    int // the run under way, from 1
	done   int
}

// newLegCounter counts runs runs of perRun legs each, reported to w.
func newLegCounter(w io.Writer, runs, perRun int) *legCounter {
	return &legCounter{w: w, runs: runs, perRun: perRun}
}

// startRun records that run i (from 0) begins; the first reports that nothing is done yet.
func (c *legCounter) startRun(i int) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.run = i + 1
	c.mu.Unlock()
	if i == 0 {
		c.report(0)
	}
}

// legDone records that a leg ended and reports it. A nil counter (an env a test built)
// counts nothing.
func (c *legCounter) legDone() {
	if c == nil {
		return
	}
	c.report(1)
}

// report adds n legs done and reports the count to the progress writer when it is a Stepper.
func (c *legCounter) report(n int) {
	s, ok := c.w.(Stepper)
	c.mu.Lock()
	c.done += n
	done, total := c.done, max(c.done, c.runs*c.perRun)
	extra := fmt.Sprintf("run %d/%d", c.run, c.runs)
	c.mu.Unlock()
	if ok {
		s.Step(int64(done), int64(total), extra)
	}
}
