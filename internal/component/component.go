// Package component labels the work of the library's long-running components with a pprof
// label: Label = "forwarder" or "agent", on the contexts their statements run with and on
// their goroutines. A CPU profile can then be split by component (go tool pprof -tagfocus
// watermill_jasper=forwarder), and a database wrapper can tell whose statement it runs (the
// benchmarks count the relay's statements this way).
package component

import (
	"context"
	"runtime/pprof"
)

// Label is the pprof label key.
const Label = "watermill_jasper"

// Names of the components.
const (
	Forwarder = "forwarder"
	Agent     = "agent"
)

// Do calls fn with ctx labelled as component name's work, the calling goroutine labelled
// likewise while fn runs (the goroutines fn starts keep the label), as pprof.Do does.
func Do(ctx context.Context, name string, fn func(ctx context.Context)) {
	pprof.Do(ctx, pprof.Labels(Label, name), fn)
}

// With is ctx labelled as component name's work (a goroutine takes the label with
// pprof.SetGoroutineLabels(ctx)).
func With(ctx context.Context, name string) context.Context {
	return pprof.WithLabels(ctx, pprof.Labels(Label, name))
}

// Of is the component whose work ctx is ("" when none).
func Of(ctx context.Context) string {
	v, _ := pprof.Label(ctx, Label)
	return v
}
