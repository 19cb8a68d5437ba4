package row

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"unicode"
)

var uriScheme = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*$`)

// ValidateURI reports whether destination is a URI that .NET Jasper reads back (its ToUri()
// is new Uri(...)): scheme://authority[/path...], such as rabbitmq://queue/orders or
// tcp://host:2222, without spaces or control characters. Jasper 2.0's outgoing recovery
// reads every destination of the shared outbox this way.
func ValidateURI(destination string) error {
	scheme, rest, ok := strings.Cut(destination, "://")
	switch {
	case !ok || !uriScheme.MatchString(scheme):
		return fmt.Errorf("%q is not a URI (scheme://name, e.g. rabbitmq://queue/orders)", destination)
	case strings.IndexFunc(destination, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return fmt.Errorf("%q holds a space or control character, which a URI may not", destination)
	}
	u, err := url.Parse(destination)
	if err != nil {
		return fmt.Errorf("%q is not a URI: %w", destination, err)
	}
	if u.Host == "" && rest != "" && !strings.HasPrefix(rest, "/") {
		return fmt.Errorf("%q has no host part after scheme://", destination)
	}
	return nil
}
