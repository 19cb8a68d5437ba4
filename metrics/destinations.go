package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/watermill-jasper/watermill-jasper/forwarder"
)

// DestinationSource is what a Collector reads per destination from a forwarder
// (*forwarder.Forwarder). A ForwarderSource that also implements it adds the
// watermill_jasper_destination_* series.
type DestinationSource interface {
	DestinationStats() []forwarder.DestinationStats
}

var _ DestinationSource = (*forwarder.Forwarder)(nil)

type destinationDescs struct {
	sent, failed, expired, deadLettered, circuit *prometheus.Desc
}

func newDestinationDescs(desc func(name, help string, labels ...string) *prometheus.Desc) destinationDescs {
	return destinationDescs{
		sent:         desc("destination_envelopes_sent_total", "Outgoing envelopes relayed to the broker, per destination.", "destination"),
		failed:       desc("destination_envelopes_failed_total", "Failed publish attempts, per destination.", "destination"),
		expired:      desc("destination_envelopes_expired_total", "Expired outgoing envelopes deleted without being sent, per destination.", "destination"),
		deadLettered: desc("destination_envelopes_dead_lettered_total", "Outgoing envelopes moved to the dead letters by the forwarders, per destination.", "destination"),
		circuit:      desc("destination_circuit_state", "Circuit breaker state of the destination: 0 closed, 1 open (paused), 2 half-open (probing).", "destination"),
	}
}

func (d destinationDescs) describe(ch chan<- *prometheus.Desc) {
	ch <- d.sent
	ch <- d.failed
	ch <- d.expired
	ch <- d.deadLettered
	ch <- d.circuit
}

// collect exports the destinations' counters summed over the forwarders (several forwarders
// may relay the same destination).
func (d destinationDescs) collect(ch chan<- prometheus.Metric, fwds []ForwarderSource) {
	for _, s := range sumDestinations(fwds) {
		name := s.Destination
		ch <- prometheus.MustNewConstMetric(d.sent, prometheus.CounterValue, float64(s.Sent), name)
		ch <- prometheus.MustNewConstMetric(d.failed, prometheus.CounterValue, float64(s.Failed), name)
		ch <- prometheus.MustNewConstMetric(d.expired, prometheus.CounterValue, float64(s.Expired), name)
		ch <- prometheus.MustNewConstMetric(d.deadLettered, prometheus.CounterValue, float64(s.DeadLettered), name)
		ch <- prometheus.MustNewConstMetric(d.circuit, prometheus.GaugeValue, float64(s.Circuit), name)
	}
}

// sumDestinations sums the per-destination counters of the forwarders that implement
// DestinationSource, keeping the highest circuit state.
func sumDestinations(fwds []ForwarderSource) []*forwarder.DestinationStats {
	var order []string
	sums := map[string]*forwarder.DestinationStats{}
	for _, f := range fwds {
		ds, ok := f.(DestinationSource)
		if !ok {
			continue
		}
		for _, s := range ds.DestinationStats() {
			t := sums[s.Destination]
			if t == nil {
				t = &forwarder.DestinationStats{Destination: s.Destination}
				sums[s.Destination] = t
				order = append(order, s.Destination)
			}
			t.Sent += s.Sent
			t.Failed += s.Failed
			t.Expired += s.Expired
			t.DeadLettered += s.DeadLettered
			t.Circuit = max(t.Circuit, s.Circuit)
		}
	}
	out := make([]*forwarder.DestinationStats, len(order))
	for i, name := range order {
		out[i] = sums[name]
	}
	return out
}
