package middleware

import (
	"fmt"
	"strings"
)

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
