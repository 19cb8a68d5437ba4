package metrics

import (
	"sort"
	"sync"

	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/stats"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// This file defines every metric once: its name, help, kind, labels and how it is read from
// a snapshot of the sources. The Prometheus Collector (metrics.go) and the OpenTelemetry
// Producer (otel.go) both render this table.

// kind is how a metric aggregates.
type kind int

const (
	gaugeKind     kind = iota
	counterKind        // monotonic; Prometheus adds the _total suffix
	histogramKind      // latency histogram in seconds (stats.LatencyBounds)
)

// sample is one series of a metric: its label values (in the order of the definition's
// labels) and its value or histogram.
type sample struct {
	labels []string
	value  float64
	hist   stats.Snapshot
}

// definition is one metric.
type definition struct {
	name   string // without the namespace, and without _total for counters
	help   string
	kind   kind
	labels []string
	read   func(s *snapshot) []sample
}

// one is the sample of a metric without labels.
func one(v float64) []sample { return []sample{{value: v}} }

// whenSampled returns the samples of a storage gauge, none before the agent's first sample.
func whenSampled(f func(g durability.Gauges) float64) func(s *snapshot) []sample {
	return func(s *snapshot) []sample {
		if !s.sampled {
			return nil
		}
		return one(f(s.gauges))
	}
}

// perKey returns one sample per element of list, labelled by its key.
func perKey[T any](list func(s *snapshot) []T, key func(T) []string, value func(T) float64) func(s *snapshot) []sample {
	return func(s *snapshot) []sample {
		items := list(s)
		out := make([]sample, len(items))
		for i, it := range items {
			out[i] = sample{labels: key(it), value: value(it)}
		}
		return out
	}
}

func dests(s *snapshot) []*forwarder.DestinationStats { return s.dests }
func destKey(d *forwarder.DestinationStats) []string  { return []string{d.Destination} }

func slots(s *snapshot) []*forwarder.ReplicationStats { return s.slots }
func slotKey(r *forwarder.ReplicationStats) []string  { return []string{r.Slot} }

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func topics(s *snapshot) []*topicSums { return s.topics }
func topicKey(t *topicSums) []string  { return []string{t.topic} }

// definitions are watermill-jasper's metrics (the package documentation lists them).
var definitions = []definition{
	{name: "incoming_envelopes", help: "Incoming envelopes with status Incoming (waiting for a subscriber or being handled).",
		read: whenSampled(func(g durability.Gauges) float64 { return float64(g.Incoming) })},
	{name: "scheduled_envelopes", help: "Incoming envelopes with status Scheduled (delayed messages, scheduled sends, retries).",
		read: whenSampled(func(g durability.Gauges) float64 { return float64(g.Scheduled) })},
	{name: "handled_envelopes", help: "Handled inbox rows kept for deduplication until keep_until.",
		read: whenSampled(func(g durability.Gauges) float64 { return float64(g.Handled) })},
	{name: "outgoing_envelopes", help: "Outgoing envelopes waiting in the outbox or being relayed.",
		read: whenSampled(func(g durability.Gauges) float64 { return float64(g.Outgoing) })},
	{name: "dead_letters", help: "Dead letters.",
		read: whenSampled(func(g durability.Gauges) float64 { return float64(g.DeadLetters) })},
	{name: "oldest_outgoing_age_seconds", help: "Age of the oldest outgoing envelope (0 when the outbox is empty).",
		read: whenSampled(func(g durability.Gauges) float64 { return g.OldestOutgoingAge.Seconds() })},
	{name: "dormant_owned_envelopes", help: "Envelopes held by nodes whose lock no session holds; they wait for a reassignment pass.",
		read: whenSampled(func(g durability.Gauges) float64 { return float64(g.DormantOwned) })},
	{name: "storage_sampled_timestamp_seconds", help: "When the storage gauges were sampled (Unix time).",
		read: whenSampled(func(g durability.Gauges) float64 { return float64(g.SampledAt.UnixNano()) / 1e9 })},

	{name: "envelopes_sent", kind: counterKind, help: "Outgoing envelopes relayed to the broker by the forwarders.",
		read: func(s *snapshot) []sample { return one(float64(s.fwd.Sent)) }},
	{name: "envelopes_failed", kind: counterKind, help: "Failed publish attempts of the forwarders.",
		read: func(s *snapshot) []sample { return one(float64(s.fwd.Failed)) }},
	{name: "envelopes_discarded", kind: counterKind, help: "Expired outgoing envelopes deleted without being sent.",
		read: func(s *snapshot) []sample { return one(float64(s.fwd.Expired + s.agent.Discarded)) }},
	{name: "envelopes_dead_lettered", kind: counterKind, help: "Envelopes moved to the dead letters by the forwarders and the durability agent.",
		read: func(s *snapshot) []sample { return one(float64(s.fwd.DeadLettered + s.agent.DeadLettered)) }},
	{name: "envelopes_recovered", kind: counterKind, help: "Envelopes of dormant nodes handed back to every node by the durability agent.",
		read: func(s *snapshot) []sample { return one(float64(s.agent.Recovered)) }},
	{name: "dormant_nodes", kind: counterKind, help: "Dormant nodes whose envelopes the durability agent handed back.",
		read: func(s *snapshot) []sample { return one(float64(s.agent.DormantNodes)) }},
	{name: "scheduled_released", kind: counterKind, help: "Due scheduled envelopes made Incoming and scheduled sends moved to the outbox.",
		read: func(s *snapshot) []sample { return one(float64(s.agent.ScheduledReleased + s.agent.ScheduledSent)) }},
	{name: "handled_deleted", kind: counterKind, help: "Handled inbox rows deleted after keep_until.",
		read: func(s *snapshot) []sample { return one(float64(s.agent.HandledDeleted)) }},
	{name: "agent_job_errors", kind: counterKind, help: "Failed runs of the durability agent's jobs.", labels: []string{"agent_job"},
		read: func(s *snapshot) []sample {
			jobs := make([]string, 0, len(s.agent.JobErrors))
			for job := range s.agent.JobErrors {
				jobs = append(jobs, job)
			}
			sort.Strings(jobs)
			out := make([]sample, len(jobs))
			for i, job := range jobs {
				out[i] = sample{labels: []string{job}, value: float64(s.agent.JobErrors[job])}
			}
			return out
		}},

	{name: "destination_envelopes_sent", kind: counterKind, help: "Outgoing envelopes relayed to the broker, per destination.", labels: []string{"destination"},
		read: perKey(dests, destKey, func(d *forwarder.DestinationStats) float64 { return float64(d.Sent) })},
	{name: "destination_envelopes_failed", kind: counterKind, help: "Failed publish attempts, per destination.", labels: []string{"destination"},
		read: perKey(dests, destKey, func(d *forwarder.DestinationStats) float64 { return float64(d.Failed) })},
	{name: "destination_envelopes_expired", kind: counterKind, help: "Expired outgoing envelopes deleted without being sent, per destination.", labels: []string{"destination"},
		read: perKey(dests, destKey, func(d *forwarder.DestinationStats) float64 { return float64(d.Expired) })},
	{name: "destination_envelopes_dead_lettered", kind: counterKind, help: "Outgoing envelopes moved to the dead letters by the forwarders, per destination.", labels: []string{"destination"},
		read: perKey(dests, destKey, func(d *forwarder.DestinationStats) float64 { return float64(d.DeadLettered) })},
	{name: "destination_circuit_state", help: "Circuit breaker state of the destination: 0 closed, 1 open (paused), 2 half-open (probing).", labels: []string{"destination"},
		read: perKey(dests, destKey, func(d *forwarder.DestinationStats) float64 { return float64(d.Circuit) })},
	{name: "relay_lag_seconds", kind: histogramKind, labels: []string{"destination"},
		help: "Relay lag of the sent envelopes, per destination: from when the outgoing row was written (its timestamp column) to the broker's confirmation.",
		read: func(s *snapshot) []sample {
			out := make([]sample, 0, len(s.dests))
			for _, d := range s.dests {
				if d.Lag.Count > 0 {
					out = append(out, sample{labels: destKey(d), hist: d.Lag})
				}
			}
			return out
		}},

	{name: "replication_streaming", help: "1 while the forwarder streams its logical replication slot, 0 while it stands by or polls after an error, per slot.", labels: []string{"slot"},
		read: perKey(slots, slotKey, func(r *forwarder.ReplicationStats) float64 { return boolValue(r.Streaming) })},
	{name: "replication_lag_bytes", help: "Write-ahead log written since the slot's confirmed position, as the server last told the stream, per slot.", labels: []string{"slot"},
		read: perKey(slots, slotKey, func(r *forwarder.ReplicationStats) float64 { return float64(r.LagBytes) })},
	{name: "replication_lag_seconds", help: "Age of the oldest transaction received from the slot and not confirmed yet (0 when caught up), per slot.", labels: []string{"slot"},
		read: perKey(slots, slotKey, func(r *forwarder.ReplicationStats) float64 { return r.LagSeconds })},
	{name: "replication_transactions", kind: counterKind, help: "Transactions received from the logical replication slot, per slot.", labels: []string{"slot"},
		read: perKey(slots, slotKey, func(r *forwarder.ReplicationStats) float64 { return float64(r.Transactions) })},
	{name: "replication_emitted", kind: counterKind, help: "Envelopes received from the slot without a row (the table-less outbox), per slot.", labels: []string{"slot"},
		read: perKey(slots, slotKey, func(r *forwarder.ReplicationStats) float64 { return float64(r.Emitted) })},
	{name: "replication_handover", kind: counterKind, help: "Outbox rows from the slot the source could not lock at once and tried again or left to the polling path, per slot.", labels: []string{"slot"},
		read: perKey(slots, slotKey, func(r *forwarder.ReplicationStats) float64 { return float64(r.Handover) })},

	{name: "subscriber_in_flight", help: "Messages the subscribers delivered that wait for the handler's Ack or Nack, per topic.", labels: []string{"topic"},
		read: perKey(subscribed, topicKey, func(t *topicSums) float64 { return float64(t.sub.InFlight) })},
	{name: "subscriber_messages_acked", kind: counterKind, help: "Messages the subscribers delivered and the handler acked, per topic.", labels: []string{"topic"},
		read: perKey(subscribed, topicKey, func(t *topicSums) float64 { return float64(t.sub.Acked) })},
	{name: "subscriber_messages_nacked", kind: counterKind, help: "Messages the subscribers delivered and the handler nacked (redelivered later), per topic.", labels: []string{"topic"},
		read: perKey(subscribed, topicKey, func(t *topicSums) float64 { return float64(t.sub.Nacked) })},
	{name: "subscriber_envelopes_dead_lettered", kind: counterKind, help: "Envelopes the subscribers moved to the dead letters because they could not be read as messages, per topic.", labels: []string{"topic"},
		read: perKey(subscribed, topicKey, func(t *topicSums) float64 { return float64(t.sub.DeadLettered) })},
	{name: "inbox_messages_handled", kind: counterKind, help: "Messages the inbox middleware handled (effects and Handled mark committed), per topic.", labels: []string{"topic"},
		read: perKey(inboxed, topicKey, func(t *topicSums) float64 { return float64(t.inbox.Handled) })},
	{name: "inbox_duplicates", kind: counterKind, help: "Messages the inbox middleware acknowledged without running the handler because they were handled before, per topic.", labels: []string{"topic"},
		read: perKey(inboxed, topicKey, func(t *topicSums) float64 { return float64(t.inbox.Duplicates) })},
	{name: "handler_dead_lettered", kind: counterKind, labels: []string{"topic", "reason"},
		help: "Messages the dead-letter middleware moved to the dead letters, per topic and reason (exhausted: MaxAttempts failures; permanent: a permanent error).",
		read: func(s *snapshot) []sample {
			var out []sample
			for _, t := range s.topics {
				if t.hasDeadLetter {
					out = append(out,
						sample{labels: []string{t.topic, "exhausted"}, value: float64(t.deadLetter.Exhausted)},
						sample{labels: []string{t.topic, "permanent"}, value: float64(t.deadLetter.Permanent)})
				}
			}
			return out
		}},
}

func subscribed(s *snapshot) []*topicSums {
	return filterTopics(s, func(t *topicSums) bool { return t.hasSub })
}
func inboxed(s *snapshot) []*topicSums {
	return filterTopics(s, func(t *topicSums) bool { return t.hasInbox })
}

func filterTopics(s *snapshot, keep func(*topicSums) bool) []*topicSums {
	var out []*topicSums
	for _, t := range s.topics {
		if keep(t) {
			out = append(out, t)
		}
	}
	return out
}

// topicSums are one topic's counters summed over the subscribers and middleware.
type topicSums struct {
	topic                           string
	hasSub, hasInbox, hasDeadLetter bool
	sub                             subscriber.TopicStats
	inbox                           middleware.InboxTopicStats
	deadLetter                      middleware.DeadLetterTopicStats
}

// snapshot is every source read once, at the start of a collection.
type snapshot struct {
	sampled bool
	gauges  durability.Gauges
	agent   durability.Stats
	fwd     forwarder.Stats
	dests   []*forwarder.DestinationStats
	slots   []*forwarder.ReplicationStats
	topics  []*topicSums
}

// sources are the components a Collector or a Producer reads. Components can be added at
// any time.
type sources struct {
	agent AgentSource

	mu          sync.Mutex
	forwarders  []ForwarderSource
	subscribers []SubscriberSource
	inboxes     []InboxSource
	deadLetters []DeadLetterSource
}

func newSources(c Config) *sources {
	return &sources{
		agent:       c.Agent,
		forwarders:  append([]ForwarderSource(nil), c.Forwarders...),
		subscribers: append([]SubscriberSource(nil), c.Subscribers...),
		inboxes:     append([]InboxSource(nil), c.Inboxes...),
		deadLetters: append([]DeadLetterSource(nil), c.DeadLetters...),
	}
}

// read takes a snapshot of every source.
func (src *sources) read() *snapshot {
	src.mu.Lock()
	fwds := append([]ForwarderSource(nil), src.forwarders...)
	subs := append([]SubscriberSource(nil), src.subscribers...)
	inboxes := append([]InboxSource(nil), src.inboxes...)
	dls := append([]DeadLetterSource(nil), src.deadLetters...)
	src.mu.Unlock()

	s := &snapshot{fwd: sumForwarders(fwds), dests: sumDestinations(fwds)}
	for _, f := range fwds {
		if rs, ok := f.(ReplicationSource); ok {
			if r, ok := rs.ReplicationStats(); ok {
				s.slots = append(s.slots, &r)
			}
		}
	}
	if src.agent != nil {
		s.agent = src.agent.Stats()
		s.gauges, s.sampled = src.agent.Gauges()
	}
	byTopic := map[string]*topicSums{}
	get := func(topic string) *topicSums {
		t := byTopic[topic]
		if t == nil {
			t = &topicSums{topic: topic}
			byTopic[topic] = t
			s.topics = append(s.topics, t)
		}
		return t
	}
	for _, sub := range subs {
		for _, ts := range sub.TopicStats() {
			t := get(ts.Topic)
			t.hasSub = true
			t.sub.InFlight += ts.InFlight
			t.sub.Acked += ts.Acked
			t.sub.Nacked += ts.Nacked
			t.sub.DeadLettered += ts.DeadLettered
		}
	}
	for _, in := range inboxes {
		for _, ts := range in.TopicStats() {
			t := get(ts.Topic)
			t.hasInbox = true
			t.inbox.Handled += ts.Handled
			t.inbox.Duplicates += ts.Duplicates
		}
	}
	for _, dl := range dls {
		for _, ts := range dl.TopicStats() {
			t := get(ts.Topic)
			t.hasDeadLetter = true
			t.deadLetter.Exhausted += ts.Exhausted
			t.deadLetter.Permanent += ts.Permanent
		}
	}
	sort.Slice(s.topics, func(i, j int) bool { return s.topics[i].topic < s.topics[j].topic })
	return s
}

// AddForwarder adds a forwarder whose counters are summed with the others'.
func (src *sources) AddForwarder(f ForwarderSource) {
	src.mu.Lock()
	defer src.mu.Unlock()
	src.forwarders = append(src.forwarders, f)
}

// AddSubscriber adds a subscriber whose per-topic counters are summed with the others'.
func (src *sources) AddSubscriber(s SubscriberSource) {
	src.mu.Lock()
	defer src.mu.Unlock()
	src.subscribers = append(src.subscribers, s)
}

// AddInbox adds an inbox middleware whose per-topic counters are summed with the others'.
func (src *sources) AddInbox(in InboxSource) {
	src.mu.Lock()
	defer src.mu.Unlock()
	src.inboxes = append(src.inboxes, in)
}

// AddDeadLetter adds a dead-letter middleware whose per-topic counters are summed with the
// others'.
func (src *sources) AddDeadLetter(d DeadLetterSource) {
	src.mu.Lock()
	defer src.mu.Unlock()
	src.deadLetters = append(src.deadLetters, d)
}
