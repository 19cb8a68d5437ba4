// Package destname maps Jasper destination URIs to dot-separated names, shared by the NATS
// and Redis relay targets (jaspernats, jasperredis). The table is in docs/relay-targets.md.
package destname

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// ErrUnmappable is wrapped by the errors of Name.
var ErrUnmappable = errors.New("destination cannot be mapped")

// Name maps a destination to a dot-separated name of non-empty tokens:
//
//	rabbitmq://queue/Q                -> Q
//	rabbitmq://exchange/X             -> X
//	rabbitmq://exchange/X/routing/K   -> X.K
//	SCHEME://A/B (tcp, local, ...)    -> SCHEME.A.B, with ':' replaced by '_' (tcp://h:5000/q -> tcp.h_5000.q)
//	plain topic                       -> itself
//
// A trailing slash is dropped. A result containing whitespace, control characters, '*', '>'
// or an empty token (two dots in a row, a leading or trailing dot) is refused.
func Name(destination string) (string, error) {
	var name string
	if scheme, rest, ok := strings.Cut(destination, "://"); ok {
		rest = strings.TrimSuffix(rest, "/")
		switch strings.ToLower(scheme) {
		case "rabbitmq":
			parts := strings.Split(rest, "/")
			switch {
			case len(parts) == 2 && parts[0] == "queue", len(parts) == 2 && parts[0] == "exchange":
				name = parts[1]
			case len(parts) == 4 && parts[0] == "exchange" && parts[2] == "routing":
				name = parts[1] + "." + parts[3]
			default:
				return "", fmt.Errorf("%w: %q is not rabbitmq://queue/NAME, rabbitmq://exchange/NAME or rabbitmq://exchange/NAME/routing/KEY", ErrUnmappable, destination)
			}
		default:
			name = strings.ToLower(scheme) + "." + strings.ReplaceAll(strings.ReplaceAll(rest, ":", "_"), "/", ".")
		}
	} else {
		name = destination
	}
	if err := check(name); err != nil {
		return "", fmt.Errorf("%w: %q maps to %q: %s", ErrUnmappable, destination, name, err)
	}
	return name, nil
}

func check(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	for _, r := range name {
		switch {
		case unicode.IsSpace(r):
			return errors.New("it contains whitespace")
		case unicode.IsControl(r):
			return errors.New("it contains a control character")
		case r == '*' || r == '>':
			return errors.New("it contains a wildcard (* or >)")
		}
	}
	for _, tok := range strings.Split(name, ".") {
		if tok == "" {
			return errors.New("it has an empty token (a leading, trailing or double dot)")
		}
	}
	return nil
}
