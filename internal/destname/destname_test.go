package destname

import (
	"errors"
	"testing"
)

func TestName(t *testing.T) {
	for in, want := range map[string]string{
		"rabbitmq://queue/orders":                "orders",
		"rabbitmq://exchange/events":             "events",
		"rabbitmq://exchange/events/routing/a.b": "events.a.b",
		"rabbitmq://queue/orders/":               "orders",
		"tcp://localhost:2222/":                  "tcp.localhost_2222",
		"tcp://host:5000/orders":                 "tcp.host_5000.orders",
		"local://replies":                        "local.replies",
		"orders.placed":                          "orders.placed",
	} {
		got, err := Name(in)
		if err != nil || got != want {
			t.Errorf("Name(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "with space", "a..b", ".a", "a.", "a.*", "a.>", "rabbitmq://queue/", "rabbitmq://topic/x", "rabbitmq://queue/my orders", "tab\tx"} {
		if got, err := Name(in); !errors.Is(err, ErrUnmappable) {
			t.Errorf("Name(%q) = %q, %v; want ErrUnmappable", in, got, err)
		}
	}
}
