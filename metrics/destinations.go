package metrics

import (
	"github.com/watermill-jasper/watermill-jasper/forwarder"
)

// DestinationSource is what a Collector reads per destination from a forwarder
// (*forwarder.Forwarder). A ForwarderSource that also implements it adds the
// watermill_jasper_destination_* series and the relay lag histogram.
type DestinationSource interface {
	DestinationStats() []forwarder.DestinationStats
}

var _ DestinationSource = (*forwarder.Forwarder)(nil)

// ReplicationSource is what a Collector reads from a forwarder with a logical-replication
// source (*forwarder.Forwarder; ok is false without one): the watermill_jasper_replication_*
// series, per slot.
type ReplicationSource interface {
	ReplicationStats() (forwarder.ReplicationStats, bool)
}

var _ ReplicationSource = (*forwarder.Forwarder)(nil)

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

// sumDestinations sums the per-destination counters and lag histograms of the forwarders
// that implement DestinationSource (several forwarders may relay the same destination),
// keeping the highest circuit state.
func sumDestinations(fwds []ForwarderSource) []*forwarder.DestinationStats {
	var order []*forwarder.DestinationStats
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
				order = append(order, t)
			}
			t.Sent += s.Sent
			t.Failed += s.Failed
			t.Expired += s.Expired
			t.DeadLettered += s.DeadLettered
			t.Circuit = max(t.Circuit, s.Circuit)
			t.Lag.Add(s.Lag)
		}
	}
	return order
}
