package logrepl

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/watermill-jasper/watermill-jasper/internal/layout"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
)

// confirmGap is the shortest time between two status updates sent because Confirm advanced
// (status updates are also sent every StatusInterval, when the server asks, on Flush and on
// Close).
const confirmGap = 50 * time.Millisecond

// Dial opens a replication connection (replication=database) to the database of dsn, for
// Start, WaitForSlot, and for Setup, Drop and List. A role without REPLICATION is refused
// with ErrNoReplicationRight.
func Dial(ctx context.Context, dsn string) (*pgconn.PgConn, error) {
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("logrepl: %w", err)
	}
	pc.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		if pe, ok := pgError(err); ok && pe.Code == codeInsufficientPriv {
			return nil, fmt.Errorf("%w (the server said: %s)", noReplicationRight(pc.User), oneLine(pe.Message))
		}
		return nil, fmt.Errorf("logrepl: connect for replication: %w", err)
	}
	return conn, nil
}

// Reader streams the committed inserts into jasper_outgoing_envelopes from a replication
// slot, one transaction at a time, in commit order (see the package doc for the confirm
// contract). It owns its connection: Close closes it. Next is for one goroutine; Confirm,
// Flush and Close may be called from any.
type Reader struct {
	conn   *pgconn.PgConn
	cfg    Config
	pid    uint32
	prefix string // cfg.MessagePrefix(), compared with every logical decoding message

	out       chan Tx       // decoded transactions, up to readAhead
	queued    atomic.Int64  // rows of the transactions in out
	taken     chan struct{} // Next took a transaction
	confirmed atomic.Uint64
	reported  atomic.Uint64
	serverEnd atomic.Uint64 // the server's WAL end, from its keepalives and data messages
	kickCh    chan struct{}
	flushCh   chan chan struct{}
	ctx       context.Context
	stop      context.CancelFunc
	done      chan struct{}
	err       error // set before done is closed

	mu         sync.Mutex
	recvCancel context.CancelFunc

	closeOnce sync.Once
	closeErr  error

	// Owned by the loop goroutine (and by Close after the loop ended).
	dec         *decoder
	relations   map[uint32]*relation
	cur         *Tx // the transaction being received (between Begin and Commit)
	pending     *Tx // a committed transaction waiting for Next
	handed      LSN // EndLSN of the last transaction handed to Next (put in out)
	idle        LSN // a position every transaction before which was received and confirmed
	replyWanted bool
	lastSent    time.Time
	nextStatus  time.Time
}

// Start checks the server, the table, the publication and the slot (two SQL statements),
// then starts streaming the slot on conn, a replication connection (Dial), from the slot's
// confirmed position. A slot streamed by another process is refused with ErrSlotInUse; a
// missing or invalidated slot with ErrSlotMissing or ErrSlotInvalidated. On success the
// Reader owns conn (Close closes it); on error conn is still the caller's (usable after a
// refusal; when ctx ended while a command was on the wire it may be left in the middle of
// it: close it then).
func Start(ctx context.Context, conn *pgconn.PgConn, cfg Config) (*Reader, error) {
	cfg, err := cfg.Normalized()
	if err != nil {
		return nil, err
	}
	s, err := inspect(ctx, conn, cfg)
	if err != nil {
		return nil, err
	}
	for _, check := range []func() error{
		s.checkServer,
		func() error { return s.checkTable(cfg) },
		func() error { return s.checkPublication(cfg) },
		func() error { return s.checkSlot(cfg, true) },
	} {
		if err := check(); err != nil {
			return nil, err
		}
	}
	return startStream(ctx, conn, cfg)
}

// WaitForSlot is Start for a stand-by: while the slot is in use by another reader it tries
// START_REPLICATION again every interval (only that replication command, no SQL statement),
// until it gets the slot, another error, or ctx ends (the error then wraps both ctx's error
// and ErrSlotInUse, and conn is still usable: an attempt on the wire when ctx ends is let
// finish, and when it got the slot, the reader is returned). A reader that was killed frees the
// slot as soon as PostgreSQL ended its backend (at once for pg_terminate_backend or a closed
// connection; after wal_sender_timeout or the TCP keepalive timeout for a vanished host).
func WaitForSlot(ctx context.Context, conn *pgconn.PgConn, cfg Config, interval time.Duration) (*Reader, error) {
	if interval <= 0 {
		return nil, fmt.Errorf("%w: WaitForSlot interval must be positive, not %s", ErrInvalidConfig, interval)
	}
	cfg, err := cfg.Normalized()
	if err != nil {
		return nil, err
	}
	r, err := Start(ctx, conn, cfg)
	for errors.Is(err, ErrSlotInUse) {
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("logrepl: wait for slot %s: %w (last: %w)", cfg.Slot, ctx.Err(), err)
		case <-t.C:
		}
		// The attempt runs to its end even if ctx ends meanwhile, so that conn is never left
		// in the middle of a command.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), attemptTimeout)
		r, err = startStream(actx, conn, cfg)
		cancel()
	}
	return r, err
}

