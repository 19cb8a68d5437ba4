package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// subscriberTargets are the acceptance numbers of the subscriber figures
// (docs/benchmarks.md): more in flight is never slower, and the best setting against the raw
// loop, watermill-sql and River.
var subscriberTargets = []target{
	{"sub_4_of_1", 1, false},
	{"sub_16_of_4", 1, false},
	{"sub_best_of_raw", 0.8, false},
	{"sub_best_x_watermill", 2, false},
	{"sub_best_x_river", 1.5, false},
}

// ResultLine is the one-line summary printed last: the median of every target figure.
func (r SubscriberResult) ResultLine() string { return resultLine(r.Figures, subscriberTargets) }

// Stats are the figures of every run summarised (the --json keys).
func (r SubscriberResult) Stats() Stats { return r.Figures }

// figures are this run's figures by --json key (docs/benchmarks.md).
func (r subscriberRun) figures() Figures {
	f := Figures{}
	f.set("sub_raw", r.raw.Rate)
	best, wmBest := nan, nan
	for _, l := range r.legs {
		switch l.Impl {
		case implOurs:
			f.set(fmt.Sprintf("sub_ours_%d", l.InFlight), l.Rate)
			if math.IsNaN(best) || l.Rate > best {
				best = l.Rate
			}
		case implWatermillSQL:
			f.set(fmt.Sprintf("sub_watermill_%d", l.InFlight), l.Rate)
			if math.IsNaN(wmBest) || l.Rate > wmBest {
				wmBest = l.Rate
			}
		case implRiver:
			f.set("sub_river", l.Rate)
		}
	}
	f.set("sub_ours_best", best)
	f.set("sub_watermill", wmBest)
	f.ratio("sub_4_of_1", "sub_ours_4", "sub_ours_1")
	f.ratio("sub_16_of_4", "sub_ours_16", "sub_ours_4")
	f.ratio("sub_best_of_raw", "sub_ours_best", "sub_raw")
	f.ratio("sub_best_x_watermill", "sub_ours_best", "sub_watermill")
	f.ratio("sub_best_x_river", "sub_ours_best", "sub_river")
	return f
}

// WriteTable prints the results as aligned tables.
func (r SubscriberResult) WriteTable(w io.Writer) error {
	cfg := r.Config
	var b strings.Builder
	fmt.Fprintf(&b, "Subscriber benchmark: %s\n", r.describe(fmt.Sprintf("%d-message backlog, %d-byte payloads", cfg.Backlog, cfg.Payload)))
	fmt.Fprintf(&b, "ours = subscriber.NewSubscriber, defaults (LISTEN/NOTIFY, acks batched) but BatchSize %d and MaxInFlight; "+
		"watermill-sql = v4 subscriber, log schema (BYTEA payload), consumer group %q, poll %s, batch %d\n",
		cfg.Batch, wmConsumerGroup, WatermillPollInterval, cfg.Batch)

	t := section(&b, "CONSUME: prefilled backlog -> router -> no-op handler, timed from router start to the last message handled")
	fmt.Fprintln(t, "  impl\tin flight\tbacklog\tmsg/s\ttime\tfirst msg\tmsg/s after 1st\tvs watermill-sql\tof raw loop\tdups\tleft\tstmts/1k msgs\t")
	if r.Raw.N > 0 {
		fmt.Fprintf(t, "  %s\t-\t%d\t%s\t%s\t-\t-\t-\t1.00\t0\t0\t%.1f\t\n", implRaw, r.Raw.N, num(r.Raw.Rate),
			r.Raw.Elapsed.Round(time.Millisecond), float64(2*r.Raw.Batches+1)*1000/float64(r.Raw.N))
	}
	wmBest, hasBest := r.wmBest()
	for _, l := range r.Legs {
		inFlight := fmt.Sprint(l.InFlight)
		if l.Impl == implWatermillSQL && l.InFlight > 1 {
			inFlight = fmt.Sprintf("%d (%d subscribers)", l.InFlight, l.InFlight)
		}
		vs := "-"
		if l.Impl == implOurs {
			if l.InFlight == 1 {
				if wm, ok := r.leg(implWatermillSQL, 1); ok && wm.Rate > 0 {
					vs = fmt.Sprintf("%.2fx", l.Rate/wm.Rate)
				}
			} else if hasBest && wmBest.Rate > 0 {
				vs = fmt.Sprintf("%.2fx best", l.Rate/wmBest.Rate)
			}
		}
		ofRaw := "-"
		if r.Raw.Rate > 0 {
			ofRaw = fmt.Sprintf("%.2f", l.Rate/r.Raw.Rate)
		}
		steady := "-"
		if l.N > 1 && l.Elapsed > l.FirstMsg {
			steady = num(float64(l.N-1) / (l.Elapsed - l.FirstMsg).Seconds())
		}
		fmt.Fprintf(t, "  %s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%.1f\t\n", l.Impl, inFlight, l.N, num(l.Rate),
			l.Elapsed.Round(time.Millisecond), fmtMs(l.FirstMsg), steady, vs, ofRaw, l.Dups, l.Left,
			float64(l.Statements)*1000/float64(l.N))
	}
	_ = t.Flush()

	writeNotes(&b,
		"Prefills are not timed: ours through our publisher (publisher.Incoming: status Incoming, owner 0, received_at = topic), "+
			"watermill-sql's through its publisher into its own table; both 1,000 messages per transaction, both tables ANALYZEd. Every leg has a fresh schema.",
		fmt.Sprintf("In flight %d: ours is one subscriber with MaxInFlight %d; watermill-sql is %d subscribers of one consumer group, "+
			"one router handler each (one message in flight per subscription is all it can do).", SubscriberWideInFlight, SubscriberWideInFlight, SubscriberWideInFlight),
		"Both subscribers' SubscribeInitialize runs before the timing (watermill-sql's creates its tables, ours checks them once). "+
			"Timing starts at Router.Run (Subscribe included: our LISTEN and first claim, watermill-sql's offsets row) and ends when the handler has seen the last distinct message UUID; "+
			"then every message must be acknowledged in the database (left: our rows deleted, watermill-sql's offset committed) and duplicates are counted after the router stops.",
		"vs watermill-sql: in flight 1 against its one subscriber, in flight 4 against its best leg. "+
			"The raw loop is our claim (1,000 rows) then delete on the incoming table, one goroutine, no router: the limit of the design. "+
			"stmts/1k msgs counts BEGIN/COMMIT/ROLLBACK too, up to the last acknowledgement.",
	)
	r.Figures.writeTo(&b, r.Runs)
	writeTargets(&b, r.Figures, subscriberTargets)

	_, err := io.WriteString(w, b.String())
	return err
}
