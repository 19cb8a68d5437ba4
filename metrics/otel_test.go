package metrics_test

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/metrics"
	"github.com/watermill-jasper/watermill-jasper/middleware"
	"github.com/watermill-jasper/watermill-jasper/subscriber"
)

type fakeDestForwarder struct {
	fakeForwarder
	d []forwarder.DestinationStats
}

func (f fakeDestForwarder) DestinationStats() []forwarder.DestinationStats { return f.d }

type fakeReplForwarder struct {
	fakeForwarder
	r forwarder.ReplicationStats
}

func (f fakeReplForwarder) ReplicationStats() (forwarder.ReplicationStats, bool) { return f.r, true }

type fakeSubscriber []subscriber.TopicStats

func (f fakeSubscriber) TopicStats() []subscriber.TopicStats { return f }

type fakeInbox []middleware.InboxTopicStats

func (f fakeInbox) TopicStats() []middleware.InboxTopicStats { return f }

type fakeDeadLetter []middleware.DeadLetterTopicStats

func (f fakeDeadLetter) TopicStats() []middleware.DeadLetterTopicStats { return f }

// lag is a relay-lag histogram of n envelopes sent within 5 ms and one after 2 s.
func lag(n uint64) forwarder.Histogram {
	bounds := []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}
	h := forwarder.Histogram{Bounds: bounds, Counts: make([]uint64, len(bounds)), Count: n + 1, Sum: 2 + float64(n)*0.004}
	for i, b := range bounds {
		switch {
		case b >= 2.5:
			h.Counts[i] = n + 1
		case b >= 0.005:
			h.Counts[i] = n
		}
	}
	return h
}

// config has one forwarder on two destinations (one broken), two subscribers of one
// topic, an inbox and a dead-letter middleware.
func config() metrics.Config {
	return metrics.Config{
		ConstLabels: prometheus.Labels{"service": "orders"},
		Forwarders: []metrics.ForwarderSource{fakeDestForwarder{
			fakeForwarder: fakeForwarder{forwarder.Stats{Sent: 7, Failed: 2}},
			d: []forwarder.DestinationStats{
				{Destination: "rabbitmq://queue/good", Sent: 7, Lag: lag(6)},
				{Destination: "rabbitmq://queue/broken", Failed: 2, Circuit: forwarder.CircuitOpen},
			},
		}},
		Subscribers: []metrics.SubscriberSource{
			fakeSubscriber{{Topic: "jobs", InFlight: 1, Acked: 10, Nacked: 2}},
			fakeSubscriber{{Topic: "jobs", InFlight: 2, Acked: 5}},
		},
		Inboxes:     []metrics.InboxSource{fakeInbox{{Topic: "jobs", Handled: 15, Duplicates: 3}}},
		DeadLetters: []metrics.DeadLetterSource{fakeDeadLetter{{Topic: "jobs", Exhausted: 1, Permanent: 4}}},
	}
}

