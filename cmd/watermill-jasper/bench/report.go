package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable prints the results as aligned tables.
func (r OutboxResult) WriteTable(w io.Writer) error {
	cfg := r.Config
	var b strings.Builder
	fmt.Fprintf(&b, "Outbox benchmark: %s\n", r.describe(fmt.Sprintf("%d-byte payloads", cfg.Payload)))
	fmt.Fprintf(&b, "ours = publisher + forwarder (defaults); watermill = watermill-sql v4 publisher in the tx + components/forwarder + watermill-sql subscriber (poll %s)\n", WatermillPollInterval)

	t := section(&b, fmt.Sprintf("PUBLISH: business transactions (INSERT order + 1 message, commit), %d goroutines, %s each", cfg.Publishers, cfg.PublishDuration))
	fmt.Fprintln(t, "  variant\ttx/s\ttime vs bare INSERT\t")
	bare, hasBare := r.publish(pubBare)
	for _, p := range r.Publish {
		rel := "-"
		if hasBare && p.TPS > 0 {
			rel = fmt.Sprintf("%.3fx", bare.TPS/p.TPS)
		}
		fmt.Fprintf(t, "  %s\t%s\t%s\t\n", p.Name, num(p.TPS), rel)
	}
	_ = t.Flush()

	t = section(&b, "DRAIN: prefilled backlog -> sink, timed from relay start to the last message at the sink's consumer")
	fmt.Fprintln(t, "  impl\tsink\tbacklog\tmsg/s\ttime\tfirst msg\tmsg/s after 1st\tvs watermill\tof raw loop\tdups\tleft\tstmts/1k msgs\t")
	if r.Raw.N > 0 {
		// Per batch: BEGIN, lock, delete, COMMIT; and the last lock that found nothing.
		fmt.Fprintf(t, "  %s\tnone\t%d\t%s\t%s\t-\t-\t-\t1.00\t-\t0\t%.1f\t\n", implRaw, r.Raw.N, num(r.Raw.Rate), r.Raw.Elapsed.Round(time.Millisecond),
			float64(4*r.Raw.Batches+3)*1000/float64(r.Raw.N))
	}
	if r.RawClaim.N > 0 {
		fmt.Fprintf(t, "  %s\tnone\t%d\t%s\t%s\t-\t-\t-\t%.2f\t-\t0\t%.1f\t\n", implRawClaim, r.RawClaim.N, num(r.RawClaim.Rate), r.RawClaim.Elapsed.Round(time.Millisecond),
			quotient(r.RawClaim.Rate, r.Raw.Rate), float64(2*r.RawClaim.Batches+1)*1000/float64(r.RawClaim.N))
	}
	for _, d := range r.Drains {
		vsWM := "-"
		if d.Impl == implOurs {
			if wm, ok := r.drain(implWatermill, d.Sink, d.N); ok && wm.Rate > 0 {
				vsWM = fmt.Sprintf("%.2fx", d.Rate/wm.Rate)
			}
		}
		ofRaw := "-"
		if r.Raw.Rate > 0 && d.Sink == sinkGoChannel && !onLogicalServer(d.Impl) {
			ofRaw = fmt.Sprintf("%.2f", d.Rate/r.Raw.Rate)
		}
		stmts := "-"
		if d.Statements >= 0 {
			stmts = fmt.Sprintf("%.1f", float64(d.Statements)*1000/float64(d.N))
		}
		steady := "-"
		if d.N > 1 && d.Elapsed > d.FirstMsg {
			steady = num(float64(d.N-1) / (d.Elapsed - d.FirstMsg).Seconds())
		}
		fmt.Fprintf(t, "  %s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t\n", d.Impl, d.Sink, d.N, num(d.Rate),
			d.Elapsed.Round(time.Millisecond), fmtMs(d.FirstMsg), steady, vsWM, ofRaw, d.Dups, d.Left, stmts)
	}
	_ = t.Flush()

	t = section(&b, fmt.Sprintf("LATENCY: Commit() returned -> sink's consumer received, one message per business transaction at a steady %d msg/s for %s", cfg.Rate, cfg.LatencyDuration))
	fmt.Fprintln(t, "  impl\tsink\tmsg/s\tmessages\tp50\tp99\tmax\tdups\t")
	for _, l := range r.Latency {
		fmt.Fprintf(t, "  %s\t%s\t%.0f\t%d\t%s\t%s\t%s\t%d\t\n", l.Impl, l.Sink, l.Rate, l.Sent, fmtMs(l.P50), fmtMs(l.P99), fmtMs(l.Max), l.Dups)
	}
	_ = t.Flush()

	t = section(&b, fmt.Sprintf("IDLE: relay with nothing to send, statements sent to PostgreSQL (BEGIN/COMMIT included) over %s", cfg.IdleDuration))
	fmt.Fprintln(t, "  impl\tstatements/s\ton the outbox table\tof the forwarder\ttransactions/s\t")
	rate := func(v float64) string {
		if math.IsNaN(v) {
			return "-"
		}
		return fmt.Sprintf("%.1f", v)
	}
	for _, i := range r.Idle {
		fmt.Fprintf(t, "  %s\t%.1f\t%s\t%s\t%.1f\t\n", i.Impl, i.StatementsSec, rate(i.OutboxStatementsSec), rate(i.RelayStatementsSec), i.TxSec)
	}
	_ = t.Flush()

	writeNotes(&b,
		"Prefills are not timed: ours COPYs the rows our publisher writes (same mapping, row.FromMessage); Watermill's go through its own publisher, 1,000 messages per transaction; both tables are ANALYZEd.",
		"Drains are timed from the call that starts the relay (node lock, LISTEN, first claim or poll included) to the last distinct message at the sink's consumer; then the relay must delete/ack every row (left) and duplicates are counted by message UUID. msg/s after 1st leaves the start-up out: (N-1) / (last - first arrival).",
		"gochannel: in-process GoChannel, one consumer goroutine that acks. amqp: persistent messages through the default exchange to a fresh durable queue, publisher confirms, arrivals counted by an amqp091 auto-ack consumer.",
		"watermill amqp: watermill-amqp NewDurableQueueConfig with Publish.ConfirmDelivery, otherwise its defaults (a channel opened per Publish). watermill+jasperamqp: Watermill's relay through jasperamqp.NewPublisher (watermill-amqp, channel pool), to separate the relay from the AMQP client. ours amqp: jasperamqp.NewConfirmPublisher (pipelined confirms), destination rabbitmq://queue/NAME.",
		"ours by slot: the forwarder with forwarder.LogicalReplication (pgoutput slot and publication created before the prefill, so the slot brings every row; the polling path still drains what it is woken for, at start). It and its baseline, ours polling (same server), run on a server with wal_level = logical: --cdc-dsn, --dsn when logical, else a private cluster (fsync on, shared_buffers 128MB) started for the run. Idle, on the outbox table: the statements naming jasper_outgoing_envelopes, whoever sends them; of the forwarder: the relay's own statements (its pprof label, internal/component), whatever they name. The rest are the node's and the agent's (node lock check, scheduled jobs, gauges), the same for either source. bare slot reader (limit): the same slot read by internal/logrepl alone, each row's message handed to the sink as its transaction arrives (no lock, no delete, no commit): the floor of any relay that follows a slot, in the same run. ours table-less: the same forwarder and slot, the publisher writing logical decoding messages instead of rows (publisher.Config.TableLess; the prefill emits them, 10 per transaction): no lock, no delete, no commit by the relay.",
		"Statements count every BEGIN/COMMIT/ROLLBACK; transactions include autocommit statements. The raw loop is the relay's own statements and nothing else, one goroutine: per 1,000 rows one transaction that locks them (SELECT ... FOR UPDATE SKIP LOCKED), deletes them and commits (drain_raw). The raw claim loop is the design that marks rows, as Jasper does: an UPDATE claiming 1,000 rows (owner_id) then a DELETE, each autocommit (drain_raw_claim).",
	)
	r.Figures.writeTo(&b, r.Runs)
	writeTargets(&b, r.Figures, outboxTargets)
	_, err := io.WriteString(w, b.String())
	return err
}

