// Package metrics exposes the gauges and counters of watermill-jasper to Prometheus
// (github.com/prometheus/client_golang).
//
// A Collector reads, at scrape time, the latest storage sample of a durability agent (the
// agent samples the tables with one query every MetricsSamplingInterval, however often and
// by however many scrapers it is scraped) and the counters of the agent and of forwarders:
//
//	c := metrics.NewCollector(metrics.Config{Agent: agent, Forwarders: []metrics.ForwarderSource{fwd}})
//	prometheus.MustRegister(c)
//	http.Handle("/metrics", promhttp.Handler())
//
// Gauges (absent until the agent's first sample):
//
//	watermill_jasper_incoming_envelopes         incoming envelopes with status Incoming
//	watermill_jasper_scheduled_envelopes        incoming envelopes with status Scheduled
//	watermill_jasper_handled_envelopes          Handled inbox rows kept for deduplication
//	watermill_jasper_outgoing_envelopes         outgoing envelopes (the outbox)
//	watermill_jasper_dead_letters               dead letters
//	watermill_jasper_oldest_outgoing_age_seconds age of the oldest outgoing envelope (0: none)
//	watermill_jasper_dormant_owned_envelopes    envelopes held by nodes whose lock no session
//	                                            holds; staying above 0 means no agent runs
//	watermill_jasper_storage_sampled_timestamp_seconds when the sample was taken
//
// Counters (since the process started):
//
//	watermill_jasper_envelopes_sent_total          relayed by the forwarders
//	watermill_jasper_envelopes_failed_total        failed publish attempts of the forwarders
//	watermill_jasper_envelopes_discarded_total     expired envelopes deleted unsent
//	watermill_jasper_envelopes_dead_lettered_total moved to the dead letters
//	watermill_jasper_envelopes_recovered_total     handed back from dormant nodes
//	watermill_jasper_dormant_nodes_total           dormant nodes whose envelopes were handed back
//	watermill_jasper_scheduled_released_total      scheduled envelopes and sends released
//	watermill_jasper_handled_deleted_total         Handled rows deleted after keep_until
//	watermill_jasper_agent_job_errors_total{agent_job} failed runs of the agent's jobs
//
// Per destination (forwarders that implement DestinationSource, as *forwarder.Forwarder
// does; summed over the forwarders relaying the same destination):
//
//	watermill_jasper_destination_envelopes_sent_total{destination}          relayed
//	watermill_jasper_destination_envelopes_failed_total{destination}        failed publish attempts
//	watermill_jasper_destination_envelopes_expired_total{destination}       expired, deleted unsent
//	watermill_jasper_destination_envelopes_dead_lettered_total{destination} moved to the dead letters
//	watermill_jasper_destination_circuit_state{destination}                 circuit breaker: 0 closed,
//	                                                                        1 open (paused), 2 half-open
//	                                                                        (its probe is being published)
//	watermill_jasper_relay_lag_seconds{destination}                         histogram of the relay lag:
//	                                                                        from when the outgoing row was
//	                                                                        written (its timestamp column,
//	                                                                        the start of the writing
//	                                                                        transaction on PostgreSQL) to
//	                                                                        the broker's confirmation
//
// Per replication slot (forwarders with a logical-replication source, ReplicationSource):
//
//	watermill_jasper_replication_streaming{slot}      1 streaming, 0 standing by or polling
//	watermill_jasper_replication_lag_bytes{slot}      WAL written since the confirmed position
//	watermill_jasper_replication_lag_seconds{slot}    age of the oldest unconfirmed transaction
//	watermill_jasper_replication_transactions_total{slot} transactions received
//	watermill_jasper_replication_emitted_total{slot}  envelopes without a row (table-less outbox)
//	watermill_jasper_replication_handover_total{slot} rows tried again or left to polling
//
// Per topic (subscribers, and the inbox and dead-letter middleware: the router's subscribe
// topic):
//
//	watermill_jasper_subscriber_in_flight{topic}                    delivered, waiting for Ack or Nack
//	watermill_jasper_subscriber_messages_acked_total{topic}         acked (handled)
//	watermill_jasper_subscriber_messages_nacked_total{topic}        nacked (delivered again later)
//	watermill_jasper_subscriber_envelopes_dead_lettered_total{topic} unreadable envelopes dead-lettered
//	watermill_jasper_inbox_messages_handled_total{topic}            handled: effects and mark committed
//	watermill_jasper_inbox_duplicates_total{topic}                  handled before: acked unhandled
//	watermill_jasper_handler_dead_lettered_total{topic,reason}      moved to the dead letters by the
//	                                                                dead-letter middleware; reason
//	                                                                exhausted (MaxAttempts) or permanent
//
// Every metric is defined once (defs.go) and rendered twice: by the Collector for
// Prometheus, and by a Producer for an OpenTelemetry SDK reader (counters named without
// their _total suffix, which an OpenTelemetry Prometheus exporter adds back):
//
//	reader := sdkmetric.NewPeriodicReader(exporter, sdkmetric.WithProducer(metrics.NewProducer(cfg)))
//
// A jasper.Runtime gives both with every component it made (Runtime.Collector,
// Runtime.MetricsProducer). docs/grafana-dashboard.json is a Grafana dashboard of these
// metrics.
//
// Every metric carries Config.ConstLabels (for instance the schema or the service name), so
// several Collectors can be registered side by side with different labels.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// DefaultNamespace prefixes every metric name.
const DefaultNamespace = "watermill_jasper"

