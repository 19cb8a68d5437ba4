package metrics

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// ScopeName is the instrumentation scope of the metrics a Producer produces.
const ScopeName = "github.com/watermill-jasper/watermill-jasper/metrics"

// Producer produces watermill-jasper's metrics for an OpenTelemetry SDK reader: the same
// metrics as the Collector, from the same definitions, read at collection time (no cost on
// the hot paths beyond the atomic adds the components already do). Counters are cumulative
// monotonic sums named without the _total suffix (an OpenTelemetry Prometheus exporter adds
// it back), the relay lag is an explicit-bucket histogram, and ConstLabels become
// attributes. Give it to a reader:
//
//	reader := sdkmetric.NewPeriodicReader(exporter, sdkmetric.WithProducer(metrics.NewProducer(cfg)))
//
// It is safe for concurrent use; components can be added to it at any time.
type Producer struct {
	*sources
	names      []string // one per definition, with the namespace
	constAttrs []attribute.KeyValue
	start      time.Time
}

var _ sdkmetric.Producer = (*Producer)(nil)

// NewProducer returns a Producer reading config's sources.
func NewProducer(config Config) *Producer {
	p := &Producer{sources: newSources(config), names: make([]string, len(definitions)), start: time.Now()}
	for i, d := range definitions {
		p.names[i] = config.namespace() + "_" + d.name
	}
	for k, v := range config.ConstLabels {
		p.constAttrs = append(p.constAttrs, attribute.String(k, v))
	}
	return p
}

// Produce implements sdkmetric.Producer. It never queries the database.
func (p *Producer) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	s := p.read()
	now := time.Now()
	var out []metricdata.Metrics
	for i, d := range definitions {
		samples := d.read(s)
		if len(samples) == 0 {
			continue
		}
		m := metricdata.Metrics{Name: p.names[i], Description: d.help}
		switch d.kind {
		case gaugeKind:
			g := metricdata.Gauge[float64]{DataPoints: make([]metricdata.DataPoint[float64], len(samples))}
			for j, smp := range samples {
				g.DataPoints[j] = metricdata.DataPoint[float64]{Attributes: p.attrs(d, smp), Time: now, Value: smp.value}
			}
			m.Data = g
		case counterKind:
			c := metricdata.Sum[float64]{Temporality: metricdata.CumulativeTemporality, IsMonotonic: true,
				DataPoints: make([]metricdata.DataPoint[float64], len(samples))}
			for j, smp := range samples {
				c.DataPoints[j] = metricdata.DataPoint[float64]{Attributes: p.attrs(d, smp), StartTime: p.start, Time: now, Value: smp.value}
			}
			m.Data = c
		case histogramKind:
			h := metricdata.Histogram[float64]{Temporality: metricdata.CumulativeTemporality,
				DataPoints: make([]metricdata.HistogramDataPoint[float64], len(samples))}
			for j, smp := range samples {
				// OpenTelemetry buckets are not cumulative, and the last one is (last bound, +Inf).
				counts := make([]uint64, len(smp.hist.Bounds)+1)
				var prev uint64
				for k, c := range smp.hist.Counts {
					counts[k], prev = c-prev, c
				}
				counts[len(counts)-1] = smp.hist.Count - prev
				h.DataPoints[j] = metricdata.HistogramDataPoint[float64]{
					Attributes: p.attrs(d, smp), StartTime: p.start, Time: now,
					Count: smp.hist.Count, Sum: smp.hist.Sum, Bounds: smp.hist.Bounds, BucketCounts: counts,
				}
			}
			m.Data = h
		}
		out = append(out, m)
	}
	return []metricdata.ScopeMetrics{{Scope: instrumentation.Scope{Name: ScopeName}, Metrics: out}}, nil
}

// attrs are a sample's attributes: the definition's labels with their values, then the
// constant labels.
func (p *Producer) attrs(d definition, smp sample) attribute.Set {
	kv := make([]attribute.KeyValue, 0, len(d.labels)+len(p.constAttrs))
	for i, l := range d.labels {
		kv = append(kv, attribute.String(l, smp.labels[i]))
	}
	return attribute.NewSet(append(kv, p.constAttrs...)...)
}
