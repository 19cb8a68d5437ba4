package dashboard

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// sample is one reading of the row counts (admin.Counts).
type sample struct {
	At       time.Time
	Outgoing int64 // rows waiting to be relayed
	Pending  int64 // incoming rows Incoming or Scheduled
	Handled  int64 // incoming rows Handled (kept for deduplication)
}

// sampler keeps the samples of the last window, oldest first.
type sampler struct {
	mu      sync.Mutex
	samples []sample
	max     int
}

func (s *sampler) add(x sample) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples = append(s.samples, x)
	if len(s.samples) > s.max {
		s.samples = append(s.samples[:0], s.samples[len(s.samples)-s.max:]...)
	}
}

func (s *sampler) snapshot() []sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sample(nil), s.samples...)
}

// take reads one sample through admin.Counts.
func (h *Handler) take(ctx context.Context) error {
	c, err := admin.Counts(ctx, h.db, h.cfg.Schema)
	if err != nil {
		return err
	}
	h.samples.add(sample{
		At:       time.Now(),
		Outgoing: c.OutgoingTotal(),
		Pending:  c.IncomingStatus(schema.StatusIncoming) + c.IncomingStatus(schema.StatusScheduled),
		Handled:  c.IncomingStatus(schema.StatusHandled),
	})
	return nil
}

// sampleLoop samples until ctx ends.
func (h *Handler) sampleLoop(ctx context.Context) {
	defer close(h.done)
	t := time.NewTicker(h.cfg.SampleInterval)
	defer t.Stop()
	for {
		if err := h.take(ctx); err != nil && ctx.Err() == nil {
			h.logger.Debug("dashboard: sample the row counts", map[string]any{"err": h.redact(err)})
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// plot is the inline SVG of the samples: one line per series.
type plot struct {
	Width, Height int
	Lines         []plotLine
	MaxLabel      string
	Span          string
	Empty         bool
	// Rates are the figures derived from the first and last samples.
	OutgoingRate, HandledRate string
}

type plotLine struct {
	Name, Color, Points string
	Last                int64
}

func buildPlot(ss []sample) plot {
	p := plot{Width: 640, Height: 160}
	if len(ss) < 2 {
		p.Empty = true
		if len(ss) == 1 {
			p.Lines = []plotLine{{Name: "outgoing (relay backlog)", Color: "#c0392b", Last: ss[0].Outgoing},
				{Name: "incoming pending", Color: "#2471a3", Last: ss[0].Pending},
				{Name: "incoming handled", Color: "#229954", Last: ss[0].Handled}}
		}
		return p
	}
	var maxV int64 = 1
	for _, s := range ss {
		maxV = max(maxV, s.Outgoing, s.Pending, s.Handled)
	}
	t0, t1 := ss[0].At, ss[len(ss)-1].At
	span := t1.Sub(t0)
	if span <= 0 {
		span = time.Second
	}
	series := []struct {
		name, color string
		get         func(sample) int64
	}{
		{"outgoing (relay backlog)", "#c0392b", func(s sample) int64 { return s.Outgoing }},
		{"incoming pending", "#2471a3", func(s sample) int64 { return s.Pending }},
		{"incoming handled", "#229954", func(s sample) int64 { return s.Handled }},
	}
	for _, se := range series {
		var b strings.Builder
		for _, s := range ss {
			x := float64(s.At.Sub(t0)) / float64(span) * float64(p.Width)
			y := float64(p.Height) - float64(se.get(s))/float64(maxV)*float64(p.Height-10)
			fmt.Fprintf(&b, "%.1f,%.1f ", x, y)
		}
		p.Lines = append(p.Lines, plotLine{Name: se.name, Color: se.color, Points: strings.TrimSpace(b.String()), Last: se.get(ss[len(ss)-1])})
	}
	p.MaxLabel = fmt.Sprint(maxV)
	p.Span = span.Round(time.Second).String()
	secs := span.Seconds()
	first, last := ss[0], ss[len(ss)-1]
	p.OutgoingRate = fmt.Sprintf("%+.1f/s", float64(last.Outgoing-first.Outgoing)/secs)
	p.HandledRate = fmt.Sprintf("%+.1f/s", float64(last.Handled-first.Handled)/secs)
	return p
}
