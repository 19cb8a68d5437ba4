package middleware

import (
	"sync/atomic"

	"github.com/watermill-jasper/watermill-jasper/internal/stats"
)

// InboxTopicStats counts what an Inbox did on one topic (the router's subscribe topic; ""
// outside a router) since it was created.
type InboxTopicStats struct {
	Topic string
	// Handled counts the messages whose handler ran and whose transaction (effects and
	// Handled mark) committed.
	Handled int64
	// Duplicates counts the messages acknowledged without running the handler because they
	// were handled before.
	Duplicates int64
}

type inboxCounters struct{ handled, duplicates atomic.Int64 }

// TopicStats returns the Inbox's counters per topic, sorted by topic. It reads atomics:
// cheap enough for every scrape.
func (in *Inbox) TopicStats() []InboxTopicStats {
	return stats.Collect(&in.topics, func(topic string, c *inboxCounters) InboxTopicStats {
		return InboxTopicStats{Topic: topic, Handled: c.handled.Load(), Duplicates: c.duplicates.Load()}
	})
}

// DeadLetterTopicStats counts the messages a DeadLetter middleware moved to the dead
// letters on one topic (the router's subscribe topic; "" outside a router) since it was
// created.
type DeadLetterTopicStats struct {
	Topic string
	// Exhausted counts the messages whose handler failed MaxAttempts times.
	Exhausted int64
	// Permanent counts the messages whose handler returned a permanent error (not retried).
	Permanent int64
}

type deadLetterCounters struct{ exhausted, permanent atomic.Int64 }

// TopicStats returns the DeadLetter's counters per topic, sorted by topic. It reads atomics:
// cheap enough for every scrape.
func (d *DeadLetter) TopicStats() []DeadLetterTopicStats {
	return stats.Collect(&d.topics, func(topic string, c *deadLetterCounters) DeadLetterTopicStats {
		return DeadLetterTopicStats{Topic: topic, Exhausted: c.exhausted.Load(), Permanent: c.permanent.Load()}
	})
}
