package metrics_test

import (
	"context"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/metrics"
)

type fakeDestForwarder struct {
	fakeForwarder
	d []forwarder.DestinationStats
}

func (f fakeDestForwarder) DestinationStats() []forwarder.DestinationStats { return f.d }

// Register observes the same sources through a user's MeterProvider.
func TestRegisterOpenTelemetry(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	fwd := fakeDestForwarder{
		fakeForwarder: fakeForwarder{forwarder.Stats{Sent: 7, Failed: 2}},
		d: []forwarder.DestinationStats{
			{Destination: "rabbitmq://queue/good", Sent: 7},
			{Destination: "rabbitmq://queue/broken", Failed: 2, Circuit: forwarder.CircuitOpen},
		},
	}
	reg, err := metrics.Register(mp, metrics.Config{Forwarders: []metrics.ForwarderSource{fwd}})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			var points []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				points = d.DataPoints
			case metricdata.Gauge[int64]:
				points = d.DataPoints
			}
			for _, p := range points {
				key := m.Name
				if v, ok := p.Attributes.Value("destination"); ok {
					key += "{" + v.AsString() + "}"
				}
				got[key] = p.Value
			}
		}
	}
	for key, want := range map[string]int64{
		"watermill_jasper_envelopes_sent":                                        7,
		"watermill_jasper_envelopes_failed":                                      2,
		"watermill_jasper_destination_envelopes_sent{rabbitmq://queue/good}":     7,
		"watermill_jasper_destination_envelopes_failed{rabbitmq://queue/broken}": 2,
		"watermill_jasper_destination_circuit_state{rabbitmq://queue/broken}":    1,
		"watermill_jasper_destination_circuit_state{rabbitmq://queue/good}":      0,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %d (present %v), want %d", key, v, ok, want)
		}
	}
}