// AgentSource is what a Collector reads from a durability agent (*durability.Agent).
type AgentSource interface {
	Gauges() (durability.Gauges, bool)
	Stats() durability.Stats
}

// ForwarderSource is what a Collector reads from a forwarder (*forwarder.Forwarder).
type ForwarderSource interface {
	Stats() forwarder.Stats
}

// SubscriberSource is what a Collector reads from a subscriber (*subscriber.Subscriber).
type SubscriberSource interface {
	TopicStats() []subscriber.TopicStats
}

// InboxSource is what a Collector reads from an inbox middleware (*middleware.Inbox).
type InboxSource interface {
	TopicStats() []middleware.InboxTopicStats
}

// DeadLetterSource is what a Collector reads from a dead-letter middleware
// (*middleware.DeadLetter).
type DeadLetterSource interface {
	TopicStats() []middleware.DeadLetterTopicStats
}

// Config configures a Collector or a Producer.
type Config struct {
	// Namespace prefixes the metric names. Default "watermill_jasper".
	Namespace string
	// ConstLabels are added to every metric (as attributes by a Producer).
	ConstLabels prometheus.Labels
	// Agent provides the storage gauges and the agent's counters (optional).
	Agent AgentSource
	// Forwarders provide the relay counters, summed (optional; see also AddForwarder).
	Forwarders []ForwarderSource
	// Subscribers provide the per-topic subscriber counters (optional; see also AddSubscriber).
	Subscribers []SubscriberSource
	// Inboxes provide the per-topic inbox counters (optional; see also AddInbox).
	Inboxes []InboxSource
	// DeadLetters provide the per-topic dead-letter middleware counters (optional; see also
	// AddDeadLetter).
	DeadLetters []DeadLetterSource
}

func (c Config) namespace() string {
	if c.Namespace == "" {
		return DefaultNamespace
	}
	return c.Namespace
}

// Collector is a prometheus.Collector of watermill-jasper's metrics. It is safe for
// concurrent use; components can be added to it at any time (AddForwarder, AddSubscriber,
// AddInbox, AddDeadLetter).
type Collector struct {
	*sources
	descs []*prometheus.Desc // one per definition
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector reading config's sources. Register it with a
// prometheus.Registerer.
func NewCollector(config Config) *Collector {
	c := &Collector{sources: newSources(config), descs: make([]*prometheus.Desc, len(definitions))}
	for i, d := range definitions {
		name := config.namespace() + "_" + d.name
		if d.kind == counterKind {
			name += "_total"
		}
		c.descs[i] = prometheus.NewDesc(name, d.help, d.labels, config.ConstLabels)
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector. It never queries the database.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.read()
	for i, d := range definitions {
		for _, smp := range d.read(s) {
			switch d.kind {
			case gaugeKind:
				ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.GaugeValue, smp.value, smp.labels...)
			case counterKind:
				ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.CounterValue, smp.value, smp.labels...)
			case histogramKind:
				buckets := make(map[float64]uint64, len(smp.hist.Bounds))
				for j, b := range smp.hist.Bounds {
					buckets[b] = smp.hist.Counts[j]
				}
				ch <- prometheus.MustNewConstHistogram(c.descs[i], smp.hist.Count, smp.hist.Sum, buckets, smp.labels...)
			}
		}
	}
}

var (
	_ AgentSource      = (*durability.Agent)(nil)
	_ ForwarderSource  = (*forwarder.Forwarder)(nil)
	_ SubscriberSource = (*subscriber.Subscriber)(nil)
	_ InboxSource      = (*middleware.Inbox)(nil)
	_ DeadLetterSource = (*middleware.DeadLetter)(nil)
)
