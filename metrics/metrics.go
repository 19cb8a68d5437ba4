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
//	watermill_jasper_agent_job_errors_total{job}   failed runs of the agent's jobs
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
//
// With an OpenTelemetry MeterProvider of your own, Register defines the same metrics as
// observable instruments read at collection time (counters without their _total suffix,
// which an OpenTelemetry Prometheus exporter adds back):
//
//	reg, err := metrics.Register(meterProvider, metrics.Config{Agent: agent, Forwarders: srcs})
//
// docs/grafana-dashboard.json is a Grafana dashboard of these metrics.
//
// Every metric carries Config.ConstLabels (for instance the schema or the service name), so
// several Collectors can be registered side by side with different labels.
package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
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

// Config configures a Collector.
type Config struct {
	// Namespace prefixes the metric names. Default "watermill_jasper".
	Namespace string
	// ConstLabels are added to every metric.
	ConstLabels prometheus.Labels
	// Agent provides the storage gauges and the agent's counters (optional).
	Agent AgentSource
	// Forwarders provide the relay counters, summed (optional; see also AddForwarder).
	Forwarders []ForwarderSource
}

// Collector is a prometheus.Collector of watermill-jasper's metrics. It is safe for
// concurrent use.
type Collector struct {
	agent AgentSource

	mu         sync.Mutex
	forwarders []ForwarderSource

	incoming, scheduled, handled, outgoing, deadLetters, oldestAge, dormantOwned, sampledAt  *prometheus.Desc
	sent, failed, discarded, deadLettered, recovered, dormantNodes, released, handledDeleted *prometheus.Desc
	jobErrors                                                                                *prometheus.Desc
	dest                                                                                     destinationDescs
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector reading config's sources. Register it with a
// prometheus.Registerer.
func NewCollector(config Config) *Collector {
	ns := config.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, labels, config.ConstLabels)
	}
	c := &Collector{
		agent:      config.Agent,
		forwarders: append([]ForwarderSource(nil), config.Forwarders...),

		incoming:     desc("incoming_envelopes", "Incoming envelopes with status Incoming (waiting for a subscriber or being handled)."),
		scheduled:    desc("scheduled_envelopes", "Incoming envelopes with status Scheduled (delayed messages, scheduled sends, retries)."),
		handled:      desc("handled_envelopes", "Handled inbox rows kept for deduplication until keep_until."),
		outgoing:     desc("outgoing_envelopes", "Outgoing envelopes waiting in the outbox or being relayed."),
		deadLetters:  desc("dead_letters", "Dead letters."),
		oldestAge:    desc("oldest_outgoing_age_seconds", "Age of the oldest outgoing envelope (0 when the outbox is empty)."),
		dormantOwned: desc("dormant_owned_envelopes", "Envelopes held by nodes whose lock no session holds; they wait for a reassignment pass."),
		sampledAt:    desc("storage_sampled_timestamp_seconds", "When the storage gauges were sampled (Unix time)."),

		sent:           desc("envelopes_sent_total", "Outgoing envelopes relayed to the broker by the forwarders."),
		failed:         desc("envelopes_failed_total", "Failed publish attempts of the forwarders."),
		discarded:      desc("envelopes_discarded_total", "Expired outgoing envelopes deleted without being sent."),
		deadLettered:   desc("envelopes_dead_lettered_total", "Envelopes moved to the dead letters by the forwarders and the durability agent."),
		recovered:      desc("envelopes_recovered_total", "Envelopes of dormant nodes handed back to every node by the durability agent."),
		dormantNodes:   desc("dormant_nodes_total", "Dormant nodes whose envelopes the durability agent handed back."),
		released:       desc("scheduled_released_total", "Due scheduled envelopes made Incoming and scheduled sends moved to the outbox."),
		handledDeleted: desc("handled_deleted_total", "Handled inbox rows deleted after keep_until."),
		jobErrors:      desc("agent_job_errors_total", "Failed runs of the durability agent's jobs.", "job"),
		dest:           newDestinationDescs(desc),
	}
	return c
}

// AddForwarder adds a forwarder whose counters are summed with the others'.
func (c *Collector) AddForwarder(f ForwarderSource) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forwarders = append(c.forwarders, f)
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.incoming, c.scheduled, c.handled, c.outgoing, c.deadLetters, c.oldestAge, c.dormantOwned, c.sampledAt,
		c.sent, c.failed, c.discarded, c.deadLettered, c.recovered, c.dormantNodes, c.released, c.handledDeleted, c.jobErrors,
	} {
		ch <- d
	}
	c.dest.describe(ch)
}

// Collect implements prometheus.Collector. It never queries the database.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}

	c.mu.Lock()
	fwds := append([]ForwarderSource(nil), c.forwarders...)
	c.mu.Unlock()
	fs := sumForwarders(fwds)
	var as durability.Stats
	if c.agent != nil {
		as = c.agent.Stats()
		if g, ok := c.agent.Gauges(); ok {
			gauge(c.incoming, float64(g.Incoming))
			gauge(c.scheduled, float64(g.Scheduled))
			gauge(c.handled, float64(g.Handled))
			gauge(c.outgoing, float64(g.Outgoing))
			gauge(c.deadLetters, float64(g.DeadLetters))
			gauge(c.oldestAge, g.OldestOutgoingAge.Seconds())
			gauge(c.dormantOwned, float64(g.DormantOwned))
			gauge(c.sampledAt, float64(g.SampledAt.UnixNano())/1e9)
		}
		for job, n := range as.JobErrors {
			counter(c.jobErrors, n, job)
		}
	}
	counter(c.sent, fs.Sent)
	counter(c.failed, fs.Failed)
	counter(c.discarded, fs.Expired+as.Discarded)
	counter(c.deadLettered, fs.DeadLettered+as.DeadLettered)
	counter(c.recovered, as.Recovered)
	counter(c.dormantNodes, as.DormantNodes)
	counter(c.released, as.ScheduledReleased+as.ScheduledSent)
	counter(c.handledDeleted, as.HandledDeleted)
	c.dest.collect(ch, fwds)
}

// sumForwarders adds up the counters of the forwarders.
func sumForwarders(fwds []ForwarderSource) forwarder.Stats {
	var fs forwarder.Stats
	for _, f := range fwds {
		s := f.Stats()
		fs.Sent += s.Sent
		fs.Failed += s.Failed
		fs.Expired += s.Expired
		fs.DeadLettered += s.DeadLettered
	}
	return fs
}

var (
	_ AgentSource     = (*durability.Agent)(nil)
	_ ForwarderSource = (*forwarder.Forwarder)(nil)
)
