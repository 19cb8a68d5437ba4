// Package fault is the one error vocabulary of watermill-jasper. Every component that decides
// what to do with a failure (the forwarder relaying an envelope, the jasperamqp publishers, the
// DeadLetter and Inbox middleware) reads an error the same way, as one of three kinds:
//
//   - permanent: retrying cannot help (an unreadable payload, a destination that can never
//     exist). The message goes to the dead letters at once.
//   - temporary: the failure says nothing about the message (a lost broker connection, a
//     broker that is restarting). It is retried without counting an attempt against
//     MaxAttempts.
//   - ordinary: any other error. It is retried, and each failure counts as an attempt; after
//     MaxAttempts the message goes to the dead letters.
//
// Mark an error with Permanent or Temporary where it is created or returned:
//
//	if err := json.Unmarshal(msg.Payload, &order); err != nil {
//		return fault.Permanent(fmt.Errorf("order %s: unreadable payload: %w", msg.UUID, err))
//	}
//
// The mark survives wrapping (fmt.Errorf("...: %w", err), errors.Join): the kind is found with
// errors.Is against ErrPermanent and ErrTemporary, which is also how an error type of its own
// joins the vocabulary (an Is method that matches one of them, as jasperamqp's errors have).
// When an error is marked both ways, permanent wins. docs/errors.md has the whole contract.
package fault

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrPermanent is matched (errors.Is) by every error marked permanent.
	ErrPermanent = errors.New("permanent error")
	// ErrTemporary is matched (errors.Is) by every error marked temporary.
	ErrTemporary = errors.New("temporary error")
)

// Kind is how a failure is handled.
type Kind int

const (
	// KindOrdinary errors are retried; each failure counts as an attempt.
	KindOrdinary Kind = iota
	// KindTemporary errors are retried without counting an attempt.
	KindTemporary
	// KindPermanent errors are not retried: the message goes to the dead letters at once.
	KindPermanent
)

// String returns "ordinary", "temporary" or "permanent".
func (k Kind) String() string {
	switch k {
	case KindTemporary:
		return "temporary"
	case KindPermanent:
		return "permanent"
	}
	return "ordinary"
}

// Error is an error marked with a Kind by Permanent or Temporary. Its text is the text of the
// error it wraps, unchanged, so that dead letters and logs show the original error.
type Error struct {
	Kind Kind
	Err  error
}

// Error returns the text of the wrapped error.
func (e *Error) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *Error) Unwrap() error { return e.Err }

// Is matches ErrPermanent or ErrTemporary, by the error's Kind.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrPermanent:
		return e.Kind == KindPermanent
	case ErrTemporary:
		return e.Kind == KindTemporary
	}
	return false
}

// Permanent marks err as permanent: the message is dead-lettered at once. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: KindPermanent, Err: err}
}

// Temporary marks err as temporary: it is retried without counting an attempt.
// Temporary(nil) is nil.
func Temporary(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: KindTemporary, Err: err}
}

// IsPermanent reports whether err, or an error it wraps, is marked permanent.
func IsPermanent(err error) bool { return err != nil && errors.Is(err, ErrPermanent) }

// IsTemporary reports whether err, or an error it wraps, is marked temporary and not
// permanent.
func IsTemporary(err error) bool {
	return err != nil && errors.Is(err, ErrTemporary) && !errors.Is(err, ErrPermanent)
}

// KindOf returns the kind of err: KindPermanent when any error in its chain is marked permanent,
// else KindTemporary when one is marked temporary, else KindOrdinary (also for nil).
func KindOf(err error) Kind {
	switch {
	case IsPermanent(err):
		return KindPermanent
	case IsTemporary(err):
		return KindTemporary
	}
	return KindOrdinary
}

// Describe renders err the way a dead letter records it (Jasper's exception columns):
// the Go type of the root cause (following Unwrap; of a joined error, its first error), the
// error's text, and the whole chain, one "type: text" line per error, the errors of a joined
// error indented below it.
func Describe(err error) (typ, message, chain string) {
	if err == nil {
		return "", "", ""
	}
	var b strings.Builder
	writeChain(&b, err, "")
	return fmt.Sprintf("%T", rootCause(err)), err.Error(), strings.TrimSuffix(b.String(), "\n")
}

// rootCause follows Unwrap to the innermost error; of a joined error it follows the first.
func rootCause(err error) error {
	for {
		var next error
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			next = u.Unwrap()
		case interface{ Unwrap() []error }:
			if errs := u.Unwrap(); len(errs) > 0 {
				next = errs[0]
			}
		}
		if next == nil {
			return err
		}
		err = next
	}
}

func writeChain(b *strings.Builder, err error, indent string) {
	for e := err; e != nil; {
		fmt.Fprintf(b, "%s%T: %s\n", indent, e, strings.ReplaceAll(e.Error(), "\n", "\n"+indent+"  "))
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			e = u.Unwrap()
		case interface{ Unwrap() []error }:
			for _, inner := range u.Unwrap() {
				writeChain(b, inner, indent+"  ")
			}
			return
		default:
			return
		}
	}
}
