package bench

// Instruments of the inbox benchmark: round trips counted at the socket, and the time spent
// in pool acquire, BEGIN (alone or pipelined with the first statement) and COMMIT, recorded
// only while a latency leg runs.

import (
	"context"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// countingConn counts the writes to a PostgreSQL socket. pgx writes each request (a
// statement, a pipelined batch, a Sync) in one write and waits for the answer, so writes are
// round trips.
type writeCountingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c writeCountingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// inboxTracer times pool acquires, BEGINs and COMMITs into the current recording, if any.
type inboxTracer struct {
	current atomic.Pointer[phaseRec]
	mu      sync.Mutex
}

// phaseRec is what the tracer recorded for one variant.
type phaseRec struct {
	acquire, begin, commit []time.Duration // begin: BEGIN alone, or pipelined with the mark
	gcs                    uint32
	gcPauseMax             time.Duration
	gc0                    runtime.MemStats
}

type inboxTraceKey struct{}

type inboxTraceStart struct {
	t    time.Time
	rec  *phaseRec
	kind int // 1 begin, 2 commit, 3 acquire
}

func (tr *inboxTracer) start(ctx context.Context, kind int) context.Context {
	if kind == 0 {
		return ctx
	}
	rec := tr.current.Load()
	if rec == nil {
		return ctx
	}
	return context.WithValue(ctx, inboxTraceKey{}, inboxTraceStart{t: time.Now(), rec: rec, kind: kind})
}

func (tr *inboxTracer) end(ctx context.Context) {
	s, ok := ctx.Value(inboxTraceKey{}).(inboxTraceStart)
	if !ok {
		return
	}
	d := time.Since(s.t)
	tr.mu.Lock()
	switch s.kind {
	case 1:
		s.rec.begin = append(s.rec.begin, d)
	case 2:
		s.rec.commit = append(s.rec.commit, d)
	case 3:
		s.rec.acquire = append(s.rec.acquire, d)
	}
	tr.mu.Unlock()
}

func sqlKind(sql string) int {
	switch strings.ToLower(strings.TrimSpace(sql)) {
	case "begin":
		return 1
	case "commit":
		return 2
	}
	return 0
}

func (tr *inboxTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return tr.start(ctx, sqlKind(d.SQL))
}
func (tr *inboxTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	tr.end(ctx)
}
func (tr *inboxTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	kind := 0
	if d.Batch != nil && len(d.Batch.QueuedQueries) > 0 {
		kind = sqlKind(d.Batch.QueuedQueries[0].SQL)
	}
	return tr.start(ctx, kind)
}
func (tr *inboxTracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (tr *inboxTracer) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchEndData) {
	tr.end(ctx)
}
func (tr *inboxTracer) TraceAcquireStart(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireStartData) context.Context {
	return tr.start(ctx, 3)
}
func (tr *inboxTracer) TraceAcquireEnd(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireEndData) {
	tr.end(ctx)
}

// record makes rec the current recording (nil: none), and counts the garbage collections
// while it is.
func (tr *inboxTracer) record(rec *phaseRec) {
	if rec != nil {
		runtime.ReadMemStats(&rec.gc0)
		tr.current.Store(rec)
		return
	}
	old := tr.current.Swap(nil)
	if old == nil {
		return
	}
	var gc1 runtime.MemStats
	runtime.ReadMemStats(&gc1)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	old.gcs += gc1.NumGC - old.gc0.NumGC
	for i := old.gc0.NumGC; i < gc1.NumGC && gc1.NumGC-i <= 256; i++ {
		old.gcPauseMax = max(old.gcPauseMax, time.Duration(gc1.PauseNs[i%256]))
	}
}

// InboxPhases is where the time of a latency leg went: percentiles of each phase as the
// driver saw it, and the garbage collections during the leg.
type InboxPhases struct {
	AcquireP99, BeginP99, CommitP99 time.Duration
	CommitP50                       time.Duration
	GCs                             uint32
	GCPauseMax                      time.Duration
}

func (rec *phaseRec) phases() InboxPhases {
	return InboxPhases{
		AcquireP99: percentile(rec.acquire, 0.99), BeginP99: percentile(rec.begin, 0.99),
		CommitP99: percentile(rec.commit, 0.99), CommitP50: percentile(rec.commit, 0.50),
		GCs: rec.gcs, GCPauseMax: rec.gcPauseMax,
	}
}

// cpuPressure reads the total microseconds some task waited for a CPU (Linux PSI); ok is
// false where /proc/pressure/cpu does not exist.
func cpuPressure() (us int64, ok bool) {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	_, total, found := strings.Cut(line, "total=")
	if !found {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(total), 10, 64)
	return n, err == nil
}
