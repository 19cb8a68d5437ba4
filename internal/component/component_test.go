package component

import (
	"context"
	"runtime/pprof"
	"testing"
)

// The label set by Do and With is what Of reads, on the context and the contexts derived
// from it (context.WithoutCancel included: a batch's statements run on one); other labels
// are kept beside it.
func TestLabelReachesDerivedContexts(t *testing.T) {
	if got := Of(context.Background()); got != "" {
		t.Errorf("Of(background) = %q, want none", got)
	}
	base := pprof.WithLabels(context.Background(), pprof.Labels("leg", "drain"))
	Do(base, Forwarder, func(ctx context.Context) {
		derived, cancel := context.WithCancel(context.WithoutCancel(ctx))
		defer cancel()
		if got := Of(derived); got != Forwarder {
			t.Errorf("Of(a context derived from Do's) = %q, want %q", got, Forwarder)
		}
		if v, _ := pprof.Label(derived, "leg"); v != "drain" {
			t.Errorf("the caller's label leg = %q, want drain", v)
		}
	})
	if got := Of(With(base, Agent)); got != Agent {
		t.Errorf("Of(With(ctx, Agent)) = %q", got)
	}
}
