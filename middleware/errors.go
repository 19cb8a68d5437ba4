package middleware

import (
	"errors"
	"fmt"
	"strings"
)

// ErrPermanent is matched (errors.Is) by every error wrapped with Permanent.
var ErrPermanent = errors.New("permanent error")

// PermanentError marks an error that retrying cannot fix (see Permanent).
type PermanentError struct{ Err error }

// Error returns the text of the wrapped error, unchanged.
func (e *PermanentError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *PermanentError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrPermanent) true.
func (e *PermanentError) Is(target error) bool { return target == ErrPermanent }

// Permanent marks err as permanent: DeadLetter does not retry it, it dead-letters the
// message at once. The text, type and chain of err are kept as they are in the dead letter.
// Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err, or an error it wraps, was marked with Permanent.
func IsPermanent(err error) bool { return errors.Is(err, ErrPermanent) }

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

// errorReport renders err as Jasper fills a dead letter (jasper-spec §6), with the same
// conventions as the forwarder's dead letters: exception_type is the Go type of the root
// cause, exception_message the error's text, exception_text the whole chain, one
// "type: text" line per error (the errors of a joined error indented below it).
func errorReport(err error) (typ, msg, text string) {
	var b strings.Builder
	writeChain(&b, err, "")
	return fmt.Sprintf("%T", rootCause(err)), err.Error(), strings.TrimSuffix(b.String(), "\n")
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
