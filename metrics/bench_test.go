package metrics_test

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/metrics"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

// One scrape of a process with 50 destinations (each with its lag histogram) and 20
// subscribed topics: what a Prometheus scrape costs the process.
func BenchmarkCollectorGather(b *testing.B) {
	var dests []forwarder.DestinationStats
	for i := range 50 {
		dests = append(dests, forwarder.DestinationStats{Destination: fmt.Sprintf("rabbitmq://queue/q%02d", i), Sent: 1000, Lag: lag(1000)})
	}
	var topics subscriber.TopicStats
	var subs fakeSubscriber
	for i := range 20 {
		topics.Topic = fmt.Sprintf("topic-%02d", i)
		subs = append(subs, topics)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(metrics.Config{
		Forwarders:  []metrics.ForwarderSource{fakeDestForwarder{d: dests}},
		Subscribers: []metrics.SubscriberSource{subs},
	}))
	b.ResetTimer()
	for b.Loop() {
		if _, err := reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
}