// attemptTimeout bounds one START_REPLICATION attempt of a stand-by.
const attemptTimeout = 30 * time.Second

// startStream sends START_REPLICATION and starts the reader's loop.
func startStream(ctx context.Context, conn *pgconn.PgConn, cfg Config) (*Reader, error) {
	args := []string{
		"proto_version '1'",
		"publication_names " + quoteLiteral(quoteIdent(cfg.Publication)),
		"binary 'true'",
		"messages 'true'", // the table-less outbox (PostgreSQL 14 and later, as Start checks)
	}
	sql := "START_REPLICATION SLOT " + cfg.Slot + " LOGICAL 0/0 (" + strings.Join(args, ", ") + ")"
	if err := startReplication(ctx, conn, sql); err != nil {
		return nil, mapStartError(err, cfg)
	}
	lctx, stop := context.WithCancel(context.Background())
	r := &Reader{
		conn: conn, cfg: cfg, pid: conn.PID(), prefix: cfg.MessagePrefix(),
		out: make(chan Tx, readAhead), taken: make(chan struct{}, 1),
		kickCh: make(chan struct{}, 1), flushCh: make(chan chan struct{}, 16),
		ctx: lctx, stop: stop, done: make(chan struct{}),
		dec: newDecoder(), relations: map[uint32]*relation{},
	}
	r.nextStatus = time.Now().Add(cfg.StatusInterval)
	go r.run()
	return r, nil
}

// startReplication sends a START_REPLICATION command and waits for the copy-both mode. On an
// error response it reads on to ReadyForQuery, so that the connection stays usable (a
// stand-by tries again on it).
func startReplication(ctx context.Context, conn *pgconn.PgConn, sql string) error {
	if conn.IsClosed() {
		return errors.New("connection closed")
	}
	conn.Frontend().SendQuery(&pgproto3.Query{String: sql})
	if err := conn.Frontend().Flush(); err != nil {
		return fmt.Errorf("send START_REPLICATION: %w", err)
	}
	var failed error
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			if failed != nil {
				return failed
			}
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.CopyBothResponse:
			return nil
		case *pgproto3.ErrorResponse:
			failed = pgconn.ErrorResponseToPgError(m)
		case *pgproto3.ReadyForQuery:
			if failed == nil {
				failed = errors.New("START_REPLICATION ended without streaming")
			}
			return failed
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus, *pgproto3.CommandComplete,
			*pgproto3.RowDescription, *pgproto3.DataRow, *pgproto3.EmptyQueryResponse:
		default:
			return fmt.Errorf("START_REPLICATION: unexpected message %T", msg)
		}
	}
}

// PID is the process id of the reader's backend (the slot's active_pid).
func (r *Reader) PID() uint32 { return r.pid }

// Slot is the name of the slot the reader streams.
func (r *Reader) Slot() string { return r.cfg.Slot }

// Next returns the next committed transaction that inserted rows into the outbox table, in
// commit order, waiting for one. Transactions that inserted nothing there and emitted no envelope (Tx.Emitted) are skipped,
// rolled-back ones never appear. When the stream failed or the reader was closed it returns
// the error (ErrClosed after Close); a caller then closes the reader and starts again on a
// new connection, from the slot's confirmed position.
func (r *Reader) Next(ctx context.Context) (Tx, error) {
	select {
	case tx := <-r.out:
		r.took(tx)
		return tx, nil
	case <-r.done:
		return Tx{}, r.err
	case <-ctx.Done():
		return Tx{}, ctx.Err()
	}
}

// TryNext returns the next committed transaction when one was received already, without
// waiting (a caller batching transactions takes what is ready after Next).
func (r *Reader) TryNext() (Tx, bool) {
	select {
	case tx := <-r.out:
		r.took(tx)
		return tx, true
	default:
		return Tx{}, false
	}
}

