package jasperamqp

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/watermill-jasper/watermill-jasper/fault"
)

// Kind is what a Jasper destination URI addresses.
type Kind int

const (
	// Other is a URI with a scheme this package does not route (tcp://, sqs://, ...). It is the
	// zero value.
	Other Kind = iota
	// Queue is rabbitmq://queue/NAME: published to the default exchange "" with routing key NAME.
	Queue
	// Exchange is rabbitmq://exchange/NAME[/routing/KEY]: published to exchange NAME with routing
	// key KEY ("" when absent).
	Exchange
	// Local is local://QUEUE or local://durable/QUEUE: a Jasper in-process queue, not AMQP.
	Local
)

// String returns "queue", "exchange", "local" or "other".
func (k Kind) String() string {
	switch k {
	case Queue:
		return "queue"
	case Exchange:
		return "exchange"
	case Local:
		return "local"
	default:
		return "other"
	}
}

// Destination is a parsed Jasper destination URI (the destination column of
// jasper_outgoing_envelopes, or received_at of jasper_incoming_envelopes).
type Destination struct {
	// Scheme is the lower-cased URI scheme: "rabbitmq", "local", or another for Kind Other.
	Scheme string
	// Kind says what the URI addresses.
	Kind Kind
	// Name is the queue name (Queue, Local) or the exchange name (Exchange; "" for Jasper's
	// "default" exchange, i.e. AMQP's default exchange). For Other it is the URI without its
	// scheme. Names keep the case they have in the URI.
	Name string
	// RoutingKey is the AMQP routing key a message to this destination is published with: the
	// queue name for Queue, the /routing/ segment (or "") for Exchange, "" otherwise.
	RoutingKey string
}

// IsAMQP reports whether the destination is a RabbitMQ queue or exchange.
func (d Destination) IsAMQP() bool { return d.Kind == Queue || d.Kind == Exchange }

// AMQPExchange is the exchange a message to d is published to: "" (the default exchange) for a
// queue, Name for an exchange.
func (d Destination) AMQPExchange() string {
	if d.Kind == Exchange {
		return d.Name
	}
	return ""
}

// String returns d in the canonical form Jasper writes (rabbitmq://queue/NAME,
// rabbitmq://exchange/NAME[/routing/KEY], local://NAME, or SCHEME://NAME for Other), with the
// rabbitmq names path-escaped, so that ParseDestination(d.String()) == d for RabbitMQ destinations.
func (d Destination) String() string {
	switch d.Kind {
	case Queue:
		return "rabbitmq://queue/" + url.PathEscape(d.Name)
	case Exchange:
		name := url.PathEscape(d.Name)
		if name == "" {
			name = defaultExchangeSegment
		}
		if d.RoutingKey == "" {
			return "rabbitmq://exchange/" + name
		}
		return "rabbitmq://exchange/" + name + "/routing/" + url.PathEscape(d.RoutingKey)
	default:
		return d.Scheme + "://" + d.Name
	}
}

// ErrInvalidDestination is matched (errors.Is) by every error about a malformed destination URI.
var ErrInvalidDestination = errors.New("invalid Jasper destination")

// ErrNotRabbitMQ is matched (errors.Is) by the error a publisher returns for a well-formed
// destination that is not a RabbitMQ queue or exchange (local://..., tcp://...).
var ErrNotRabbitMQ = errors.New("not a RabbitMQ destination")

// ErrDestinationNotFound is matched (errors.Is) by the error a publisher returns when the queue
// or exchange of a destination does not exist on the broker and may not be declared. It is not
// permanent: the forwarder should retry (the queue may be created later).
var ErrDestinationNotFound = errors.New("RabbitMQ queue or exchange not found")

// AcceptedShapes lists the destination URIs this package routes to RabbitMQ; errors quote it.
const AcceptedShapes = "rabbitmq://queue/NAME, rabbitmq://exchange/NAME, rabbitmq://exchange/NAME/routing/KEY " +
	"(case-insensitive scheme and keywords, optional trailing \"/\" or \"/durable\")"

