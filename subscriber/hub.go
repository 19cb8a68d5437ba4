package subscriber

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/durability"
)

// A hub is what every Subscriber of one database handle shares: the default node (one id
// and one lock for the process, as a Jasper node has) and one LISTEN connection whose
// notifications are fanned out to the subscriptions of the notified schema and topic. So
// hundreds of subscribers cost two connections, not hundreds. It logs with the logger of
// the Subscriber that created it.
type hub struct {
	db     database.DB
	logger watermill.LoggerAdapter
	key    any // key in hubs, nil when not shared

	refs int // guarded by hubsMu

	nodeMu   sync.Mutex
	node     *durability.Node
	nodeDone chan struct{} // closed when checkNode returns

	mu        sync.Mutex
	wanted    map[string]*channelSubs // LISTEN channel -> subscriptions
	listening map[string]bool         // channels LISTENed on the current connection
	failed    map[string]error        // channels whose LISTEN failed on the current connection
	changed   chan struct{}           // interrupts the wait when wanted changes
	listenGen chan struct{}           // closed (and replaced) after each LISTEN round
	started   bool
	ctx       context.Context // cancelled when the last Subscriber releases the hub
	stop      context.CancelFunc
	done      chan struct{} // closed when run returns
}

type channelSubs struct {
	listen  string // the LISTEN statement (sqldialect)
	byTopic map[string]map[*subscription]struct{}
}

// nodeCheckInterval is how often the shared node's lock is checked (and retaken if the
// connection holding it was lost).
const nodeCheckInterval = 10 * time.Second

var (
	hubsMu sync.Mutex
	hubs   = map[any]*hub{}
)

// acquireHub returns the hub of db, creating it on first use. releaseHub gives it back.
func acquireHub(db database.DB, logger watermill.LoggerAdapter) *hub {
	hubsMu.Lock()
	defer hubsMu.Unlock()
	var key any
	if t := reflect.TypeOf(db); t != nil && t.Comparable() {
		key = db
		if h := hubs[key]; h != nil {
			h.refs++
			return h
		}
	}
	h := &hub{
		db:        db,
		logger:    logger,
		key:       key,
		refs:      1,
		wanted:    map[string]*channelSubs{},
		listening: map[string]bool{},
		failed:    map[string]error{},
		changed:   make(chan struct{}, 1),
		listenGen: make(chan struct{}),
		done:      make(chan struct{}),
	}
	h.ctx, h.stop = context.WithCancel(context.Background())
	if key != nil {
		hubs[key] = h
	}
	return h
}

func releaseHub(h *hub) error {
	hubsMu.Lock()
	h.refs--
	last := h.refs == 0
	if last && h.key != nil {
		delete(hubs, h.key)
	}
	hubsMu.Unlock()
	if !last {
		return nil
	}
	h.mu.Lock()
	started := h.started
	h.stop()
	h.mu.Unlock()
	if started {
		<-h.done
	}
	h.nodeMu.Lock()
	defer h.nodeMu.Unlock()
	if h.node != nil {
		<-h.nodeDone
		return h.node.Close()
	}
	return nil
}

// sharedNode returns the hub's node, creating it (and taking its lock) on first use.
func (h *hub) sharedNode(ctx context.Context) (*durability.Node, error) {
	h.nodeMu.Lock()
	defer h.nodeMu.Unlock()
	if h.node != nil {
		return h.node, nil
	}
	n, err := durability.NewNode(ctx, h.db, durability.NodeConfig{}, h.logger)
	if err != nil {
		return nil, err
	}
	h.node = n
	h.nodeDone = make(chan struct{})
	go h.checkNode(n)
	return n, nil
}

// listen registers sub for wake-ups on channel (LISTENed with listenSQL) and topic, and
// waits (up to ctx) until the channel is LISTENed, so that nothing committed after listen
// returns goes unnoticed. It returns an error when LISTEN could not be run; the
// subscription then relies on polling. A dialect without notifications (SQL Server) has no
// channel (""): nothing is LISTENed, no connection is taken, and the subscription polls.
func (h *hub) listen(ctx context.Context, channel, listenSQL, topic string, sub *subscription) error {
	if channel == "" || listenSQL == "" {
		return nil
	}
	h.mu.Lock()
	if h.ctx.Err() != nil {
		h.mu.Unlock()
		return errors.New("subscriber closed")
	}
	cs := h.wanted[channel]
	if cs == nil {
		cs = &channelSubs{listen: listenSQL, byTopic: map[string]map[*subscription]struct{}{}}
		h.wanted[channel] = cs
	}
	subs := cs.byTopic[topic]
	if subs == nil {
		subs = map[*subscription]struct{}{}
		cs.byTopic[topic] = subs
	}
	subs[sub] = struct{}{}
	if !h.started {
		h.started = true
		go h.run()
	}
	for {
		if h.listening[channel] {
			h.mu.Unlock()
			return nil
		}
		if err := h.failed[channel]; err != nil {
			h.mu.Unlock()
			return err
		}
		gen := h.listenGen
		h.mu.Unlock()
		select {
		case h.changed <- struct{}{}:
		default:
		}
		select {
		case <-gen:
		case <-ctx.Done():
			return ctx.Err()
		case <-h.ctx.Done():
			return errors.New("subscriber closed")
		}
		h.mu.Lock()
	}
}

