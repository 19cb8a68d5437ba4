package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	jasper "github.com/watermill-jasper/watermill-jasper"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// halfBrokenPublisher publishes every topic but "broken", which always fails.
type halfBrokenPublisher struct{ sent atomic.Int64 }

func (p *halfBrokenPublisher) Publish(topic string, msgs ...*message.Message) error {
	if topic == "broken" {
		return errors.New("the broken topic always fails")
	}
	p.sent.Add(int64(len(msgs)))
	return nil
}

func (p *halfBrokenPublisher) Close() error { return nil }

// A runtime relays to a publisher on which one destination always fails: /metrics, scraped
// through promhttp, shows the per-destination series (sent for the good destination, failed
// for the broken one) and the broken destination's circuit open, next to the summed counters.
func TestRuntimeMetricsPerDestination(t *testing.T) {
	t.Parallel()
	pub := &halfBrokenPublisher{}
	rt, metricsURL := startScrapedRuntime(t, jasper.Config{
		Forwarders: []forwarder.Config{{
			Publisher: pub, CircuitBreakAfter: 1, CircuitPause: time.Minute, MaxCircuitPause: time.Minute,
		}},
	})

	if err := rt.Publisher().Publish("good", newMessages("good", 5)...); err != nil {
		t.Fatal(err)
	}
	if err := rt.Publisher().Publish("broken", newMessages("broken", 2)...); err != nil {
		t.Fatal(err)
	}

	fwd := rt.Forwarders()[0]
	var good, broken string
	deadline := time.Now().Add(time.Minute)
	for {
		good, broken = "", ""
		for _, s := range fwd.DestinationStats() {
			switch {
			case s.Sent == 5 && s.Failed == 0:
				good = s.Destination
			case s.Failed >= 1 && s.Circuit == forwarder.CircuitOpen:
				broken = s.Destination
			}
		}
		if good != "" && broken != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("per-destination stats never showed the good one sent and the broken one open: %+v", fwd.DestinationStats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(broken, "broken") || !strings.Contains(good, "good") {
		t.Fatalf("destinations %q (good) and %q (broken)", good, broken)
	}

	text := scrape(t, metricsURL)
	for _, want := range []string{
		`watermill_jasper_destination_envelopes_sent_total{destination="` + good + `"} 5`,
		`watermill_jasper_destination_envelopes_failed_total{destination="` + broken + `"} `,
		`watermill_jasper_destination_circuit_state{destination="` + broken + `"} 1`,
		`watermill_jasper_destination_circuit_state{destination="` + good + `"} 0`,
		`watermill_jasper_envelopes_sent_total 5`,
		`watermill_jasper_relay_lag_seconds_count{destination="` + good + `"} 5`,
		`watermill_jasper_relay_lag_seconds_bucket{destination="` + good + `",le="+Inf"} 5`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, `watermill_jasper_relay_lag_seconds_count{destination="`+broken+`"}`) {
		t.Errorf("a relay lag for the broken destination, which sent nothing:\n%s", text)
	}
	if strings.Contains(text, `watermill_jasper_destination_envelopes_failed_total{destination="`+broken+`"} 0`) {
		t.Errorf("the broken destination has no failure:\n%s", text)
	}
}

// startScrapedRuntime starts a runtime with config on a fresh schema, its Collector
// registered and served; it returns the runtime and the URL of its /metrics. The test's end
// stops both.
func startScrapedRuntime(t *testing.T, config jasper.Config) (*jasper.Runtime, string) {
	t.Helper()
	db, cfg := testdb.Migrated(t)
	config.Schema = cfg.Schema
	rt, err := jasper.NewRuntime(db, config, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := rt.Stop(context.Background()); err != nil {
			t.Errorf("stop the runtime: %v", err)
		}
	})
	c, err := rt.Collector()
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	return rt, srv.URL + "/metrics"
}

func newMessages(prefix string, n int) []*message.Message {
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(fmt.Sprintf("%s-%05d", prefix, i), []byte(`{}`))
	}
	return msgs
}