// DestinationError is returned for a destination that can never be published to AMQP: malformed
// (errors.Is ErrInvalidDestination) or not RabbitMQ (errors.Is ErrNotRabbitMQ). Retrying cannot
// help, so it is permanent (errors.Is(err, fault.ErrPermanent)): a forwarder dead-letters
// the envelope at once.
type DestinationError struct {
	// URI is the destination as given.
	URI string
	// Reason says what is wrong, in words.
	Reason string
	// Err is ErrInvalidDestination or ErrNotRabbitMQ.
	Err error
}

// Error names the URI (password redacted, should it carry one), the reason and what is accepted.
func (e *DestinationError) Error() string {
	if errors.Is(e.Err, ErrNotRabbitMQ) {
		return fmt.Sprintf("jasperamqp: destination %q is %s; this publisher accepts only %s",
			RedactURL(e.URI), e.Reason, AcceptedShapes)
	}
	return fmt.Sprintf("jasperamqp: invalid Jasper destination %q: %s; accepted: %s, or local://QUEUE",
		RedactURL(e.URI), e.Reason, AcceptedShapes)
}

// Unwrap returns ErrInvalidDestination or ErrNotRabbitMQ.
func (e *DestinationError) Unwrap() error { return e.Err }

// Is makes the error permanent in the fault vocabulary (errors.Is(err, fault.ErrPermanent)):
// publishing to this destination will never succeed.
func (e *DestinationError) Is(target error) bool { return target == fault.ErrPermanent }

const (
	schemeRabbitMQ         = "rabbitmq"
	schemeLocal            = "local"
	segQueue               = "queue"
	segExchange            = "exchange"
	segRouting             = "routing"
	segDurable             = "durable"
	defaultExchangeSegment = "default"
	maxAMQPName            = 255 // AMQP short string
)

func invalid(uri, format string, args ...any) error {
	return &DestinationError{URI: uri, Reason: fmt.Sprintf(format, args...), Err: ErrInvalidDestination}
}

// ParseDestination parses a Jasper destination URI.
//
// RabbitMQ shapes: rabbitmq://queue/NAME, rabbitmq://exchange/NAME and
// rabbitmq://exchange/NAME/routing/KEY. .NET canonicalisation is tolerated: the scheme and the
// keywords (queue, exchange, routing) are matched case-insensitively, a trailing "/" and Jasper's
// trailing "/durable" marker (reply URIs of durable endpoints) are ignored, and percent-escapes are
// decoded. Names keep their case (RabbitMQ names are case-sensitive; Jasper writes them
// lower-cased). Jasper's exchange name "default" means AMQP's default exchange (Name "").
//
// local://QUEUE and local://durable/QUEUE parse as Local (local:// alone is Jasper's "default"
// queue); any other scheme parses as Other. Malformed URIs (no scheme, a rabbitmq URI of another
// shape, an empty or over-long name, a user, port, query or fragment on a rabbitmq URI) return a
// *DestinationError matching ErrInvalidDestination that names the URI and the accepted shapes.
func ParseDestination(uri string) (Destination, error) {
	s := strings.TrimSpace(uri)
	if s == "" {
		return Destination{}, invalid(uri, "empty URI")
	}
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the url.Error repeats the URI
		}
		return Destination{}, invalid(uri, "not a URI (%v)", err)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme == "" {
		return Destination{}, invalid(uri, "no scheme")
	}
	switch scheme {
	case schemeRabbitMQ:
		return parseRabbitMQ(uri, u)
	case schemeLocal:
		return parseLocal(uri, u)
	default:
		rest := s[len(u.Scheme)+1:]
		rest = strings.TrimSuffix(strings.TrimPrefix(rest, "//"), "/")
		return Destination{Scheme: scheme, Kind: Other, Name: rest}, nil
	}
}

