package main

import "github.com/spf13/cobra"

// commands is the command table, in the order the root usage lists them. To add a command,
// write it in its own file (a spec for a command with flags, a group for one with
// subcommands; see cli.go, and connect.go for --dsn/--schema and opening the database) and
// add one line here.
var commands = []interface {
	cobraCommand(e *env) *cobra.Command
}{
	schemaGroup, // schema (schema.go)

	storageGroup, // storage (storage.go)

	deadLettersGroup, // dead-letters (deadletters.go)

	relaySpec, // relay (relay.go)

	slotGroup, // slot (slot.go)

	benchGroup, // bench (bench.go)

	soakSpec, // soak (soak.go)

	uiSpec, // ui (ui.go)
}
