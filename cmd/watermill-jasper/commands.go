package main

// commands is the command table, in the order the root usage lists them. To add a command,
// write it in its own file (a spec for a command with flags, a group for one with
// subcommands; see cli.go, and connect.go for --dsn/--schema and opening the database) and
// add one line here.
var commands = []command{
	schemaGroup.command(), // schema (schema.go)

	storageGroup.command(), // storage (storage.go)

	deadLettersGroup.command(), // dead-letters (deadletters.go)

	relaySpec.command(), // relay (relay.go)

	benchGroup.command(), // bench (bench.go)

	soakSpec.command(), // soak (soak.go)

	uiSpec.command(), // ui (ui.go)
}
