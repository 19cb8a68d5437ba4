// Package progress reports the progress of the CLI's long commands (dead-letters replay and
// purge, the benchmarks) on stderr: a progress bar when stderr is a terminal, plain lines
// otherwise, so that logs and tests read lines.
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Bar reports the progress of a long command on w (stderr): a progress bar when w is a
// terminal, else one line per step ("NAME: DONE of TOTAL done (PCT%), EXTRA, ELAPSED"). It is
// also an io.Writer for the command's own log lines, which it prints above the bar. Its methods
// may be called from several goroutines.
type Bar struct {
	mu    sync.Mutex
	w     io.Writer
	name  string
	start time.Time
	term  bool                     // w is a terminal: draw a bar
	bar   *progressbar.ProgressBar // the bar, once drawn
}

// New starts reporting the progress of name towards total steps (-1: unknown until the first
// step says) on w.
func New(w io.Writer, name string, total int64) *Bar {
	p := &Bar{w: w, name: name, start: time.Now(), term: IsTerminal(w)}
	if p.term && total >= 0 {
		p.draw(total)
	}
	return p
}

// draw creates the bar, towards total steps (-1: unknown).
func (p *Bar) draw(total int64) {
	p.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetDescription(p.name),
		progressbar.OptionShowCount(),
		progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionThrottle(100*time.Millisecond),
	)
}

// Step reports done of total steps (-1: unknown), with extra words for the line ("12
// replayed").
func (p *Bar) Step(done, total int64, extra string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.term && p.bar == nil {
		p.draw(total)
	}
	if p.bar != nil {
		if total >= 0 && p.bar.GetMax64() != total {
			p.bar.ChangeMax64(total)
		}
		if extra != "" {
			p.bar.Describe(p.name + " (" + extra + ")")
		}
		_ = p.bar.Set64(done)
		return
	}
	line := fmt.Sprintf("%s: %d", p.name, done)
	if total >= 0 {
		pct := 100.0
		if total > 0 {
			pct = float64(done) * 100 / float64(total)
		}
		line += fmt.Sprintf(" of %d done (%.0f%%)", total, pct)
	}
	if extra != "" {
		line += ", " + extra
	}
	fmt.Fprintf(p.w, "%s, %s\n", line, time.Since(p.start).Round(time.Millisecond))
}

// Write prints b, whole lines of a log, on w: on a terminal the bar is cleared first and
// drawn again after them.
func (p *Bar) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar == nil || p.bar.IsFinished() {
		return p.w.Write(b)
	}
	_ = p.bar.Clear()
	n, err := p.w.Write(b)
	_ = p.bar.RenderBlank()
	return n, err
}

// Finish ends the bar (the line mode has nothing to end).
func (p *Bar) Finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}

// IsTerminal reports whether f (stdin, stdout or stderr) is a terminal (a character device).
func IsTerminal(f any) bool {
	file, ok := f.(*os.File)
	if !ok {
		return false
	}
	st, err := file.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
