package fault_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/fault"
)

func TestKindOf(t *testing.T) {
	base := errors.New("boom")
	tests := []struct {
		name string
		err  error
		want fault.Kind
	}{
		{"nil", nil, fault.KindOrdinary},
		{"plain", base, fault.KindOrdinary},
		{"permanent", fault.Permanent(base), fault.KindPermanent},
		{"temporary", fault.Temporary(base), fault.KindTemporary},
		{"wrapped permanent", fmt.Errorf("publish: %w", fault.Permanent(base)), fault.KindPermanent},
		{"wrapped temporary", fmt.Errorf("publish: %w", fault.Temporary(base)), fault.KindTemporary},
		{"joined", errors.Join(base, fault.Temporary(base)), fault.KindTemporary},
		{"both: permanent wins", fault.Temporary(fault.Permanent(base)), fault.KindPermanent},
		{"type with an Is method", typed{}, fault.KindPermanent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fault.KindOf(tt.err); got != tt.want {
				t.Fatalf("KindOf = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestMarkKeepsTextAndChain(t *testing.T) {
	base := errors.New("unreadable payload")
	err := fault.Permanent(base)
	if err.Error() != "unreadable payload" || !errors.Is(err, base) {
		t.Fatalf("text %q, chain kept %v", err.Error(), errors.Is(err, base))
	}
	if fault.Permanent(nil) != nil || fault.Temporary(nil) != nil {
		t.Fatal("marking nil must give nil")
	}
}

type typed struct{}

func (typed) Error() string        { return "typed" }
func (typed) Is(target error) bool { return target == fault.ErrPermanent }

func ExamplePermanent() {
	err := fmt.Errorf("handle order 42: %w", fault.Permanent(errors.New("unreadable payload")))
	fmt.Println(fault.KindOf(err), err)
	// Output: permanent handle order 42: unreadable payload
}

func TestDescribe(t *testing.T) {
	root := errors.New("connection refused")
	err := fmt.Errorf("publish to orders: %w", fault.Temporary(root))
	typ, msg, chain := fault.Describe(err)
	if typ != "*errors.errorString" || msg != "publish to orders: connection refused" {
		t.Fatalf("type %q, message %q", typ, msg)
	}
	want := "*fmt.wrapError: publish to orders: connection refused\n*fault.Error: connection refused\n*errors.errorString: connection refused"
	if chain != want {
		t.Fatalf("chain:\n%s\nwant:\n%s", chain, want)
	}
	joined := errors.Join(errors.New("a"), errors.New("b"))
	if _, _, chain := fault.Describe(joined); chain != "*errors.joinError: a\n  b\n  *errors.errorString: a\n  *errors.errorString: b" {
		t.Fatalf("joined chain:\n%s", chain)
	}
}
