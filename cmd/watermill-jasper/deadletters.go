package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/spf13/pflag"

	"github.com/watermill-jasper/watermill-jasper/admin"
	"github.com/watermill-jasper/watermill-jasper/cmd/watermill-jasper/internal/progress"
	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// payloadPreview is how many bytes of a payload dead-letters show prints.
const payloadPreview = 512

var deadLettersGroup = group{
	name:    "dead-letters",
	summary: "list, show, replay or purge the dead letters (list, show, replay, purge)",
	description: "Dead letters are the rows of " + schema.DeadLetterTable + ", written by this library's " +
		"dead-letter middleware, forwarder, relay and subscriber, or by .NET Jasper (whose rows have no message " +
		"UUID or headers: their metadata is rebuilt from the columns). PostgreSQL and SQL Server; the schema " +
		"needs this library's extension columns (\"" + program + " schema migrate\", safe on a Jasper database).",
	examples: []string{
		"dead-letters list --schema messaging --topic orders",
		"dead-letters show 0f8fad5b-d9cb-469f-a165-70867728950e",
		"dead-letters replay --all",
		"dead-letters purge --older-than 720h --yes",
	},
	subs: []spec{
		deadLettersList,
		deadLettersShow,
		deadLettersReplay,
		deadLettersPurge,
	},
}

var deadLettersList = spec{
	name:    "dead-letters list",
	summary: "print the dead letters as a table, newest first",
	description: "One line per dead letter: id, when it was written, its topic (received_at), message type, " +
		"attempts, source (the handler) and the error (exception type and the first line of its message, " +
		"shortened). The last line says how many of how many were shown.",
	examples: []string{
		"dead-letters list --schema messaging",
		"dead-letters list --topic orders --limit 20",
	},
	setup: func(fs *pflag.FlagSet) runFunc {
		topic := fs.String("topic", "", "only dead letters received on `TOPIC` (their received_at)")
		limit := fs.Int("limit", 50, "show at most `N` dead letters (0: all)")
		out := newOutputFlag(fs)
		db := newDBFlags(fs)
		return db.run(notNegative("--limit", limit), func(ctx context.Context, e *env, drv database.Driver, cfg schema.Config) error {
			lim := *limit
			if lim == 0 {
				lim = -1
			}
			dls, err := admin.ListDeadLetters(ctx, drv, cfg, admin.ListOptions{Topic: *topic, Limit: lim})
			if err != nil {
				return err
			}
			total, err := admin.CountDeadLetters(ctx, drv, cfg, *topic, 0)
			if err != nil {
				return err
			}
			if out.json {
				return writeJSON(e.stdout, deadLetterListJSON(cfg, *topic, dls, total))
			}
			return printDeadLetterList(e.stdout, cfg, *topic, dls, total)
		})
	},
}