// Ready is how many decoded transactions wait for Next (TryNext takes them at once).
func (r *Reader) Ready() int { return len(r.out) }

// readAhead is how many decoded transactions wait for Next at most, and maxQueuedRows how
// many rows they hold at most (more only when one transaction alone has more): while the
// caller is busy, the reader decodes ahead, so that the caller then takes a whole batch of
// what arrived meanwhile instead of one transaction at a time.
const (
	readAhead     = 64
	maxQueuedRows = 10000
)

// took accounts for tx taken by Next or TryNext, and lets the loop decode ahead again.
func (r *Reader) took(tx Tx) {
	r.queued.Add(-int64(tx.Size()))
	select {
	case r.taken <- struct{}{}:
	default:
	}
}

// Confirm records that everything before lsn is done with: pass a Tx's EndLSN once its rows
// were sent, the broker confirmed them and their delete committed. Positions only move
// forward (a smaller lsn is ignored); a position past the last transaction received is
// held at it (pass only the EndLSN of a transaction Next or TryNext returned). The reader reports the position to the server in its next standby status
// update (within about 50ms, or at Flush or Close); PostgreSQL then never sends those
// transactions again and may recycle the WAL before them.
func (r *Reader) Confirm(lsn LSN) {
	for {
		old := r.confirmed.Load()
		if uint64(lsn) <= old {
			return
		}
		if r.confirmed.CompareAndSwap(old, uint64(lsn)) {
			break
		}
	}
	r.kick()
}

// Confirmed is the highest position given to Confirm.
func (r *Reader) Confirmed() LSN { return LSN(r.confirmed.Load()) }

// ServerWALEnd is the end of the server's write-ahead log as its last keepalive or data
// message gave it: ServerWALEnd - Confirmed is how far (in bytes) the slot's consumer is
// behind, without a statement.
func (r *Reader) ServerWALEnd() LSN { return LSN(r.serverEnd.Load()) }

// Reported is the flush position of the last standby status update sent to the server.
func (r *Reader) Reported() LSN { return LSN(r.reported.Load()) }

