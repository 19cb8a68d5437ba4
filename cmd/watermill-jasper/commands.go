package main

// commands is the command table, in the order the root usage lists them. To add a command,
// write it in its own file (a spec for a command with flags, a group for one with
// subcommands; see cli.go, and connect.go for --dsn/--schema and opening the database) and
// add one line here.
var commands = []command{
	schemaCommand(),

	storageCommand(),

	deadLettersCommand(), // dead-letters (deadletters.go)

	relayCommand(), // relay (relay.go)

	benchCommand(), // bench (bench.go)
}
