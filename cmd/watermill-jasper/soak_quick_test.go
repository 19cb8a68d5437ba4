package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/watermill-jasper/watermill-jasper/internal/pgcluster"
)

// runSoakCLI runs the soak command with args (plus --json) and returns its figures; it fails
// the test when the soak could not run. RabbitMQ must be running (the test fails saying how
// to start it).
func runSoakCLI(t *testing.T, args ...string) (soakReport, result) {
	t.Helper()
	rabbit(t) // fails with the command that starts RabbitMQ
	if _, err := pgcluster.Bin(""); err != nil {
		t.Fatal(err) // says how to install PostgreSQL's server programs
	}
	jsonPath := filepath.Join(t.TempDir(), "soak.json")
	r := runCLI(t, append([]string{"soak", "--amqp", amqpURL(), "--json", jsonPath}, args...)...)
	t.Logf("soak %s:\n%s\n%s", strings.Join(args, " "), r.stdout, r.stderr)
	var rep soakReport
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatalf("soak wrote no figures (exit %d): %v\n%s", r.code, err, r.stderr)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("soak figures: %v", err)
	}
	return rep, r
}

// checkSoak fails the test on any loss, duplicate effect, stuck row or misdelivered message,
// and when the exit status disagrees.
func checkSoak(t *testing.T, rep soakReport, r result) {
	t.Helper()
	if p := rep.problems(); len(p) > 0 {
		t.Errorf("soak found: %s", strings.Join(p, ", "))
	}
	if !rep.Drained {
		t.Errorf("the outbox did not drain")
	}
	if rep.DeadLetteredRefused != rep.CommittedRefused {
		t.Errorf("dead-lettered %d of the %d refused messages", rep.DeadLetteredRefused, rep.CommittedRefused)
	}
	if rep.AppliedOnce+rep.DeadLetteredGood < rep.CommittedQueue {
		t.Errorf("applied once %d + dead-lettered %d < committed to the queue %d", rep.AppliedOnce, rep.DeadLetteredGood, rep.CommittedQueue)
	}
	if r.code != 0 {
		t.Errorf("soak exited with status %d: %s", r.code, r.stderr)
	}
}

// A short soak with one fault kind: relays killed with SIGKILL and restarted while the
// publishers commit and roll back, and a share of the messages goes to a destination the
// relays never publish to. Every committed message is applied exactly once or
// dead-lettered; nothing is left in the tables. (The full soak, with every fault kind, is
// soak_test.go, build tag soak.)
func TestSoakQuickRelayKills(t *testing.T) {
	rep, r := runSoakCLI(t, "--duration", "10s", "--kill-every", "3s-4s", "--faults", "relay-kill",
		"--rate", "100", "--drain-timeout", "60s")
	checkSoak(t, rep, r)
	if len(rep.Faults) != 1 || rep.Faults[0].Kind != faultKill || rep.Faults[0].Count < 1 {
		t.Errorf("want at least one relay kill, got %+v", rep.Faults)
	}
}
