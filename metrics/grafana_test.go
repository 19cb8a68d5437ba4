package metrics

import (
	"os"
	"regexp"
	"testing"
)

// Every series the Grafana dashboard queries is one of the defined metrics.
func TestGrafanaDashboardQueriesDefinedMetrics(t *testing.T) {
	b, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, d := range definitions {
		name := DefaultNamespace + "_" + d.name
		switch d.kind {
		case counterKind:
			known[name+"_total"] = true
		case histogramKind:
			known[name+"_bucket"], known[name+"_sum"], known[name+"_count"] = true, true, true
		default:
			known[name] = true
		}
	}
	used := regexp.MustCompile(`watermill_jasper_[a-z_]+`).FindAllString(string(b), -1)
	if len(used) == 0 {
		t.Fatal("the dashboard queries no watermill_jasper_ metric")
	}
	for _, name := range used {
		if !known[name] {
			t.Errorf("docs/grafana-dashboard.json queries %s, which the metrics package does not define", name)
		}
	}
}

// No metric has a label Prometheus sets on every series it scrapes (job, instance): a scrape
// would rename ours to exported_job, and the dashboard's "by job" would group by the
// scrape job instead.
func TestNoLabelClashesWithPrometheusTargetLabels(t *testing.T) {
	for _, d := range definitions {
		for _, l := range d.labels {
			if l == "job" || l == "instance" {
				t.Errorf("metric %s has the label %q, which Prometheus sets on every scraped series", d.name, l)
			}
		}
	}
}
