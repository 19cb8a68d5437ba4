package main

// The --output flag of the listing commands (the progress of long commands: package progress).

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/pflag"
)

// outputFlag is the --output flag: text (the default, for people) or json (one JSON document
// on stdout, for programs; its keys are snake_case and stable).
type outputFlag struct{ json bool }

// newOutputFlag registers --output on fs.
func newOutputFlag(fs *pflag.FlagSet) *outputFlag {
	o := &outputFlag{}
	fs.Var(o, "output", "`FORMAT` of what is printed on stdout: text or json")
	return o
}

// String returns the format: text or json.
func (o *outputFlag) String() string {
	if o != nil && o.json {
		return "json"
	}
	return "text"
}

// Type names the value in the help when the usage names none.
func (o *outputFlag) Type() string { return "format" }

// Set parses text or json.
func (o *outputFlag) Set(v string) error {
	switch v {
	case "text":
		o.json = false
	case "json":
		o.json = true
	default:
		return fmt.Errorf("want text or json, got %q", v)
	}
	return nil
}

// writeJSON prints v as one indented JSON document.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}
