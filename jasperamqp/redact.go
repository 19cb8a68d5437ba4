package jasperamqp

import (
	"errors"
	"net/url"
	"regexp"
	"strings"
)

const redactedPassword = "xxxxx"

// RedactURL returns u with its password replaced by "xxxxx", for logs and errors:
// "amqp://guest:guest@localhost:5672/" becomes "amqp://guest:xxxxx@localhost:5672/". A URL without
// a password is returned unchanged. A string that does not parse as a URL is still redacted: every
// character between the first ":" after "://" and the last "@" is replaced, so a password holding
// unescaped "/", "@" or "#" does not leak either.
func RedactURL(u string) string {
	if pu, err := url.Parse(u); err == nil && !strings.Contains(u, "#") {
		if _, has := pu.User.Password(); has {
			return pu.Redacted()
		}
		if pu.User != nil || !strings.Contains(u, "@") {
			return u
		}
	}
	// Unparsable (or ambiguous): mask the userinfo's password by hand.
	i := strings.Index(u, "://")
	if i < 0 {
		return u
	}
	rest := u[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return u
	}
	colon := strings.Index(rest[:at], ":")
	if colon < 0 {
		return u
	}
	return u[:i+3] + rest[:colon+1] + redactedPassword + rest[at:]
}

// password returns the password embedded in an AMQP URL, or "".
func password(u string) string {
	if pu, err := url.Parse(u); err == nil {
		if p, ok := pu.User.Password(); ok {
			return p
		}
	}
	i := strings.Index(u, "://")
	if i < 0 {
		return ""
	}
	rest := u[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return ""
	}
	colon := strings.Index(rest[:at], ":")
	if colon < 0 {
		return ""
	}
	return rest[colon+1 : at]
}

// scrubError returns err unchanged unless its text contains the password of amqpURL (raw or
// URL-escaped, in any case); then it returns an error with the same text, the password replaced by "xxxxx".
// The scrubbed error deliberately does not unwrap to err, whose text still holds the password.
func scrubError(err error, amqpURL string) error {
	if err == nil {
		return nil
	}
	pw := password(amqpURL)
	if pw == "" {
		return err
	}
	msg := err.Error()
	scrubbed := msg
	for _, form := range []string{pw, url.QueryEscape(pw), url.PathEscape(pw), url.UserPassword("", pw).String()[1:]} {
		if form != "" {
			scrubbed = regexp.MustCompile("(?i)"+regexp.QuoteMeta(form)).ReplaceAllLiteralString(scrubbed, redactedPassword)
		}
	}
	if scrubbed == msg {
		return err
	}
	return errors.New(scrubbed)
}
