//go:build soak

package main

import (
	"os"
	"testing"
	"time"
)

// soakDurationEnv overrides the duration of TestSoak.
const soakDurationEnv = "WATERMILL_JASPER_SOAK_DURATION"

// TestSoak runs the chaos soak with every fault kind (relay kills, broker and database
// connections cut, a database restart, a refused destination) for 2 minutes, or
// $WATERMILL_JASPER_SOAK_DURATION, and fails on any loss, duplicate effect or stuck row:
//
//	go test -tags soak -run TestSoak -v -timeout 30m ./cmd/watermill-jasper/
func TestSoak(t *testing.T) {
	d := 2 * time.Minute
	if v := os.Getenv(soakDurationEnv); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("$%s: %v", soakDurationEnv, err)
		}
	}
	rep, r := runSoakCLI(t, "--duration", d.String())
	checkSoak(t, rep, r)
	kinds := map[string]int{}
	for _, f := range rep.Faults {
		kinds[f.Kind] = f.Count
	}
	for _, k := range soakFaultKinds {
		if kinds[k] == 0 && d >= time.Minute {
			t.Errorf("no %s fault was injected", k)
		}
	}
}
