package jasperamqp

import (
	"errors"
	"strings"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/fault"
)

func TestParseDestination(t *testing.T) {
	long := strings.Repeat("q", 256)
	tests := []struct {
		uri  string
		want Destination
	}{
		{"rabbitmq://queue/orders", Destination{"rabbitmq", Queue, "orders", "orders"}},
		{"rabbitmq://queue/orders/", Destination{"rabbitmq", Queue, "orders", "orders"}},
		{"RABBITMQ://QUEUE/orders", Destination{"rabbitmq", Queue, "orders", "orders"}},
		{"RabbitMQ://Queue/Orders", Destination{"rabbitmq", Queue, "Orders", "Orders"}},
		{"rabbitmq://queue/orders/durable", Destination{"rabbitmq", Queue, "orders", "orders"}},
		{"rabbitmq://queue/durable", Destination{"rabbitmq", Queue, "durable", "durable"}},
		{"rabbitmq://queue/a.b-c_d:e", Destination{"rabbitmq", Queue, "a.b-c_d:e", "a.b-c_d:e"}},
		{"rabbitmq://queue/with%20space", Destination{"rabbitmq", Queue, "with space", "with space"}},
		{"rabbitmq://queue/a%2Fb", Destination{"rabbitmq", Queue, "a/b", "a/b"}},
		{"  rabbitmq://queue/orders  ", Destination{"rabbitmq", Queue, "orders", "orders"}},
		{"rabbitmq://exchange/events", Destination{"rabbitmq", Exchange, "events", ""}},
		{"rabbitmq://exchange/events/", Destination{"rabbitmq", Exchange, "events", ""}},
		{"rabbitmq://EXCHANGE/events/durable", Destination{"rabbitmq", Exchange, "events", ""}},
		{"rabbitmq://exchange/events/routing/order.created", Destination{"rabbitmq", Exchange, "events", "order.created"}},
		{"rabbitmq://exchange/events/ROUTING/order.created/", Destination{"rabbitmq", Exchange, "events", "order.created"}},
		{"rabbitmq://exchange/events/routing/k/durable", Destination{"rabbitmq", Exchange, "events", "k"}},
		{"rabbitmq://exchange/default/routing/orders", Destination{"rabbitmq", Exchange, "", "orders"}},
		{"rabbitmq://exchange/amq.topic/routing/a.*", Destination{"rabbitmq", Exchange, "amq.topic", "a.*"}},
		{"local://orders", Destination{"local", Local, "orders", ""}},
		{"local://orders/", Destination{"local", Local, "orders", ""}},
		{"LOCAL://Orders/", Destination{"local", Local, "orders", ""}},
		{"local://durable/orders", Destination{"local", Local, "orders", ""}},
		{"local://durable/", Destination{"local", Local, "durable", ""}},
		{"local://durable/durable", Destination{"local", Local, "durable", ""}},
		{"local://", Destination{"local", Local, "default", ""}},
		{"local://replies", Destination{"local", Local, "replies", ""}},
		{"tcp://localhost:2222/", Destination{"tcp", Other, "localhost:2222", ""}},
		{"tcp://localhost:2222/durable", Destination{"tcp", Other, "localhost:2222/durable", ""}},
		{"sqs://orders", Destination{"sqs", Other, "orders", ""}},
	}
	for _, tt := range tests {
		got, err := ParseDestination(tt.uri)
		if err != nil {
			t.Errorf("ParseDestination(%q): %v", tt.uri, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseDestination(%q) = %+v, want %+v", tt.uri, got, tt.want)
		}
	}

	invalid := []struct{ uri, reason string }{
		{"", "empty URI"},
		{"   ", "empty URI"},
		{"orders", "no scheme"},
		{"/queue/orders", "no scheme"},
		{"://queue/orders", "not a URI"},
		{"rabbitmq:queue/orders", "missing \"//\""},
		{"rabbitmq://", "missing \"queue\" or \"exchange\""},
		{"rabbitmq:///orders", "missing \"queue\" or \"exchange\""},
		{"rabbitmq://queue", "missing queue name"},
		{"rabbitmq://queue/", "missing queue name"},
		{"rabbitmq://queue//", "empty path segment"},
		{"rabbitmq://queue//orders", "empty path segment"},
		{"rabbitmq://queue/a/b", "a queue destination is rabbitmq://queue/NAME"},
		{"rabbitmq://queue/a/routing/b", "a queue destination is rabbitmq://queue/NAME"},
		{"rabbitmq://exchange", "missing exchange name"},
		{"rabbitmq://exchange/", "missing exchange name"},
		{"rabbitmq://exchange/e/routing", "missing routing key"},
		{"rabbitmq://exchange/e/routing/", "missing routing key"},
		{"rabbitmq://exchange/e/key/k", "an exchange destination is"},
		{"rabbitmq://exchange/e/routing/k/extra", "an exchange destination is"},
		{"rabbitmq://exchange/default", "the default exchange needs a routing key"},
		{"rabbitmq://topic/orders", "unknown rabbitmq address kind \"topic\""},
		{"rabbitmq://guest:guest@queue/orders", "no user info"},
		{"rabbitmq://queue:5672/orders", "no port"},
		{"rabbitmq://queue/orders?durable=true", "unexpected query"},
		{"rabbitmq://queue/orders#x", "unexpected fragment"},
		{"rabbitmq://queue/bad%zzescape", "not a URI"},
		{"rabbitmq://queue/" + long, "at most 255 bytes"},
	}
	for _, tt := range invalid {
		_, err := ParseDestination(tt.uri)
		if err == nil {
			t.Errorf("ParseDestination(%q): no error, want one about %q", tt.uri, tt.reason)
			continue
		}
		if !errors.Is(err, ErrInvalidDestination) {
			t.Errorf("ParseDestination(%q): error %v is not ErrInvalidDestination", tt.uri, err)
		}
		var de *DestinationError
		if !errors.As(err, &de) || !fault.IsPermanent(err) || de.URI != tt.uri {
			t.Errorf("ParseDestination(%q): error %#v is not a permanent *DestinationError naming the URI", tt.uri, err)
		}
		msg := err.Error()
		for _, want := range []string{tt.reason, "rabbitmq://queue/NAME", "rabbitmq://exchange/NAME/routing/KEY"} {
			if !strings.Contains(msg, want) {
				t.Errorf("ParseDestination(%q): error %q does not mention %q", tt.uri, msg, want)
			}
		}
		if len(tt.uri) < 100 && !strings.Contains(msg, RedactURL(tt.uri)) {
			t.Errorf("ParseDestination(%q): error %q does not name the URI", tt.uri, msg)
		}
	}
}

func TestDestinationString(t *testing.T) {
	for _, uri := range []string{
		"rabbitmq://queue/orders",
		"rabbitmq://exchange/events",
		"rabbitmq://exchange/events/routing/k",
		"rabbitmq://exchange/default/routing/orders",
		"local://orders",
		"tcp://localhost:2222",
	} {
		d, err := ParseDestination(uri)
		if err != nil {
			t.Fatal(err)
		}
		if d.String() != uri {
			t.Errorf("ParseDestination(%q).String() = %q", uri, d.String())
		}
		again, err := ParseDestination(d.String())
		if err != nil || again != d {
			t.Errorf("round trip of %q: %+v, %v", uri, again, err)
		}
	}
}

func TestDestinationAMQP(t *testing.T) {
	tests := []struct {
		uri           string
		amqp          bool
		exchange, key string
	}{
		{"rabbitmq://queue/orders", true, "", "orders"},
		{"rabbitmq://exchange/events", true, "events", ""},
		{"rabbitmq://exchange/events/routing/k", true, "events", "k"},
		{"rabbitmq://exchange/default/routing/orders", true, "", "orders"},
		{"local://orders", false, "", ""},
		{"tcp://h:1", false, "", ""},
	}
	for _, tt := range tests {
		d, err := ParseDestination(tt.uri)
		if err != nil {
			t.Fatal(err)
		}
		if d.IsAMQP() != tt.amqp || d.AMQPExchange() != tt.exchange || d.RoutingKey != tt.key {
			t.Errorf("%s: IsAMQP %v exchange %q key %q, want %v %q %q", tt.uri, d.IsAMQP(), d.AMQPExchange(), d.RoutingKey,
				tt.amqp, tt.exchange, tt.key)
		}
		// The config's generators agree with the parsed destination.
		if tt.amqp && (exchangeName(tt.uri) != tt.exchange || routingKey(tt.uri) != tt.key) {
			t.Errorf("%s: config maps to exchange %q key %q", tt.uri, exchangeName(tt.uri), routingKey(tt.uri))
		}
		if !tt.amqp && exchangeName(tt.uri) != invalidTopicExchange {
			t.Errorf("%s: config maps a non-RabbitMQ topic to exchange %q", tt.uri, exchangeName(tt.uri))
		}
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{Queue: "queue", Exchange: "exchange", Local: "local", Other: "other", Kind(42): "other"} {
		if k.String() != want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), k.String(), want)
		}
	}
	var zero Destination
	if zero.Kind != Other || zero.IsAMQP() {
		t.Errorf("zero Destination: kind %v", zero.Kind)
	}
}

func FuzzParseDestination(f *testing.F) {
	for _, s := range []string{"rabbitmq://queue/orders", "rabbitmq://exchange/e/routing/k/", "local://durable/x", "tcp://h:1/", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		d, err := ParseDestination(uri)
		if err != nil {
			if !errors.Is(err, ErrInvalidDestination) {
				t.Fatalf("%q: %v is not ErrInvalidDestination", uri, err)
			}
			return
		}
		if d.IsAMQP() {
			if d.Kind == Queue && (d.Name == "" || d.RoutingKey != d.Name) {
				t.Fatalf("%q: bad queue %+v", uri, d)
			}
			again, err := ParseDestination(d.String())
			if err != nil || again != d {
				t.Fatalf("%q: %+v, String %q parses as %+v, %v", uri, d, d.String(), again, err)
			}
		}
	})
}
