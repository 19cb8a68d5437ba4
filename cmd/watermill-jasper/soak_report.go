package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
)

// soakReport holds the figures of a soak run (printed, and written by --json).
type soakReport struct {
	Duration      string `json:"duration"`
	Rate          int    `json:"rate"`
	Relays        int    `json:"relays"`
	Drained       bool   `json:"drained"`
	DrainDuration string `json:"drain_duration"`

	// Business transactions.
	Attempted        int   `json:"attempted"`
	Committed        int   `json:"committed"`
	CommittedQueue   int   `json:"committed_to_queue"`
	CommittedRefused int   `json:"committed_refused"`
	RolledBack       int   `json:"rolled_back"`
	PublishErrors    int64 `json:"publish_errors"`
	// CommitUnknown are transactions whose commit failed with an error yet committed (the
	// connection was lost with the answer): counted as committed, the database decides.
	CommitUnknown int `json:"commit_outcome_unknown_committed"`

	// Consumer.
	Delivered        int `json:"delivered"`
	Deliveries       int `json:"deliveries"`
	BrokerDuplicates int `json:"broker_duplicates"`
	// AfterAck are the deliveries of a message whose handling had succeeded before (the
	// others followed a failed attempt, nacked for its redelivery).
	AfterAck         int `json:"broker_duplicates_after_ack"`
	AppliedOnce      int `json:"applied_once"`
	DuplicateEffects int `json:"duplicate_effects"`

	// Dead letters.
	DeadLettered        int `json:"dead_lettered"`
	DeadLetteredRefused int `json:"dead_lettered_refused"`
	DeadLetteredGood    int `json:"dead_lettered_good"`

	// Failures.
	Lost                int `json:"lost"`
	LostRefused         int `json:"lost_refused"`
	AckedMissing        int `json:"acked_commit_missing"`
	RolledBackCommitted int `json:"rolled_back_committed"`
	RolledBackDelivered int `json:"rolled_back_delivered"`
	RefusedApplied      int `json:"refused_applied"`
	StuckOutgoing       int `json:"stuck_outgoing"`
	// StuckRefused are the refused messages still in the outbox (neither sent nor
	// dead-lettered); the other stuck outgoing rows are messages of the queue.
	StuckRefused  int `json:"stuck_outgoing_refused"`
	StuckIncoming int `json:"stuck_incoming"`

	// Latency of commit -> applied, in milliseconds (business row insert to first effect).
	LatencyP50 float64 `json:"latency_p50_ms"`
	LatencyP99 float64 `json:"latency_p99_ms"`
	LatencyMax float64 `json:"latency_max_ms"`

	Faults            []soakFaultFigures `json:"faults"`
	RelayFailedStarts int64              `json:"relay_failed_starts"`
	LogDir            string             `json:"log_dir,omitempty"`
}

// soakFaultFigures are the figures of one fault kind: how many, and the time from the
// end of each (the service back) to the first message committed after it being applied.
type soakFaultFigures struct {
	Kind           string  `json:"kind"`
	Count          int     `json:"count"`
	Measured       int     `json:"recoveries_measured"`
	RecoveryMedian float64 `json:"recovery_median_ms"`
	RecoveryMax    float64 `json:"recovery_max_ms"`
}

