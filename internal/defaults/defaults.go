// Package defaults fills the zero fields of the Config structs (their setDefaults methods):
// one line a field instead of an if block each.
package defaults

// Set sets *p to v when *p is the zero value.
func Set[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}
