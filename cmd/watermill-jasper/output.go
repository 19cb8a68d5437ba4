package main

// The --output flag of the listing commands and the progress of long commands.

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/pflag"
)

// outputFlag is the --output flag: text (the default, for people) or json (one JSON document
// on stdout, for programs; its keys are snake_case and stable).
type outputFlag struct{ json bool }

// newOutputFlag registers --output on fs.
func newOutputFlag(fs *pflag.FlagSet) *outputFlag {
	o := &outputFlag{}
	fs.Var(o, "output", "`FORMAT` of what is printed on stdout: text or json")
	return o
}

// String returns the format: text or json.
func (o *outputFlag) String() string {
	if o != nil && o.json {
		return "json"
	}
	return "text"
}

// Type names the value in the help when the usage names none.
func (o *outputFlag) Type() string { return "format" }

// Set parses text or json.
func (o *outputFlag) Set(v string) error {
	switch v {
	case "text":
		o.json = false
	case "json":
		o.json = true
	default:
		return fmt.Errorf("want text or json, got %q", v)
	}
	return nil
}

// writeJSON prints v as one indented JSON document.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// progressBar reports the progress of a long command on w (stderr): a progress bar when w is a
// terminal, else one line per step ("NAME: DONE of TOTAL done (PCT%), EXTRA, ELAPSED"), so that
// logs and tests read plain lines.
type progressBar struct {
	w     io.Writer
	name  string
	start time.Time
	bar   *progressbar.ProgressBar
}

// newProgress starts reporting the progress of name towards total steps (-1: unknown).
func newProgress(w io.Writer, name string, total int64) *progressBar {
	p := &progressBar{w: w, name: name, start: time.Now()}
	if isTerminal(w) {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(name),
			progressbar.OptionShowCount(),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionThrottle(100*time.Millisecond),
		)
	}
	return p
}

// step reports done of total steps, with extra words for the line ("12 replayed").
func (p *progressBar) step(done, total int64, extra string) {
	if p.bar != nil {
		if total >= 0 && p.bar.GetMax64() != total {
			p.bar.ChangeMax64(total)
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

// finish ends the bar (a line mode has nothing to end).
func (p *progressBar) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}