// collect reads the tables and computes the figures.
func (s *soak) collect(ctx context.Context, drained bool) (*soakReport, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	rep := &soakReport{Duration: s.cfg.Duration.String(), Rate: s.cfg.Rate, Relays: s.cfg.Relays, Drained: drained,
		PublishErrors: s.publishErrors.Load(), RelayFailedStarts: s.unexpectedExits.Load(),
		DrainDuration: s.drainTook.Round(time.Millisecond).String()}

	type order struct {
		refused bool
		created time.Time
	}
	orders := map[string]order{}
	rows, err := s.direct.Query(ctx, `SELECT id, refused, created_at FROM soak.orders`)
	if err != nil {
		return nil, fmt.Errorf("read the orders: %w", err)
	}
	for rows.Next() {
		var id uuid.UUID
		var o order
		if err := rows.Scan(&id, &o.refused, &o.created); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read the orders: %w", err)
		}
		orders[id.String()] = o
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the orders: %w", err)
	}

	type effect struct {
		applications int
		first        time.Time
	}
	effects := map[string]effect{}
	rows, err = s.direct.Query(ctx, `SELECT message_id, applications, first_applied_at FROM soak.effects`)
	if err != nil {
		return nil, fmt.Errorf("read the effects: %w", err)
	}
	for rows.Next() {
		var id uuid.UUID
		var e effect
		if err := rows.Scan(&id, &e.applications, &e.first); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read the effects: %w", err)
		}
		effects[id.String()] = e
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the effects: %w", err)
	}

	dead := map[string]bool{}
	rows, err = s.direct.Query(ctx, `SELECT body FROM soak.jasper_dead_letters`)
	if err != nil {
		return nil, fmt.Errorf("read the dead letters: %w", err)
	}
	for rows.Next() {
		var body []byte
		if err := rows.Scan(&body); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read the dead letters: %w", err)
		}
		var p struct {
			Order string `json:"order"`
		}
		if json.Unmarshal(body, &p) == nil && p.Order != "" {
			dead[p.Order] = true
		}
		rep.DeadLettered++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the dead letters: %w", err)
	}
	// The messages still in the outbox are stuck, not lost.
	outbox := map[string]bool{}
	rows, err = s.direct.Query(ctx, `SELECT body FROM soak.jasper_outgoing_envelopes`)
	if err != nil {
		return nil, fmt.Errorf("read the outbox: %w", err)
	}
	for rows.Next() {
		var body []byte
		if err := rows.Scan(&body); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read the outbox: %w", err)
		}
		var p struct {
			Order string `json:"order"`
		}
		if json.Unmarshal(body, &p) == nil && p.Order != "" {
			outbox[p.Order] = true
		}
		rep.StuckOutgoing++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the outbox: %w", err)
	}
	if err := s.direct.QueryRow(ctx, `SELECT count(*) FROM soak.jasper_incoming_envelopes WHERE status <> 'Handled'`).Scan(&rep.StuckIncoming); err != nil {
		return nil, fmt.Errorf("count the stuck rows: %w", err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	rep.Attempted = len(s.intents)
	for id, in := range s.intents {
		_, committed := orders[id]
		switch {
		case in.rollback:
			rep.RolledBack++
			if committed {
				rep.RolledBackCommitted++
			}
			if effects[id].applications > 0 || s.deliveries[id] > 0 {
				rep.RolledBackDelivered++
			}
		case in.acked && !committed:
			rep.AckedMissing++
		case !in.acked && committed:
			rep.CommitUnknown++
		}
	}
	var latencies []time.Duration
	type commitApplied struct{ committed, applied time.Time }
	var applied []commitApplied
	for id, o := range orders {
		rep.Committed++
		e, isApplied := effects[id]
		if o.refused {
			rep.CommittedRefused++
			switch {
			case dead[id]:
				rep.DeadLetteredRefused++
			case outbox[id]:
				rep.StuckRefused++
			default:
				rep.LostRefused++
				rep.Lost++
			}
			if isApplied {
				rep.RefusedApplied++
			}
			continue
		}
		rep.CommittedQueue++
		if dead[id] {
			rep.DeadLetteredGood++
		}
		if !isApplied && !dead[id] && !outbox[id] {
			rep.Lost++
		}
		if isApplied {
			latencies = append(latencies, e.first.Sub(o.created))
			applied = append(applied, commitApplied{o.created, e.first})
		}
	}
	for id, n := range s.deliveries {
		if _, ok := orders[id]; ok || n > 0 {
			rep.Delivered++
			rep.Deliveries += n
		}
	}
	rep.BrokerDuplicates = rep.Deliveries - rep.Delivered
	rep.AfterAck = s.redelivered
	for _, e := range effects {
		if e.applications == 1 {
			rep.AppliedOnce++
		} else {
			rep.DuplicateEffects++
		}
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	rep.LatencyP50, rep.LatencyP99, rep.LatencyMax = quantileMS(latencies, 0.5), quantileMS(latencies, 0.99), quantileMS(latencies, 1)

	// Recovery: for each fault, the first message committed at or after its end that was
	// applied, from the fault's end to its application. suffixMin[i] is the earliest
	// application among the messages committed at or after applied[i].committed.
	sort.Slice(applied, func(i, j int) bool { return applied[i].committed.Before(applied[j].committed) })
	suffixMin := make([]time.Time, len(applied))
	for i := len(applied) - 1; i >= 0; i-- {
		suffixMin[i] = applied[i].applied
		if i+1 < len(applied) && suffixMin[i+1].Before(suffixMin[i]) {
			suffixMin[i] = suffixMin[i+1]
		}
	}
	byKind := map[string][]time.Duration{}
	counts := map[string]int{}
	for _, f := range s.faults {
		counts[f.Kind]++
		i := sort.Search(len(applied), func(i int) bool { return !applied[i].committed.Before(f.End) })
		if i < len(applied) {
			byKind[f.Kind] = append(byKind[f.Kind], max(suffixMin[i].Sub(f.End), 0))
		}
	}
	for _, k := range soakFaultKinds {
		if counts[k] == 0 {
			continue
		}
		d := byKind[k]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		rep.Faults = append(rep.Faults, soakFaultFigures{Kind: k, Count: counts[k], Measured: len(d),
			RecoveryMedian: quantileMS(d, 0.5), RecoveryMax: quantileMS(d, 1)})
	}
	return rep, nil
}

// quantileMS is the q-quantile (nearest rank) of sorted durations, in milliseconds; 0 when empty.
func quantileMS(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	i = min(max(i, 0), len(sorted)-1)
	return float64(sorted[i].Microseconds()) / 1000
}

// problems lists what makes the soak fail: losses, duplicate effects, stuck rows, and
// rolled-back messages that committed or were delivered.
func (r *soakReport) problems() []string {
	var p []string
	add := func(n int, what string) {
		if n > 0 {
			p = append(p, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(r.Lost, "lost (committed, not applied, not dead-lettered, not in the outbox)")
	add(r.AckedMissing, "acknowledged commits missing from the database")
	add(r.DuplicateEffects, "duplicate effects (applied more than once)")
	add(r.RolledBackCommitted, "rolled-back transactions found committed")
	add(r.RolledBackDelivered, "rolled-back messages delivered")
	add(r.RefusedApplied, "refused messages applied")
	add(r.StuckOutgoing, "stuck rows in jasper_outgoing_envelopes")
	add(r.StuckIncoming, "stuck rows in jasper_incoming_envelopes (not Handled)")
	if r.Committed == 0 {
		p = append(p, "nothing committed (nothing was measured)")
	}
	return p
}

// write prints the figures.
func (r *soakReport) write(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Soak: %s at %d msg/s, %d relays; drained: %v (in %s)\n\n", r.Duration, r.Rate, r.Relays, r.Drained, r.DrainDuration)
	line := func(name string, v any, note string) {
		if note != "" {
			note = "  (" + note + ")"
		}
		fmt.Fprintf(&b, "  %-28s %v%s\n", name, v, note)
	}
	line("business transactions", r.Attempted, fmt.Sprintf("%d failed with an error", r.PublishErrors))
	line("committed", r.Committed, fmt.Sprintf("%d to the queue, %d to the refused destination; %d committed despite a commit error",
		r.CommittedQueue, r.CommittedRefused, r.CommitUnknown))
	line("rolled back", r.RolledBack, fmt.Sprintf("%d found committed, %d delivered", r.RolledBackCommitted, r.RolledBackDelivered))
	line("delivered (consumer)", r.Delivered, fmt.Sprintf("%d deliveries", r.Deliveries))
	line("duplicates at the broker", r.BrokerDuplicates, fmt.Sprintf("deliveries beyond the first; %d of a message handled before, the others after a failed attempt", r.AfterAck))
	line("applied once", r.AppliedOnce, "")
	line("duplicate effects", r.DuplicateEffects, "must be 0")
	line("dead-lettered", r.DeadLettered, fmt.Sprintf("%d refused, %d of the queue's messages", r.DeadLetteredRefused, r.DeadLetteredGood))
	line("lost", r.Lost, fmt.Sprintf("committed, not applied, not dead-lettered, not in the outbox; %d of them refused", r.LostRefused))
	line("stuck rows", r.StuckOutgoing+r.StuckIncoming, fmt.Sprintf("outgoing %d (%d of them refused), incoming not Handled %d",
		r.StuckOutgoing, r.StuckRefused, r.StuckIncoming))
	line("commit -> applied", fmt.Sprintf("p50 %.1f ms, p99 %.1f ms, max %.1f ms", r.LatencyP50, r.LatencyP99, r.LatencyMax), "")
	line("relay failed starts", r.RelayFailedStarts, "restarted by the soak")
	fmt.Fprintf(&b, "\n  %-12s %6s %9s %14s %14s\n", "fault", "count", "measured", "recovery p50", "recovery max")
	for _, f := range r.Faults {
		fmt.Fprintf(&b, "  %-12s %6d %9d %11.0f ms %11.0f ms\n", f.Kind, f.Count, f.Measured, f.RecoveryMedian, f.RecoveryMax)
	}
	if p := r.problems(); len(p) > 0 {
		fmt.Fprintf(&b, "\nFAIL: %s\n", strings.Join(p, ", "))
	} else {
		fmt.Fprintf(&b, "\nPASS: nothing lost, no duplicate effect, no stuck row\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeJSON writes the figures to path (nothing when path is empty).
func (r *soakReport) writeJSON(path string) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("--json: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--json: %w", err)
	}
	return nil
}