// nan is a figure that was not measured.
var nan = math.NaN()

// quotient is a / b, or nan when b is not positive (the figure b was not measured).
func quotient(a, b float64) float64 {
	if b <= 0 {
		return nan
	}
	return a / b
}

// figure formats a RESULT figure with prec decimals: n/a when it was not measured.
func figure(v float64, prec int) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

// section writes title after a blank line and returns the writer of its table (aligned
// columns; Flush it).
func section(b *strings.Builder, title string) *tabwriter.Writer {
	fmt.Fprintf(b, "\n%s\n", title)
	return tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
}

// writeNotes writes the NOTES section, each note a wrapped item.
func writeNotes(b *strings.Builder, notes ...string) {
	fmt.Fprintf(b, "\nNOTES\n")
	for _, n := range notes {
		writeWrapped(b, n, "  - ", "    ")
	}
}

// target is a figure (a Figures key) and its acceptance number: at least want, or at most
// want when atMost.
type target struct {
	key    string
	want   float64
	atMost bool
}

// writeTargets writes the TARGETS section: the median of each target's figure in s, its
// target and whether it is met.
func writeTargets(b *strings.Builder, s Stats, targets []target) {
	t := section(b, "TARGETS (medians)")
	fmt.Fprintln(t, "  figure\tvalue\ttarget\tmet\t")
	for _, tg := range targets {
		op := ">="
		if tg.atMost {
			op = "<="
		}
		st, ok := s[tg.key]
		met, val := "not measured", "n/a"
		if ok {
			val = figureOf(st.Median)
			met = "yes"
			if tg.atMost && st.Median > tg.want || !tg.atMost && st.Median < tg.want {
				met = "NO"
			}
		}
		fmt.Fprintf(t, "  %s\t%s\t%s %g\t%s\t\n", tg.key, val, op, tg.want, met)
	}
	_ = t.Flush()
}

// resultLine is "RESULT" followed by key=median of every target's figure (n/a when it was not
// measured).
func resultLine(s Stats, targets []target) string {
	var b strings.Builder
	b.WriteString("RESULT")
	for _, tg := range targets {
		v := nan
		if st, ok := s[tg.key]; ok {
			v = st.Median
		}
		fmt.Fprintf(&b, " %s=%s", tg.key, figure(v, 3))
	}
	return b.String()
}

// num formats a rate with thousands separators.
func num(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	n := len(s)
	if n <= 3 {
		return s
	}
	var b strings.Builder
	pre := n % 3
	if pre > 0 {
		b.WriteString(s[:pre])
	}
	for i := pre; i < n; i += 3 {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(s[i : i+3])
	}
	return b.String()
}

// writeWrapped writes text wrapped at 100 columns, the first line after first, the others
// after rest.
func writeWrapped(b *strings.Builder, text, first, rest string) {
	line := first
	for _, w := range strings.Fields(text) {
		if len(line) > len(rest) && len(line)+1+len(w) > 100 {
			b.WriteString(strings.TrimRight(line, " ") + "\n")
			line = rest
		}
		if line != first && line != rest {
			line += " "
		}
		line += w
	}
	b.WriteString(line + "\n")
}