// The replication series of a forwarder following a slot.
func TestCollectorReplication(t *testing.T) {
	c := metrics.NewCollector(metrics.Config{Forwarders: []metrics.ForwarderSource{
		fakeReplForwarder{r: forwarder.ReplicationStats{Slot: "wj_outbox_app", Streaming: true, LagBytes: 4096, LagSeconds: 0.25, Transactions: 9, Emitted: 5, Handover: 2}},
		fakeForwarder{}, // polling only: no series
	}})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP watermill_jasper_replication_lag_bytes Write-ahead log written since the slot's confirmed position, as the server last told the stream, per slot.
# TYPE watermill_jasper_replication_lag_bytes gauge
watermill_jasper_replication_lag_bytes{slot="wj_outbox_app"} 4096
# HELP watermill_jasper_replication_streaming 1 while the forwarder streams its logical replication slot, 0 while it stands by or polls after an error, per slot.
# TYPE watermill_jasper_replication_streaming gauge
watermill_jasper_replication_streaming{slot="wj_outbox_app"} 1
# HELP watermill_jasper_replication_emitted_total Envelopes received from the slot without a row (the table-less outbox), per slot.
# TYPE watermill_jasper_replication_emitted_total counter
watermill_jasper_replication_emitted_total{slot="wj_outbox_app"} 5
# HELP watermill_jasper_replication_handover_total Outbox rows from the slot the source could not lock at once and tried again or left to the polling path, per slot.
# TYPE watermill_jasper_replication_handover_total counter
watermill_jasper_replication_handover_total{slot="wj_outbox_app"} 2
`), "watermill_jasper_replication_lag_bytes", "watermill_jasper_replication_streaming", "watermill_jasper_replication_emitted_total", "watermill_jasper_replication_handover_total")
	if err != nil {
		t.Error(err)
	}
}

// The Producer gives an OpenTelemetry reader the same metrics as the Collector, from the
// same definitions: counters, gauges per destination and topic, and the lag histogram.
func TestProducer(t *testing.T) {
	reader := sdkmetric.NewManualReader(sdkmetric.WithProducer(metrics.NewProducer(config())))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	var hist *metricdata.HistogramDataPoint[float64]
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			var points []metricdata.DataPoint[float64]
			switch d := m.Data.(type) {
			case metricdata.Sum[float64]:
				if !d.IsMonotonic || d.Temporality != metricdata.CumulativeTemporality {
					t.Errorf("%s: a counter must be a cumulative monotonic sum: %+v", m.Name, d)
				}
				points = d.DataPoints
			case metricdata.Gauge[float64]:
				points = d.DataPoints
			case metricdata.Histogram[float64]:
				if m.Name == "watermill_jasper_relay_lag_seconds" && len(d.DataPoints) == 1 {
					hist = &d.DataPoints[0]
				}
			}
			for _, p := range points {
				key := m.Name
				for _, l := range []attribute.Key{"destination", "topic", "reason"} {
					if v, ok := p.Attributes.Value(l); ok {
						key += "{" + v.AsString() + "}"
					}
				}
				if v, ok := p.Attributes.Value("service"); !ok || v.AsString() != "orders" {
					t.Errorf("%s has no attribute service=orders", key)
				}
				got[key] = p.Value
			}
		}
	}
	for key, want := range map[string]float64{
		"watermill_jasper_envelopes_sent":                                        7,
		"watermill_jasper_envelopes_failed":                                      2,
		"watermill_jasper_destination_envelopes_sent{rabbitmq://queue/good}":     7,
		"watermill_jasper_destination_envelopes_failed{rabbitmq://queue/broken}": 2,
		"watermill_jasper_destination_circuit_state{rabbitmq://queue/broken}":    1,
		"watermill_jasper_destination_circuit_state{rabbitmq://queue/good}":      0,
		"watermill_jasper_subscriber_in_flight{jobs}":                            3,
		"watermill_jasper_subscriber_messages_acked{jobs}":                       15,
		"watermill_jasper_subscriber_messages_nacked{jobs}":                      2,
		"watermill_jasper_inbox_messages_handled{jobs}":                          15,
		"watermill_jasper_inbox_duplicates{jobs}":                                3,
		"watermill_jasper_handler_dead_lettered{jobs}{exhausted}":                1,
		"watermill_jasper_handler_dead_lettered{jobs}{permanent}":                4,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", key, v, ok, want)
		}
	}
	if hist == nil {
		t.Fatal("no relay lag histogram for rabbitmq://queue/good")
	}
	// 6 within (0.0025, 0.005], 1 within (1, 2.5]: OpenTelemetry buckets are per bucket.
	if hist.Count != 7 || len(hist.BucketCounts) != len(hist.Bounds)+1 || hist.BucketCounts[2] != 6 || hist.BucketCounts[10] != 1 {
		t.Errorf("relay lag histogram: count %d, bounds %v, buckets %v; want 7 with 6 in bucket 2 and 1 in bucket 10", hist.Count, hist.Bounds, hist.BucketCounts)
	}
}

// The Collector exports the per-topic series and the lag histogram (cumulative buckets).
func TestCollectorTopicsAndLag(t *testing.T) {
	c := metrics.NewCollector(config())
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP watermill_jasper_inbox_duplicates_total Messages the inbox middleware acknowledged without running the handler because they were handled before, per topic.
# TYPE watermill_jasper_inbox_duplicates_total counter
watermill_jasper_inbox_duplicates_total{service="orders",topic="jobs"} 3
# HELP watermill_jasper_subscriber_in_flight Messages the subscribers delivered that wait for the handler's Ack or Nack, per topic.
# TYPE watermill_jasper_subscriber_in_flight gauge
watermill_jasper_subscriber_in_flight{service="orders",topic="jobs"} 3
# HELP watermill_jasper_handler_dead_lettered_total Messages the dead-letter middleware moved to the dead letters, per topic and reason (exhausted: MaxAttempts failures; permanent: a permanent error).
# TYPE watermill_jasper_handler_dead_lettered_total counter
watermill_jasper_handler_dead_lettered_total{reason="exhausted",service="orders",topic="jobs"} 1
watermill_jasper_handler_dead_lettered_total{reason="permanent",service="orders",topic="jobs"} 4
`), "watermill_jasper_inbox_duplicates_total", "watermill_jasper_subscriber_in_flight", "watermill_jasper_handler_dead_lettered_total")
	if err != nil {
		t.Error(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "watermill_jasper_relay_lag_seconds" {
			continue
		}
		if len(mf.Metric) != 1 {
			t.Fatalf("relay lag: %d series, want 1 (the broken destination sent nothing)", len(mf.Metric))
		}
		h := mf.Metric[0].GetHistogram()
		le := map[float64]uint64{}
		for _, b := range h.Bucket {
			le[b.GetUpperBound()] = b.GetCumulativeCount()
		}
		if h.GetSampleCount() != 7 || le[0.0025] != 0 || le[0.005] != 6 || le[1] != 6 || le[2.5] != 7 {
			t.Errorf("relay lag histogram: count %d, buckets %v", h.GetSampleCount(), le)
		}
		return
	}
	t.Error("no watermill_jasper_relay_lag_seconds")
}