// unlisten removes sub from the wake-up lists. The channel stays LISTENed until the
// connection is renewed; notifications nobody wants are dropped.
func (h *hub) unlisten(channel, topic string, sub *subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cs := h.wanted[channel]
	if cs == nil {
		return
	}
	if subs := cs.byTopic[topic]; subs != nil {
		delete(subs, sub)
		if len(subs) == 0 {
			delete(cs.byTopic, topic)
		}
	}
	if len(cs.byTopic) == 0 {
		delete(h.wanted, channel)
	}
}

// dispatch wakes the subscriptions a notification is for: those of its topic (the
// payload), or every subscription of the channel when the payload is empty.
func (h *hub) dispatch(channel, topic string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cs := h.wanted[channel]
	if cs == nil {
		return
	}
	if topic != "" {
		for sub := range cs.byTopic[topic] {
			sub.wakeUp()
		}
		return
	}
	for _, subs := range cs.byTopic {
		for sub := range subs {
			sub.wakeUp()
		}
	}
}

func (h *hub) wakeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, cs := range h.wanted {
		for _, subs := range cs.byTopic {
			for sub := range subs {
				sub.wakeUp()
			}
		}
	}
}

// endListenRound publishes the outcome of a LISTEN round to the waiting subscriptions.
func (h *hub) endListenRound() {
	close(h.listenGen)
	h.listenGen = make(chan struct{})
}

// run owns the LISTEN connection: it LISTENs to every wanted channel, waits for
// notifications and dispatches them, reconnects after errors (waking every subscription,
// since notifications may have been missed meanwhile) and checks the shared node's lock.
func (h *hub) run() {
	defer close(h.done)
	stopCtx := h.ctx
	var conn database.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close(true) // drops the LISTENs with the session
		}
	}()
	broken := func(err error) {
		if stopCtx.Err() == nil {
			h.logger.Error("Subscriber notification connection failed, reconnecting (subscriptions poll meanwhile)", err, nil)
		}
		if conn != nil {
			_ = conn.Close(true)
			conn = nil
		}
		h.mu.Lock()
		clear(h.listening)
		h.mu.Unlock()
	}
	retry := time.Duration(0)
	fresh := false // conn is new: wake every subscription once its channels are LISTENed
	for {
		if retry > 0 {
			select {
			case <-stopCtx.Done():
				return
			case <-time.After(retry):
			}
		}
		if stopCtx.Err() != nil {
			return
		}
		if conn == nil {
			c, err := h.db.Acquire(stopCtx)
			if err != nil {
				h.failAll(err)
				broken(err)
				retry = DefaultRetryInterval
				continue
			}
			conn = c
			fresh = true
			h.mu.Lock()
			clear(h.failed)
			h.mu.Unlock()
		}
		retry = 0
		// LISTEN to the channels wanted and not yet listened to.
		h.mu.Lock()
		todo := map[string]string{}
		for ch, cs := range h.wanted {
			if !h.listening[ch] {
				todo[ch] = cs.listen
			}
		}
		h.mu.Unlock()
		var listenErr error
		for ch, stmt := range todo {
			if _, err := conn.Exec(stopCtx, stmt); err != nil {
				listenErr = err
				break
			}
			h.mu.Lock()
			h.listening[ch] = true
			h.mu.Unlock()
		}
		if listenErr != nil {
			h.failAll(listenErr)
			broken(listenErr)
			retry = DefaultRetryInterval
			continue
		}
		h.mu.Lock()
		h.endListenRound()
		h.mu.Unlock()
		if fresh {
			// Notifications sent while there was no connection (or before the LISTENs on
			// this one) are lost: every subscription looks again, now that it will be
			// notified of what comes next.
			fresh = false
			h.wakeAll()
		}

		// Wait for notifications until the wanted channels change or the hub stops.
		// Interrupting a wait leaves a pgx connection usable.
		waitCtx, cancelWait := context.WithCancel(stopCtx)
		stopWatch := make(chan struct{})
		go func() {
			select {
			case <-h.changed:
				cancelWait()
			case <-stopWatch:
			}
		}()
		var err error
		for err == nil {
			var channel, payload string
			channel, payload, err = conn.WaitForNotification(waitCtx)
			if err == nil {
				h.dispatch(channel, payload)
			}
		}
		interrupted := waitCtx.Err() != nil
		close(stopWatch)
		cancelWait()
		if !interrupted {
			broken(err)
			retry = DefaultRetryInterval
		}
	}
}

// failAll tells the subscriptions waiting for a LISTEN that it failed.
func (h *hub) failAll(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.wanted {
		if !h.listening[ch] {
			h.failed[ch] = fmt.Errorf("LISTEN %s: %w", ch, err)
		}
	}
	h.endListenRound()
}

// checkNode checks the shared node's lock periodically, taking it again when the
// connection holding it was lost, until the hub stops.
func (h *hub) checkNode(n *durability.Node) {
	defer close(h.nodeDone)
	t := time.NewTicker(nodeCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(h.ctx, nodeCheckInterval)
		err := n.Check(ctx)
		cancel()
		if err != nil && h.ctx.Err() == nil {
			h.logger.Error("Subscriber node lock check failed", err, watermill.LogFields{"node_id": n.ID()})
		}
	}
}
