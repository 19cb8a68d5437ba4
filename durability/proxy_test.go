package durability_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
)

// proxyTimeout bounds every wait of the proxy tests.
const proxyTimeout = 60 * time.Second

// A pass that fails is tried again soon, not a whole period later: with the reassignment's
// period at one hour, a pass that failed while the connection was cut runs again, and
// succeeds, within seconds of the connection coming back.
func TestFailedPassRetriedBeforeItsPeriod(t *testing.T) {
	t.Parallel()
	_, cfg := testdb.Migrated(t)
	db, proxy := testdb.Proxied(t, 4, time.Second)
	node, err := durability.NewNode(context.Background(), db, durability.NodeConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	agent, err := durability.NewAgent(node, durability.Config{
		Schema:                         cfg,
		FirstNodeReassignmentExecution: 0,
		NodeReassignmentPollingTime:    time.Hour,
		StatementTimeout:               time.Second,
		DisableNotify:                  true,
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	failed, succeeded := make(chan struct{}), make(chan struct{})
	var failOnce, okOnce sync.Once
	durability.SetJobHook(agent, func(job string, err error) {
		if job != durability.JobReassignment {
			return
		}
		if err != nil {
			failOnce.Do(func() { close(failed) })
			return
		}
		select {
		case <-failed:
			okOnce.Do(func() { close(succeeded) })
		default:
		}
	})
	proxy.Cut()
	if err := agent.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer agent.Stop(context.Background())
	select {
	case <-failed:
	case <-time.After(proxyTimeout):
		t.Fatal("the reassignment pass did not fail while the connection was cut")
	}
	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	restored := time.Now()
	select {
	case <-succeeded:
		t.Logf("reassignment pass succeeded %s after the connection came back (period: 1h)", time.Since(restored))
	case <-time.After(proxyTimeout):
		t.Fatalf("no successful reassignment pass %s after the connection came back: failed passes wait for the period", proxyTimeout)
	}
}
