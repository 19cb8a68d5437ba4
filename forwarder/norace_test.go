//go:build !race

package forwarder

// raceEnabled tells tests that the race detector is on.
const raceEnabled = false