func parseRabbitMQ(uri string, u *url.URL) (Destination, error) {
	switch {
	case u.Opaque != "":
		return Destination{}, invalid(uri, "missing \"//\" after \"rabbitmq:\"")
	case u.User != nil:
		return Destination{}, invalid(uri, "a rabbitmq destination has no user info (the broker address is configured on the publisher)")
	case u.Port() != "" || strings.HasSuffix(u.Host, ":"):
		return Destination{}, invalid(uri, "a rabbitmq destination has no port (the broker address is configured on the publisher)")
	case u.RawQuery != "" || u.ForceQuery:
		return Destination{}, invalid(uri, "unexpected query %q", "?"+u.RawQuery)
	case u.Fragment != "" || strings.Contains(uri, "#"):
		return Destination{}, invalid(uri, "unexpected fragment")
	}

	segs := []string{u.Hostname()}
	path := strings.TrimSuffix(u.EscapedPath(), "/") // .NET's trailing slash
	if path != "" {
		for _, raw := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
			seg, err := url.PathUnescape(raw) // a name may hold an escaped "/"
			if err != nil {
				return Destination{}, invalid(uri, "bad escape in %q", raw)
			}
			segs = append(segs, seg)
		}
	}
	// Jasper appends /durable to the URI of a durable endpoint (its reply URI); it does not
	// change the address.
	if len(segs)%2 == 1 && len(segs) > 1 && strings.EqualFold(segs[len(segs)-1], segDurable) {
		segs = segs[:len(segs)-1]
	}
	for i, seg := range segs {
		if seg == "" {
			if i == 0 {
				return Destination{}, invalid(uri, "missing \"queue\" or \"exchange\" after \"rabbitmq://\"")
			}
			return Destination{}, invalid(uri, "empty path segment")
		}
		if len(seg) > maxAMQPName {
			return Destination{}, invalid(uri, "segment %d is %d bytes long; AMQP names are at most %d bytes", i+1, len(seg), maxAMQPName)
		}
	}

	d := Destination{Scheme: schemeRabbitMQ}
	switch {
	case strings.EqualFold(segs[0], segQueue):
		if len(segs) != 2 {
			if len(segs) == 1 {
				return Destination{}, invalid(uri, "missing queue name")
			}
			return Destination{}, invalid(uri, "a queue destination is rabbitmq://queue/NAME, got %d path segments", len(segs)-1)
		}
		d.Kind, d.Name, d.RoutingKey = Queue, segs[1], segs[1]
	case strings.EqualFold(segs[0], segExchange):
		switch {
		case len(segs) == 1:
			return Destination{}, invalid(uri, "missing exchange name")
		case len(segs) == 2:
		case len(segs) == 4 && strings.EqualFold(segs[2], segRouting):
			d.RoutingKey = segs[3]
		case len(segs) == 3 && strings.EqualFold(segs[2], segRouting):
			return Destination{}, invalid(uri, "missing routing key after \"routing\"")
		default:
			return Destination{}, invalid(uri, "an exchange destination is rabbitmq://exchange/NAME or rabbitmq://exchange/NAME/routing/KEY")
		}
		d.Kind, d.Name = Exchange, segs[1]
		if d.Name == defaultExchangeSegment { // Jasper: TransportConstants.Default -> ""
			if d.RoutingKey == "" {
				return Destination{}, invalid(uri, "the default exchange needs a routing key (use rabbitmq://queue/NAME)")
			}
			d.Name = ""
		}
	default:
		return Destination{}, invalid(uri, "unknown rabbitmq address kind %q (want \"queue\" or \"exchange\")", segs[0])
	}
	return d, nil
}

func parseLocal(uri string, u *url.URL) (Destination, error) {
	if u.Opaque != "" {
		return Destination{}, invalid(uri, "missing \"//\" after \"local:\"")
	}
	segs := []string{}
	for _, s := range append([]string{strings.ToLower(u.Host)}, strings.Split(u.Path, "/")...) {
		if s != "" {
			segs = append(segs, s)
		}
	}
	name := "default" // local:// is Jasper's default local queue
	switch {
	case len(segs) >= 2 && segs[0] == segDurable:
		name = segs[1]
	case len(segs) >= 1:
		name = segs[0]
	}
	return Destination{Scheme: schemeLocal, Kind: Local, Name: name}, nil
}