// Flush sends a standby status update now, with the confirmed position, and returns once it
// was written to the connection. The server has processed it once the slot's
// confirmed_flush_lsn shows it (List); a connection that dies before (a reset discards what
// the server had not read) loses the confirmation, which only causes redelivery.
func (r *Reader) Flush(ctx context.Context) error {
	ack := make(chan struct{})
	select {
	case r.flushCh <- ack:
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
	r.kick()
	select {
	case <-ack:
		return nil
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Done is closed when the reader's stream ended (Close, or an error: Err).
func (r *Reader) Done() <-chan struct{} { return r.done }

// Err is why the stream ended (nil while it runs; ErrClosed after Close).
func (r *Reader) Err() error {
	select {
	case <-r.done:
		return r.err
	default:
		return nil
	}
}

// Close sends a last standby status update with the confirmed position (when the connection
// still works), ends the stream (CopyDone, waiting for the server's answer, so that the
// server processed the update when Close returns nil) and closes the connection. After a
// Close that returned nil the slot is free at once (the server released it when the stream
// ended); after a failed stream, once PostgreSQL ended the backend. Close is idempotent.
func (r *Reader) Close() error {
	r.closeOnce.Do(func() {
		r.stop()
		r.kick()
		<-r.done
		if r.conn.IsClosed() {
			return
		}
		if !errors.Is(r.err, ErrClosed) {
			// The stream failed: nothing more to say to the server.
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = r.conn.Close(ctx)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := r.sendStatus(r.flushPos(), false)
		if err == nil {
			err = r.endCopy(ctx)
		}
		if cerr := r.conn.Close(ctx); err == nil {
			err = cerr
		}
		if err != nil {
			r.closeErr = fmt.Errorf("logrepl: slot %s: close: %w", r.cfg.Slot, err)
		}
	})
	return r.closeErr
}

// endCopy ends the replication stream as pg_recvlogical does: CopyDone, then it reads (and
// drops) what the server still sends up to ReadyForQuery. The server processes messages in
// order, so when it answers, it has processed the last status update; and no unread data is
// left on the socket, whose close would then send a reset that may discard it.
func (r *Reader) endCopy(ctx context.Context) error {
	r.conn.Frontend().Send(&pgproto3.CopyDone{})
	if err := r.conn.Frontend().Flush(); err != nil {
		return err
	}
	for {
		msg, err := r.conn.ReceiveMessage(ctx)
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.ReadyForQuery:
			return nil
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(m)
		}
	}
}

// kick wakes the loop: out of a receive, or out of waiting to hand a transaction over.
func (r *Reader) kick() {
	select {
	case r.kickCh <- struct{}{}:
	default:
	}
	r.mu.Lock()
	if r.recvCancel != nil {
		r.recvCancel()
	}
	r.mu.Unlock()
}

func (r *Reader) run() {
	defer close(r.done)
	r.err = r.loop()
	r.stop()
}

// loop is the reader's only goroutine using the connection: it receives the stream, decodes
// transactions, hands them to Next, and sends standby status updates.
func (r *Reader) loop() error {
	var waiters []chan struct{}
	for {
		if r.ctx.Err() != nil {
			return ErrClosed
		}
	drain:
		for {
			select {
			case ack := <-r.flushCh:
				waiters = append(waiters, ack)
			default:
				break drain
			}
		}
		now := time.Now()
		flush := r.flushPos()
		if !now.Before(r.nextStatus) || len(waiters) > 0 || r.replyWanted ||
			(flush > LSN(r.reported.Load()) && now.Sub(r.lastSent) >= confirmGap) {
			if err := r.sendStatus(flush, false); err != nil {
				return fmt.Errorf("logrepl: slot %s: send standby status update: %w", r.cfg.Slot, err)
			}
			for _, w := range waiters {
				close(w)
			}
			waiters = nil
		}
		wake := r.nextStatus
		if r.flushPos() > LSN(r.reported.Load()) {
			if t := r.lastSent.Add(confirmGap); t.Before(wake) {
				wake = t
			}
		}
		if r.pending != nil {
			out := r.out
			if q := r.queued.Load(); q > 0 && q+int64(r.pending.Size()) > maxQueuedRows {
				out = nil // enough rows wait: until Next takes some
			}
			t := time.NewTimer(time.Until(wake))
			select {
			case out <- *r.pending:
				r.queued.Add(int64(r.pending.Size()))
				r.handed = r.pending.EndLSN
				r.pending = nil
			case <-r.taken:
			case <-t.C:
			case <-r.kickCh:
			case <-r.ctx.Done():
			}
			t.Stop()
			continue
		}
		msg, err := r.receive(wake)
		if err != nil {
			if r.ctx.Err() != nil {
				return ErrClosed
			}
			if err == errWoken {
				continue
			}
			return fmt.Errorf("logrepl: slot %s: replication stream ended: %w", r.cfg.Slot, err)
		}
		if err := r.handle(msg); err != nil {
			return err
		}
	}
}

var errWoken = errors.New("woken")

// receive waits for the next message until wake (or a kick).
func (r *Reader) receive(wake time.Time) (pgproto3.BackendMessage, error) {
	rctx, cancel := context.WithDeadline(r.ctx, wake)
	defer cancel()
	r.mu.Lock()
	r.recvCancel = cancel
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.recvCancel = nil
		r.mu.Unlock()
	}()
	select {
	case <-r.kickCh:
		cancel()
	default:
	}
	msg, err := r.conn.ReceiveMessage(rctx)
	if err != nil && rctx.Err() != nil && r.ctx.Err() == nil && (pgconn.Timeout(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) && !r.conn.IsClosed() {
		return nil, errWoken
	}
	return msg, err
}

// caughtUp: every transaction received was handed over and confirmed, and none is being
// received.
func (r *Reader) caughtUp() bool {
	return r.cur == nil && r.pending == nil && LSN(r.confirmed.Load()) >= r.handed
}

// flushPos is the position to report as flushed: the confirmed position, never past the
// last transaction handed over, or, when caught up, the furthest position the server said
// it had sent (so that a slot whose table is quiet does not hold back the WAL of the rest of
// the database). It never goes back.
func (r *Reader) flushPos() LSN {
	f := min(LSN(r.confirmed.Load()), r.handed)
	if r.caughtUp() {
		f = max(f, r.idle)
	}
	return max(f, LSN(r.reported.Load()))
}

// sendStatus sends a standby status update reporting flush as written, flushed and applied.
func (r *Reader) sendStatus(flush LSN, reply bool) error {
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), r.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: flush, WALFlushPosition: flush, WALApplyPosition: flush, ReplyRequested: reply,
	})
	if err != nil {
		return err
	}
	r.reported.Store(uint64(flush))
	r.lastSent = time.Now()
	r.nextStatus = r.lastSent.Add(r.cfg.StatusInterval)
	r.replyWanted = false
	return nil
}

