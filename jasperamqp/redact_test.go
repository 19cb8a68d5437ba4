package jasperamqp

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"amqp://guest:guest@localhost:5672/", "amqp://guest:xxxxx@localhost:5672/"},
		{"amqps://svc:s3cr%2Ft@rabbit.example:5671/vhost", "amqps://svc:xxxxx@rabbit.example:5671/vhost"},
		{"amqp://user@localhost/", "amqp://user@localhost/"},
		{"amqp://localhost:5672/", "amqp://localhost:5672/"},
		{"amqp://user:pa/ss@host:5672/", "amqp://user:xxxxx@host:5672/"},       // unescaped "/" in the password
		{"amqp://user:p@ss#word@host:5672/", "amqp://user:xxxxx@host:5672/"},   // unescaped "@" and "#"
		{"amqp://user:pa ss@host:5672/%zz", "amqp://user:xxxxx@host:5672/%zz"}, // does not parse
		{"not a url", "not a url"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestScrubError(t *testing.T) {
	const u = "amqp://svc:s3cr%2Ft@host:5672/"
	for _, leak := range []string{"s3cr/t", "s3cr%2Ft", "s3cr%2ft"} {
		err := scrubError(fmt.Errorf("dial %s failed (%s)", u, leak), u)
		if strings.Contains(strings.ToLower(err.Error()), "s3cr") {
			t.Errorf("scrubbed error still holds the password: %v", err)
		}
	}
	plain := errors.New("connection refused")
	if got := scrubError(plain, u); got != plain {
		t.Errorf("an error without the password must be returned as is, got %v", got)
	}
	if scrubError(nil, u) != nil {
		t.Error("nil error")
	}
}
