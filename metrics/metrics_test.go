package metrics_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/forwarder"
	"github.com/watermill-jasper/watermill-jasper/metrics"
)

type fakeAgent struct {
	g       durability.Gauges
	sampled bool
	s       durability.Stats
}

func (a *fakeAgent) Gauges() (durability.Gauges, bool) { return a.g, a.sampled }
func (a *fakeAgent) Stats() durability.Stats           { return a.s }

type fakeForwarder struct{ s forwarder.Stats }

func (f fakeForwarder) Stats() forwarder.Stats { return f.s }

func TestCollector(t *testing.T) {
	agent := &fakeAgent{s: durability.Stats{
		ScheduledReleased: 3, ScheduledSent: 2, DeadLettered: 1, Recovered: 40, DormantNodes: 2, Discarded: 5,
		HandledDeleted: 7, JobErrors: map[string]int64{durability.JobReassignment: 4},
	}}
	c := metrics.NewCollector(metrics.Config{
		Agent:       agent,
		ConstLabels: prometheus.Labels{"schema": "app"},
		Forwarders:  []metrics.ForwarderSource{fakeForwarder{forwarder.Stats{Sent: 100, Failed: 3, Expired: 2, DeadLettered: 1}}},
	})
	c.AddForwarder(fakeForwarder{forwarder.Stats{Sent: 50}})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)

	// Before the first sample: counters only.
	if n := testutil.CollectAndCount(c, "watermill_jasper_outgoing_envelopes"); n != 0 {
		t.Fatalf("gauge exported before the first sample (%d)", n)
	}
	err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP watermill_jasper_envelopes_sent_total Outgoing envelopes relayed to the broker by the forwarders.
# TYPE watermill_jasper_envelopes_sent_total counter
watermill_jasper_envelopes_sent_total{schema="app"} 150
# HELP watermill_jasper_envelopes_discarded_total Expired outgoing envelopes deleted without being sent.
# TYPE watermill_jasper_envelopes_discarded_total counter
watermill_jasper_envelopes_discarded_total{schema="app"} 7
# HELP watermill_jasper_envelopes_dead_lettered_total Envelopes moved to the dead letters by the forwarders and the durability agent.
# TYPE watermill_jasper_envelopes_dead_lettered_total counter
watermill_jasper_envelopes_dead_lettered_total{schema="app"} 2
# HELP watermill_jasper_envelopes_recovered_total Envelopes of dormant nodes handed back to every node by the durability agent.
# TYPE watermill_jasper_envelopes_recovered_total counter
watermill_jasper_envelopes_recovered_total{schema="app"} 40
# HELP watermill_jasper_scheduled_released_total Due scheduled envelopes made Incoming and scheduled sends moved to the outbox.
# TYPE watermill_jasper_scheduled_released_total counter
watermill_jasper_scheduled_released_total{schema="app"} 5
# HELP watermill_jasper_agent_job_errors_total Failed runs of the durability agent's jobs.
# TYPE watermill_jasper_agent_job_errors_total counter
watermill_jasper_agent_job_errors_total{agent_job="reassign-dormant-nodes",schema="app"} 4
`), "watermill_jasper_envelopes_sent_total", "watermill_jasper_envelopes_discarded_total",
		"watermill_jasper_envelopes_dead_lettered_total", "watermill_jasper_envelopes_recovered_total",
		"watermill_jasper_scheduled_released_total", "watermill_jasper_agent_job_errors_total")
	if err != nil {
		t.Fatal(err)
	}

	agent.sampled = true
	agent.g = durability.Gauges{Incoming: 1, Scheduled: 2, Handled: 3, Outgoing: 4, DeadLetters: 5,
		OldestOutgoingAge: 1500 * time.Millisecond, DormantOwned: 6, SampledAt: time.Unix(1700000000, 0)}
	err = testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP watermill_jasper_outgoing_envelopes Outgoing envelopes waiting in the outbox or being relayed.
# TYPE watermill_jasper_outgoing_envelopes gauge
watermill_jasper_outgoing_envelopes{schema="app"} 4
# HELP watermill_jasper_oldest_outgoing_age_seconds Age of the oldest outgoing envelope (0 when the outbox is empty).
# TYPE watermill_jasper_oldest_outgoing_age_seconds gauge
watermill_jasper_oldest_outgoing_age_seconds{schema="app"} 1.5
# HELP watermill_jasper_dormant_owned_envelopes Envelopes held by nodes whose lock no session holds; they wait for a reassignment pass.
# TYPE watermill_jasper_dormant_owned_envelopes gauge
watermill_jasper_dormant_owned_envelopes{schema="app"} 6
# HELP watermill_jasper_storage_sampled_timestamp_seconds When the storage gauges were sampled (Unix time).
# TYPE watermill_jasper_storage_sampled_timestamp_seconds gauge
watermill_jasper_storage_sampled_timestamp_seconds{schema="app"} 1.7e+09
`), "watermill_jasper_outgoing_envelopes", "watermill_jasper_oldest_outgoing_age_seconds",
		"watermill_jasper_dormant_owned_envelopes", "watermill_jasper_storage_sampled_timestamp_seconds")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 17 {
		t.Fatalf("%d metrics, %v; want 17", n, err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}

// Without an agent, the forwarders' counters are still exported.
func TestCollectorForwardersOnly(t *testing.T) {
	c := metrics.NewCollector(metrics.Config{Namespace: "app", Forwarders: []metrics.ForwarderSource{fakeForwarder{forwarder.Stats{Sent: 9}}}})
	if v := testutil.CollectAndCount(c, "app_envelopes_sent_total"); v != 1 {
		t.Fatalf("%d", v)
	}
	if n := testutil.CollectAndCount(c); n != 8 {
		t.Fatalf("%d metrics, want 8 counters", n)
	}
}