func printDeadLetterList(w io.Writer, cfg schema.Config, topic string, dls []admin.DeadLetter, total int64) error {
	where := "in schema " + cfg.Schema
	if topic != "" {
		where = fmt.Sprintf("of topic %q %s", topic, where)
	}
	if len(dls) == 0 {
		_, err := fmt.Fprintf(w, "no dead letters %s\n", where)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tWRITTEN\tTOPIC\tTYPE\tATTEMPTS\tSOURCE\tERROR")
	for _, d := range dls {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.ID, fmtTime(d.Timestamp), orDash(oneLine(d.ReceivedAt, 40)),
			orDash(oneLine(d.MessageType, 30)), d.Attempts, orDash(oneLine(d.Source, 24)), orDash(errorSummary(d)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d of %d dead letters %s\n", len(dls), total, where)
	return err
}

func errorSummary(d admin.DeadLetter) string {
	msg := d.ExceptionMessage
	if msg == "" {
		msg = d.Explanation
	}
	s := msg
	if d.ExceptionType != "" {
		s = d.ExceptionType + ": " + msg
	}
	return oneLine(s, 80)
}

// oneLine returns the first line of s, shortened to max runes with an ellipsis.
func oneLine(s string, max int) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if utf8.RuneCountInString(s) > max {
		r := []rune(s)
		s = string(r[:max-1]) + "…"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

var deadLettersShow = spec{
	name:    "dead-letters show",
	summary: "print every field of one dead letter and a preview of its payload",
	args:    "ID",
	description: "The error's type, whole message and whole text, the whole explanation, the topic, source and attempts, " +
		"the Jasper envelope columns, every header (metadata pair) and the first " + fmt.Sprint(payloadPreview) +
		" bytes of the payload (as text when it is UTF-8 text, otherwise as a hex dump).",
	examples: []string{
		"dead-letters show 0f8fad5b-d9cb-469f-a165-70867728950e --schema messaging",
	},
	setup: func(fs *pflag.FlagSet) runFunc {
		out := newOutputFlag(fs)
		db := newDBFlags(fs)
		return func(ctx context.Context, e *env, args []string) error {
			if len(args) != 1 {
				return usageErrorf("dead-letters show takes one dead letter ID (see %s dead-letters show --help)", program)
			}
			id, err := uuid.Parse(args[0])
			if err != nil {
				return usageErrorf("dead-letters show: %q is not a dead letter ID (a UUID)", args[0])
			}
			return db.with(ctx, e, func(ctx context.Context, e *env, drv database.Driver, cfg schema.Config) error {
				d, err := admin.GetDeadLetter(ctx, drv, cfg, id)
				if err != nil {
					return err
				}
				if out.json {
					return writeJSON(e.stdout, deadLetterToJSON(d, true))
				}
				return printDeadLetter(e.stdout, d)
			})
		}
	},
}

func printDeadLetter(w io.Writer, d admin.DeadLetter) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	field := func(name, value string) { fmt.Fprintf(tw, "%s\t%s\n", name, orDash(value)) }
	field("ID", d.ID.String())
	field("Written", fmtTime(d.Timestamp))
	field("Topic (received_at)", d.ReceivedAt)
	field("Source", d.Source)
	field("Message UUID", d.MessageUUID)
	field("Message type", d.MessageType)
	field("Content type", d.ContentType)
	field("Attempts", fmt.Sprint(d.Attempts))
	field("Execution time", fmtTime(d.ExecutionTime))
	field("Replayable", fmt.Sprint(d.Replayable))
	field("Correlation id", d.CorrelationID)
	field("Parent id (traceparent)", d.ParentID)
	conv := ""
	if d.ConversationID != nil {
		conv = d.ConversationID.String()
	}
	field("Conversation id", conv)
	field("Saga id", d.SagaID)
	field("Reply URI", d.ReplyURI)
	field("Reply requested", d.ReplyRequested)
	field("Ack requested", fmt.Sprint(d.AckRequested))
	field("Exception type", d.ExceptionType)
	if err := tw.Flush(); err != nil {
		return err
	}
	// The texts are printed whole, each as an indented block.
	for _, t := range []struct{ name, text string }{
		{"Explanation", d.Explanation}, {"Exception message", d.ExceptionMessage}, {"Exception text", d.ExceptionText},
	} {
		fmt.Fprintf(w, "\n%s:\n", t.name)
		writeBlock(w, orDash(t.text))
	}

	switch {
	case d.HeadersError != "":
		fmt.Fprintf(w, "\nHeaders: unreadable (%s)\n", d.HeadersError)
	case d.Headers == nil:
		fmt.Fprintln(w, "\nHeaders: none (a row written by Jasper: the metadata is in the columns above)")
	default:
		fmt.Fprintf(w, "\nHeaders (%d):\n", len(d.Headers))
		keys := make([]string, 0, len(d.Headers))
		for k := range d.Headers {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, k := range keys {
			fmt.Fprintf(tw, "  %s\t%s\n", k, oneLine(d.Headers[k], 200))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	body := d.Body
	shown := len(body)
	if shown > payloadPreview {
		shown = payloadPreview
	}
	if len(body) > shown {
		fmt.Fprintf(w, "\nPayload (%d bytes, first %d shown):\n", len(body), shown)
	} else {
		fmt.Fprintf(w, "\nPayload (%d bytes):\n", len(body))
	}
	if len(body) == 0 {
		_, err := fmt.Fprintln(w, "  (empty)")
		return err
	}
	preview := body[:shown]
	if isText(preview) {
		writeBlock(w, string(preview))
		return nil
	}
	writeBlock(w, strings.TrimRight(hex.Dump(preview), "\n"))
	return nil
}

// isText reports whether b is UTF-8 text without control characters other than white space
// (a cut in the middle of a multi-byte rune at the end is allowed).
func isText(b []byte) bool {
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n <= 1 {
			return len(b) < utf8.UTFMax && !utf8.FullRune(b)
		}
		if unicode.IsControl(r) && r != '\n' && r != '\t' && r != '\r' {
			return false
		}
		b = b[n:]
	}
	return true
}

func writeBlock(w io.Writer, text string) {
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		fmt.Fprintln(w, "  "+strings.TrimRight(line, "\r"))
	}
}

var deadLettersReplay = spec{
	name:    "dead-letters replay",
	summary: "send dead letters back to be handled again",
	args:    "[ID...]",
	description: "Select the dead letters by ID, or every one with --all, or those of one topic with --topic. " +
		"Without --to each goes back to " + schema.IncomingTable + " as an Incoming envelope of its topic " +
		"(received_at), unowned and with no attempts, as Wolverine's replay does: this library's subscriber, or " +
		"Jasper for its own rows, handles it again. With --to amqp://... each message is republished to RabbitMQ " +
		"instead (a topic that is not a rabbitmq:// URI is taken as a queue name: rabbitmq://queue/TOPIC), with " +
		"publisher confirms, and deleted once confirmed. Messages keep their UUIDs, so a handler behind the inbox " +
		"middleware handles each once. A dead letter whose id is in the incoming table already, or that has no " +
		"topic (give --to-topic), is left in place and listed.\n\nProgress goes to stderr after each batch; the " +
		"summary goes to stdout. The exit status is 1 when something was skipped, not found or failed.",
	examples: []string{
		"dead-letters replay 0f8fad5b-d9cb-469f-a165-70867728950e 7c9e6679-7425-40de-944b-e07fc1f90ae7",
		"dead-letters replay --topic orders --schema messaging",
		"dead-letters replay --all --to amqp://guest:guest@localhost:5672/",
	},
	setup: func(fs *pflag.FlagSet) runFunc {
		all := fs.Bool("all", false, "replay every dead letter")
		topic := fs.String("topic", "", "replay the dead letters received on `TOPIC`")
		toTopic := fs.String("to-topic", "", "send them to `TOPIC` instead of each one's received_at")
		db := newDBFlags(fs)
		var to stringFlag
		fs.Var(&to, "to", "republish to RabbitMQ at this AMQP `URL` (amqp://USER:PASSWORD@HOST:PORT/VHOST) instead of "+
			"moving the dead letters back to the incoming table; an empty --to '' takes the URL from $"+amqpURLEnv+
			", which keeps the password off the command line")
		declare := fs.Bool("declare-queues", false, "with --to: declare a missing queue (durable) instead of failing")
		batch := fs.Int("batch", admin.DefaultReplayBatchSize, "`N` dead letters per batch (one statement each)")
		return func(ctx context.Context, e *env, args []string) error {
			sel := admin.ReplaySelection{All: *all, Topic: *topic}
			for _, a := range args {
				id, err := uuid.Parse(a)
				if err != nil {
					return usageErrorf("dead-letters replay: %q is not a dead letter ID (a UUID)", a)
				}
				sel.IDs = append(sel.IDs, id)
			}
			n := 0
			for _, b := range []bool{len(sel.IDs) > 0, sel.All, sel.Topic != ""} {
				if b {
					n++
				}
			}
			if n != 1 {
				return usageErrorf("dead-letters replay: give dead letter IDs, or --all, or --topic TOPIC (exactly one of them)")
			}
			if *batch < 1 {
				return usageErrorf("--batch must be at least 1, got %d", *batch)
			}
			amqpURL := ""
			if to.set {
				amqpURL = strings.TrimSpace(to.value)
				if amqpURL == "" {
					amqpURL = os.Getenv(amqpURLEnv)
				}
				scheme, _, ok := strings.Cut(amqpURL, "://")
				if s := strings.ToLower(scheme); !ok || (s != "amqp" && s != "amqps") {
					return usageErrorf("invalid --to %s: want amqp://USER:PASSWORD@HOST:PORT/VHOST or amqps://...", jasperamqp.RedactURL(amqpURL))
				}
			} else if *declare {
				return usageErrorf("--declare-queues needs --to")
			}
			return db.with(ctx, e, func(ctx context.Context, e *env, drv database.Driver, cfg schema.Config) error {
				opts := admin.ReplayOptions{Topic: *toTopic, BatchSize: *batch}
				target := cfg.IncomingTable()
				if amqpURL != "" {
					pub, err := jasperamqp.NewConfirmPublisher(amqpURL, watermill.NopLogger{}, jasperamqp.WithDeclareQueues(*declare))
					if err != nil {
						return redactError(fmt.Errorf("connect to RabbitMQ at %s: %w", jasperamqp.RedactURL(amqpURL), err), amqpURL)
					}
					defer pub.Close()
					opts.Publisher = queuePublisher{pub}
					target = "RabbitMQ at " + jasperamqp.RedactURL(amqpURL)
				}
				bar := progress.New(e.stderr, "dead-letters replay", -1)
				opts.Progress = func(p admin.ReplayProgress) {
					bar.Step(int64(p.Done), int64(p.Total), fmt.Sprintf("%d replayed", p.Replayed))
				}
				res, err := admin.ReplayDeadLetters(ctx, drv, cfg, sel, opts)
				bar.Finish()
				fmt.Fprintf(e.stdout, "replayed %d dead letters to %s (schema %s)\n", res.Replayed, target, cfg.Schema)
				for _, s := range res.Skipped {
					fmt.Fprintf(e.stdout, "skipped %s: %s\n", s.ID, s.Reason)
				}
				for _, id := range res.NotFound {
					fmt.Fprintf(e.stdout, "not found %s\n", id)
				}
				if err != nil {
					return redactError(err, amqpURL)
				}
				if len(res.Skipped)+len(res.NotFound) > 0 {
					return fmt.Errorf("%d dead letters skipped, %d not found (see above)", len(res.Skipped), len(res.NotFound))
				}
				return nil
			})
		}
	},
}

// queuePublisher maps a topic that is not a URI to the RabbitMQ queue of that name, as
// watermill-amqp's durable queue config does (topic = queue name).
type queuePublisher struct{ pub message.Publisher }

func (q queuePublisher) Publish(topic string, msgs ...*message.Message) error {
	if !strings.Contains(topic, "://") {
		topic = "rabbitmq://queue/" + topic
	}
	return q.pub.Publish(topic, msgs...)
}

func (q queuePublisher) Close() error { return q.pub.Close() }

var deadLettersPurge = spec{
	name:    "dead-letters purge",
	summary: "delete dead letters for good",
	description: "Deletes every dead letter, or those written more than --older-than ago, or of one --topic, in " +
		"batches (progress on stderr). It asks for confirmation on stdin first: only y or yes goes on, anything " +
		"else (including no answer) aborts with exit status 1.",
	examples: []string{
		"dead-letters purge --older-than 720h",
		"dead-letters purge --topic orders --yes",
	},
	setup: func(fs *pflag.FlagSet) runFunc {
		older := fs.Duration("older-than", 0, "delete only dead letters written more than `DURATION` ago, e.g. 168h (0: any age)")
		topic := fs.String("topic", "", "delete only dead letters received on `TOPIC`")
		yes := fs.Bool("yes", false, "delete without asking for confirmation")
		db := newDBFlags(fs)
		return db.run(notNegative("--older-than", older), func(ctx context.Context, e *env, drv database.Driver, cfg schema.Config) error {
			what := "dead letters"
			if *topic != "" {
				what += fmt.Sprintf(" of topic %q", *topic)
			}
			if *older > 0 {
				what += " written more than " + older.String() + " ago"
			}
			total, err := admin.CountDeadLetters(ctx, drv, cfg, *topic, *older)
			if err != nil {
				return err
			}
			if !*yes {
				question := fmt.Sprintf("Delete %d %s in schema %s?", total, what, cfg.Schema)
				if ok, err := askDelete(e, cfg, what, total, question); !ok {
					return err
				}
			}
			bar := progress.New(e.stderr, "dead-letters purge", total)
			n, err := admin.PurgeDeadLetters(ctx, drv, cfg, admin.PurgeOptions{OlderThan: *older, Topic: *topic,
				Progress: func(d int64) { bar.Step(d, max(total, d), fmt.Sprintf("%d deleted", d)) }})
			bar.Finish()
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(e.stdout, "deleted %d %s from schema %s\n", n, what, cfg.Schema)
			return err
		})
	},
}

// deadLetterJSON is a dead letter in --output json: snake_case keys, times in RFC 3339 (UTC),
// the payload as base64 (body_base64, only from dead-letters show).
type deadLetterJSON struct {
	ID               string            `json:"id"`
	Written          *time.Time        `json:"written"`
	Topic            string            `json:"topic"`
	Source           string            `json:"source"`
	MessageUUID      string            `json:"message_uuid,omitempty"`
	MessageType      string            `json:"message_type"`
	ContentType      string            `json:"content_type,omitempty"`
	Attempts         int               `json:"attempts"`
	ExecutionTime    *time.Time        `json:"execution_time,omitempty"`
	Replayable       bool              `json:"replayable"`
	CorrelationID    string            `json:"correlation_id,omitempty"`
	ParentID         string            `json:"parent_id,omitempty"`
	ConversationID   string            `json:"conversation_id,omitempty"`
	SagaID           string            `json:"saga_id,omitempty"`
	ReplyURI         string            `json:"reply_uri,omitempty"`
	ReplyRequested   string            `json:"reply_requested,omitempty"`
	AckRequested     bool              `json:"ack_requested"`
	Explanation      string            `json:"explanation"`
	ExceptionType    string            `json:"exception_type"`
	ExceptionMessage string            `json:"exception_message"`
	ExceptionText    string            `json:"exception_text,omitempty"`
	Headers          map[string]string `json:"headers,omitempty"`
	HeadersError     string            `json:"headers_error,omitempty"`
	BodySize         int               `json:"body_size"`
	Body             []byte            `json:"body_base64,omitempty"`
}

func deadLetterToJSON(d admin.DeadLetter, full bool) deadLetterJSON {
	utc := func(t *time.Time) *time.Time {
		if t == nil {
			return nil
		}
		u := t.UTC()
		return &u
	}
	j := deadLetterJSON{
		ID: d.ID.String(), Written: utc(d.Timestamp), Topic: d.ReceivedAt, Source: d.Source, MessageUUID: d.MessageUUID,
		MessageType: d.MessageType, ContentType: d.ContentType, Attempts: d.Attempts, ExecutionTime: utc(d.ExecutionTime),
		Replayable: d.Replayable, CorrelationID: d.CorrelationID, ParentID: d.ParentID, SagaID: d.SagaID,
		ReplyURI: d.ReplyURI, ReplyRequested: d.ReplyRequested, AckRequested: d.AckRequested,
		Explanation: d.Explanation, ExceptionType: d.ExceptionType, ExceptionMessage: d.ExceptionMessage,
		BodySize: d.BodySize,
	}
	if d.ConversationID != nil {
		j.ConversationID = d.ConversationID.String()
	}
	if full {
		j.ExceptionText, j.Headers, j.HeadersError, j.Body = d.ExceptionText, d.Headers, d.HeadersError, d.Body
		if j.BodySize == 0 {
			j.BodySize = len(d.Body)
		}
	}
	return j
}

// deadLetterListJSON is dead-letters list in --output json.
func deadLetterListJSON(cfg schema.Config, topic string, dls []admin.DeadLetter, total int64) any {
	items := make([]deadLetterJSON, len(dls))
	for i, d := range dls {
		items[i] = deadLetterToJSON(d, false)
	}
	return struct {
		Schema      string           `json:"schema"`
		Topic       string           `json:"topic,omitempty"`
		Total       int64            `json:"total"`
		DeadLetters []deadLetterJSON `json:"dead_letters"`
	}{cfg.Schema, topic, total, items}
}