// handle processes one message of the stream.
func (r *Reader) handle(msg pgproto3.BackendMessage) error {
	switch m := msg.(type) {
	case *pgproto3.CopyData:
		if len(m.Data) == 0 {
			return nil
		}
		switch m.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			k, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
			if err != nil {
				return fmt.Errorf("logrepl: slot %s: %w", r.cfg.Slot, err)
			}
			r.serverEnd.Store(max(r.serverEnd.Load(), uint64(k.ServerWALEnd)))
			if r.caughtUp() {
				r.idle = max(r.idle, k.ServerWALEnd)
			}
			if k.ReplyRequested {
				r.replyWanted = true
			}
		case pglogrepl.XLogDataByteID:
			x, err := pglogrepl.ParseXLogData(m.Data[1:])
			if err != nil {
				return fmt.Errorf("logrepl: slot %s: %w", r.cfg.Slot, err)
			}
			r.serverEnd.Store(max(r.serverEnd.Load(), uint64(x.ServerWALEnd)))
			return r.logical(x.WALData)
		}
		return nil
	case *pgproto3.CopyDone:
		return fmt.Errorf("logrepl: slot %s: the server ended the replication stream", r.cfg.Slot)
	case *pgproto3.ErrorResponse:
		return fmt.Errorf("logrepl: slot %s: %w", r.cfg.Slot, pgconn.ErrorResponseToPgError(m))
	}
	return nil
}

// logical processes one pgoutput message.
func (r *Reader) logical(data []byte) error {
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return fmt.Errorf("logrepl: slot %s: decode pgoutput message: %w", r.cfg.Slot, err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		r.relations[m.RelationID] = &relation{
			namespace: m.Namespace, name: m.RelationName, columns: m.Columns,
			outbox: m.Namespace == r.cfg.Schema && m.RelationName == layout.OutgoingTable,
		}
	case *pglogrepl.BeginMessage:
		r.cur = &Tx{Xid: m.Xid, CommitLSN: m.FinalLSN, CommitTime: m.CommitTime}
	case *pglogrepl.InsertMessage:
		rel, ok := r.relations[m.RelationID]
		if !ok {
			return fmt.Errorf("logrepl: slot %s: insert into relation %d before its Relation message", r.cfg.Slot, m.RelationID)
		}
		if !rel.outbox || r.cur == nil {
			return nil
		}
		r.cur.Rows = append(r.cur.Rows, r.dec.decodeRow(rel, m.Tuple))
	case *pglogrepl.LogicalDecodingMessage:
		if !m.Transactional || r.cur == nil || m.Prefix != r.prefix {
			return nil // not an envelope of this outbox (this library writes transactional ones only)
		}
		var rw Row
		rw.Envelope, rw.Err = row.DecodeEmitted(m.Content)
		if rw.Err != nil {
			// Kept whole for a dead letter: the content as the body, an id from its position
			// when none could be read.
			rw.Err = fmt.Errorf("logrepl: message at %s with prefix %s: %w", m.LSN, m.Prefix, rw.Err)
			rw.Body = append([]byte(nil), m.Content...)
			if rw.ID == uuid.Nil {
				rw.ID = uuid.NewSHA1(uuid.NameSpaceOID, []byte(r.cfg.Slot+"/"+m.LSN.String()))
			}
		}
		r.cur.Emitted = append(r.cur.Emitted, rw)
	case *pglogrepl.CommitMessage:
		tx := r.cur
		r.cur = nil
		if tx == nil {
			return fmt.Errorf("logrepl: slot %s: commit without begin", r.cfg.Slot)
		}
		tx.CommitLSN, tx.EndLSN, tx.CommitTime = m.CommitLSN, m.TransactionEndLSN, m.CommitTime
		if tx.Size() == 0 {
			if r.caughtUp() {
				r.idle = max(r.idle, m.TransactionEndLSN)
			}
			return nil
		}
		for i := range tx.Rows {
			tx.Rows[i].CommitLSN, tx.Rows[i].EndLSN, tx.Rows[i].CommitTime = tx.CommitLSN, tx.EndLSN, tx.CommitTime
		}
		for i := range tx.Emitted {
			e := &tx.Emitted[i]
			e.CommitLSN, e.EndLSN, e.CommitTime = tx.CommitLSN, tx.EndLSN, tx.CommitTime
			t := tx.CommitTime
			e.WrittenAt = &t
		}
		r.pending = tx
	}
	return nil
}
