package metrics_test

import (
	"context"
	"log"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/metrics"
)

// A runtime's metrics on a Prometheus /metrics endpoint.
func ExampleNewCollector() {
	var rt *jasper.Runtime // started with jasper.NewRuntime and Start
	if rt == nil {
		return
	}
	c, err := rt.Collector() // metrics.NewCollector with every component of the runtime
	if err != nil {
		log.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
}

// The same metrics through OpenTelemetry: the producer feeds any SDK reader (a periodic
// reader of an OTLP exporter, the OpenTelemetry Prometheus exporter, ...).
func ExampleNewProducer() {
	var rt *jasper.Runtime // started with jasper.NewRuntime and Start
	if rt == nil {
		return
	}
	p, err := rt.MetricsProducer() // metrics.NewProducer with every component of the runtime
	if err != nil {
		log.Fatal(err)
	}
	reader := sdkmetric.NewManualReader(sdkmetric.WithProducer(p)) // or NewPeriodicReader(exporter, ...)
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	_ = metrics.ScopeName // the instrumentation scope of the produced metrics
}
