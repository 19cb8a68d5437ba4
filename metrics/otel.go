package metrics

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/watermill-jasper/watermill-jasper/durability"
)

// ScopeName is the instrumentation scope of the instruments Register creates.
const ScopeName = "github.com/watermill-jasper/watermill-jasper/metrics"

// Register defines the relay and agent metrics as OpenTelemetry observable instruments of
// mp's meter ScopeName, read from config's sources at collection time (no cost on the relay
// path beyond the atomic adds the sources already do). The instrument names are the
// Collector's metric names without the _total suffix of counters (an OpenTelemetry
// Prometheus exporter adds it back), prefixed by Config.Namespace; ConstLabels become
// attributes. Forwarders added later with Collector.AddForwarder are not seen: pass them all
// in config. Unregister the returned Registration to stop observing.
func Register(mp metric.MeterProvider, config Config) (metric.Registration, error) {
	ns := config.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	m := mp.Meter(ScopeName)
	var constAttrs []attribute.KeyValue
	for k, v := range config.ConstLabels {
		constAttrs = append(constAttrs, attribute.String(k, v))
	}
	var obs []metric.Observable
	var firstErr error
	counter := func(name, desc string) metric.Int64ObservableCounter {
		c, err := m.Int64ObservableCounter(ns+"_"+name, metric.WithDescription(desc))
		if err != nil && firstErr == nil {
			firstErr = err
		}
		obs = append(obs, c)
		return c
	}
	gauge := func(name, desc, unit string) metric.Float64ObservableGauge {
		g, err := m.Float64ObservableGauge(ns+"_"+name, metric.WithDescription(desc), metric.WithUnit(unit))
		if err != nil && firstErr == nil {
			firstErr = err
		}
		obs = append(obs, g)
		return g
	}
	incoming := gauge("incoming_envelopes", "Incoming envelopes with status Incoming (waiting for a subscriber or being handled).", "")
	scheduled := gauge("scheduled_envelopes", "Incoming envelopes with status Scheduled (delayed messages, scheduled sends, retries).", "")
	handled := gauge("handled_envelopes", "Handled inbox rows kept for deduplication until keep_until.", "")
	outgoing := gauge("outgoing_envelopes", "Outgoing envelopes waiting in the outbox or being relayed.", "")
	deadLetters := gauge("dead_letters", "Dead letters.", "")
	oldestAge := gauge("oldest_outgoing_age_seconds", "Age of the oldest outgoing envelope (0 when the outbox is empty).", "")
	dormantOwned := gauge("dormant_owned_envelopes", "Envelopes held by nodes whose lock no session holds; they wait for a reassignment pass.", "")
	sent := counter("envelopes_sent", "Outgoing envelopes relayed to the broker by the forwarders.")
	failed := counter("envelopes_failed", "Failed publish attempts of the forwarders.")
	discarded := counter("envelopes_discarded", "Expired outgoing envelopes deleted without being sent.")
	deadLettered := counter("envelopes_dead_lettered", "Envelopes moved to the dead letters by the forwarders and the durability agent.")
	recovered := counter("envelopes_recovered", "Envelopes of dormant nodes handed back to every node by the durability agent.")
	released := counter("scheduled_released", "Due scheduled envelopes made Incoming and scheduled sends moved to the outbox.")
	handledDeleted := counter("handled_deleted", "Handled inbox rows deleted after keep_until.")
	jobErrors := counter("agent_job_errors", "Failed runs of the durability agent's jobs.")
	dSent := counter("destination_envelopes_sent", "Outgoing envelopes relayed to the broker, per destination.")
	dFailed := counter("destination_envelopes_failed", "Failed publish attempts, per destination.")
	dExpired := counter("destination_envelopes_expired", "Expired outgoing envelopes deleted without being sent, per destination.")
	dDead := counter("destination_envelopes_dead_lettered", "Outgoing envelopes moved to the dead letters by the forwarders, per destination.")
	dCircuit, err := m.Int64ObservableGauge(ns+"_destination_circuit_state",
		metric.WithDescription("Circuit breaker state of the destination: 0 closed, 1 open (paused), 2 half-open (probing)."))
	if err != nil && firstErr == nil {
		firstErr = err
	}
	obs = append(obs, dCircuit)
	if firstErr != nil {
		return nil, firstErr
	}

	fwds := append([]ForwarderSource(nil), config.Forwarders...)
	agent := config.Agent
	return m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		attrs := metric.WithAttributes(constAttrs...)
		fs := sumForwarders(fwds)
		var as durability.Stats
		if agent != nil {
			as = agent.Stats()
			if g, ok := agent.Gauges(); ok {
				o.ObserveFloat64(incoming, float64(g.Incoming), attrs)
				o.ObserveFloat64(scheduled, float64(g.Scheduled), attrs)
				o.ObserveFloat64(handled, float64(g.Handled), attrs)
				o.ObserveFloat64(outgoing, float64(g.Outgoing), attrs)
				o.ObserveFloat64(deadLetters, float64(g.DeadLetters), attrs)
				o.ObserveFloat64(oldestAge, g.OldestOutgoingAge.Seconds(), attrs)
				o.ObserveFloat64(dormantOwned, float64(g.DormantOwned), attrs)
			}
			for job, n := range as.JobErrors {
				o.ObserveInt64(jobErrors, n, metric.WithAttributes(append([]attribute.KeyValue{attribute.String("job", job)}, constAttrs...)...))
			}
		}
		o.ObserveInt64(sent, fs.Sent, attrs)
		o.ObserveInt64(failed, fs.Failed, attrs)
		o.ObserveInt64(discarded, fs.Expired+as.Discarded, attrs)
		o.ObserveInt64(deadLettered, fs.DeadLettered+as.DeadLettered, attrs)
		o.ObserveInt64(recovered, as.Recovered, attrs)
		o.ObserveInt64(released, as.ScheduledReleased+as.ScheduledSent, attrs)
		o.ObserveInt64(handledDeleted, as.HandledDeleted, attrs)
		for _, s := range sumDestinations(fwds) {
			da := metric.WithAttributes(append([]attribute.KeyValue{attribute.String("destination", s.Destination)}, constAttrs...)...)
			o.ObserveInt64(dSent, s.Sent, da)
			o.ObserveInt64(dFailed, s.Failed, da)
			o.ObserveInt64(dExpired, s.Expired, da)
			o.ObserveInt64(dDead, s.DeadLettered, da)
			o.ObserveInt64(dCircuit, int64(s.Circuit), da)
		}
		return nil
	}, obs...)
}
