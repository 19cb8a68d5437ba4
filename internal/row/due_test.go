package row_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/internal/row"
)

func TestDueTime(t *testing.T) {
	published := time.Date(2031, 1, 2, 3, 4, 5, 600_000_000, time.UTC) // 03:04:05.6
	at := func(s string) time.Time {
		t.Helper()
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tt := range []struct {
		name       string
		until, dur string
		want       time.Time
	}{
		{"not delayed", "", "", time.Time{}},
		// delay.For(700ms) made at 03:04:05.55: until is truncated to 03:04:06, meant 03:04:06.25.
		{"delayed_for preferred", "2031-01-02T03:04:06Z", "700ms", at("2031-01-02T03:04:06.3Z")},
		{"delayed_for alone", "", "1.5s", at("2031-01-02T03:04:07.1Z")},
		{"delayed_for of zero", "2031-01-02T03:04:05Z", "0s", published},
		{"until fallback", "2031-01-02T03:04:09Z", "", at("2031-01-02T03:04:09Z")},
		{"until with fractional seconds", "2031-01-02T03:04:09.123456789+01:00", "", at("2031-01-02T02:04:09.123457Z")},
		// Published long after delay.For(1s) was made (metadata copied into a later message):
		// at most the second after the truncated until, not a whole delay later.
		{"stale delay", "2031-01-02T03:00:00Z", "1s", at("2031-01-02T03:00:01Z")},
		{"stale delay with an exact until", "2031-01-02T03:00:00.25Z", "1s", at("2031-01-02T03:00:00.25Z")},
		// delay.Until of a time already past: a negative duration, due at once.
		{"until in the past", "2031-01-02T03:04:05Z", "-300ms", at("2031-01-02T03:04:05.3Z")},
		{"never before until", "2031-01-02T03:04:08Z", "10ms", at("2031-01-02T03:04:08Z")},
		{"rounded up to the microsecond", "", "1ns", at("2031-01-02T03:04:05.600001Z")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			msg := message.NewMessage("m", nil)
			if tt.until != "" {
				msg.Metadata.Set(delay.DelayedUntilKey, tt.until)
			}
			if tt.dur != "" {
				msg.Metadata.Set(delay.DelayedForKey, tt.dur)
			}
			got, err := row.DueTime(msg, published)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(tt.want) {
				t.Errorf("DueTime = %s, want %s", got.Format(time.RFC3339Nano), tt.want.Format(time.RFC3339Nano))
			}
		})
	}
}

// A zero delay is due at the publish time itself, not rounded up to the next microsecond
// (which would make the message a scheduled one for a microsecond).
func TestDueTimeOfZeroDelayIsThePublishTime(t *testing.T) {
	published := time.Date(2031, 1, 2, 3, 4, 5, 123_456_789, time.UTC)
	msg := message.NewMessage("m", nil)
	msg.Metadata.Set(delay.DelayedUntilKey, "2031-01-02T03:04:05Z")
	msg.Metadata.Set(delay.DelayedForKey, "0s")
	if got, err := row.DueTime(msg, published); err != nil || !got.Equal(published) {
		t.Errorf("DueTime = %s, %v; want %s", got.Format(time.RFC3339Nano), err, published.Format(time.RFC3339Nano))
	}
}

// What components/delay writes is never due before the time it meant, and at most the
// publish delay after it.
func TestDueTimeOfComponentsDelay(t *testing.T) {
	for _, d := range []time.Duration{0, time.Millisecond, 999 * time.Millisecond, 1500 * time.Millisecond, time.Hour} {
		meant := time.Now().Add(d)
		msg := message.NewMessage("m", nil)
		delay.Message(msg, delay.For(d))
		published := time.Now()
		got, err := row.DueTime(msg, published)
		if err != nil {
			t.Fatal(err)
		}
		if got.Before(meant) || got.After(published.Add(d).Add(time.Microsecond)) {
			t.Errorf("delay.For(%s): due %s, want within [%s, %s]", d, got.Format(time.RFC3339Nano),
				meant.UTC().Format(time.RFC3339Nano), published.Add(d).UTC().Format(time.RFC3339Nano))
		}
	}
}

func TestDueTimeRejectsBadValues(t *testing.T) {
	for _, tt := range []struct{ key, value string }{
		{delay.DelayedUntilKey, "tomorrow"},
		{delay.DelayedForKey, "soon"},
		{delay.DelayedForKey, "15"}, // a duration needs its unit
	} {
		msg := message.NewMessage("m", nil)
		msg.Metadata.Set(tt.key, tt.value)
		_, err := row.DueTime(msg, time.Now())
		if !errors.Is(err, row.ErrInvalidMessage) || !strings.Contains(err.Error(), tt.key) || !strings.Contains(err.Error(), `"`+tt.value+`"`) {
			t.Errorf("%s=%q: %v, want ErrInvalidMessage naming the key and the value", tt.key, tt.value, err)
		}
	}
	// A bad until is refused even when the duration is readable.
	msg := message.NewMessage("m", nil)
	msg.Metadata.Set(delay.DelayedUntilKey, "2031-13-01T00:00:00Z")
	msg.Metadata.Set(delay.DelayedForKey, "1s")
	if _, err := row.DueTime(msg, time.Now()); !errors.Is(err, row.ErrInvalidMessage) || !strings.Contains(err.Error(), delay.DelayedUntilKey) {
		t.Errorf("bad until with a good duration: %v", err)
	}
}
