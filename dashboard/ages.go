package dashboard

import (
	"time"

	"github.com/watermill-jasper/watermill-jasper/admin"
)

// group is the count and oldest age of one status and topic (incoming) or destination
// (outgoing), as admin.Ages reads it.
type group struct {
	admin.AgeGroup
}

// Key is the status or destination.
func (g group) Key() string { return g.Name }

// Age is how long ago the oldest row was written, or "" when unknown.
func (g group) Age(now time.Time) string {
	if g.Oldest == nil {
		return ""
	}
	d := now.Sub(*g.Oldest)
	if d < 0 {
		d = 0
	}
	if d >= time.Hour {
		return d.Round(time.Minute).String()
	}
	return d.Round(time.Second).String()
}

func groups(gs []admin.AgeGroup) []group {
	out := make([]group, len(gs))
	for i, g := range gs {
		out[i] = group{g}
	}
	return out
}
