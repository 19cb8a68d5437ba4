// Package faulttest holds error values for tests of code that reads the fault vocabulary:
// one value, so that the forwarder, jasperamqp and the middleware are shown to read the very
// same error the same way.
package faulttest

import (
	"errors"

	"github.com/watermill-jasper/watermill-jasper/fault"
)

// Permanent is a permanent error (fault.Permanent): it must be dead-lettered at once.
var Permanent = fault.Permanent(errors.New("watermill-jasper test: the one permanent error"))

// Temporary is a temporary error (fault.Temporary): it must be retried without counting an
// attempt, and never dead-lettered.
var Temporary = fault.Temporary(errors.New("watermill-jasper test: the one temporary error"))
