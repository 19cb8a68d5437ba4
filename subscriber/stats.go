package subscriber

import (
	"sync/atomic"

	"github.com/watermill-jasper/watermill-jasper/internal/stats"
)

// TopicStats counts what a Subscriber delivered on one topic since it was created, over all
// its subscriptions of the topic.
type TopicStats struct {
	Topic string
	// InFlight is how many messages are delivered and wait for the handler's Ack or Nack now.
	InFlight int64
	// Acked counts the messages acked (handled; their envelopes are deleted).
	Acked int64
	// Nacked counts the messages nacked (redelivered after Config.NackBackoff).
	Nacked int64
	// DeadLettered counts the envelopes moved to the dead letters because they could not be
	// read as messages.
	DeadLettered int64
}

// topicCounters are one topic's counters (atomic adds on the delivery path).
type topicCounters struct {
	inFlight, acked, nacked, deadLettered atomic.Int64
}

// TopicStats returns the counters of every topic the Subscriber subscribed to, sorted by
// topic. It reads atomics: cheap enough for every scrape.
func (s *Subscriber) TopicStats() []TopicStats {
	return stats.Collect(&s.topics, func(topic string, c *topicCounters) TopicStats {
		return TopicStats{
			Topic: topic, InFlight: c.inFlight.Load(), Acked: c.acked.Load(),
			Nacked: c.nacked.Load(), DeadLettered: c.deadLettered.Load(),
		}
	})
}
