package durability

import (
	"context"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/watermill-jasper/watermill-jasper/internal/backoff"
)

// wakers are the components of the agent's schema that claim envelopes, to wake when there
// may be some: forwarders (outgoing) and subscriptions (incoming, by topic). A wake function
// must not block: it only signals.
type wakers struct {
	mu       sync.Mutex
	outgoing map[*func()]struct{}
	// notifiedWhile gates the notifications of an outgoing wake function (OutgoingWake
	// NotifiedWhile); a function without a gate is woken by every one.
	notifiedWhile map[*func()]func() bool
	incoming      map[string]map[*func()]struct{}
}

func (w *wakers) init() {
	w.outgoing = map[*func()]struct{}{}
	w.notifiedWhile = map[*func()]func() bool{}
	w.incoming = map[string]map[*func()]struct{}{}
}

// OutgoingWakeOption refines what wakes a function registered with Agent.OnOutgoing.
type OutgoingWakeOption func(w *outgoingWake)

type outgoingWake struct {
	notifiedWhile func() bool
}

// NotifiedWhile makes the notifications of new outgoing envelopes wake the function only
// while cond reports true; hand-backs, recoveries and scheduled releases still wake it
// always. A forwarder that learns of new rows from a replication slot registers with it:
// while it follows the slot, a notification would only make it poll for rows the slot
// brings anyway. cond must not block.
func NotifiedWhile(cond func() bool) OutgoingWakeOption {
	return func(w *outgoingWake) { w.notifiedWhile = cond }
}

// OnOutgoing registers wake, called (it must not block) when new outgoing envelopes may be
// claimable: a notification of a commit, envelopes handed back or released by the agent, or
// unowned envelopes found by its recovery pass. The returned function unregisters it.
// Forwarders register themselves.
func (a *Agent) OnOutgoing(wake func(), opts ...OutgoingWakeOption) (unregister func()) {
	var o outgoingWake
	for _, opt := range opts {
		opt(&o)
	}
	p := &wake
	a.wakers.mu.Lock()
	a.wakers.outgoing[p] = struct{}{}
	if o.notifiedWhile != nil {
		a.wakers.notifiedWhile[p] = o.notifiedWhile
	}
	a.wakers.mu.Unlock()
	return func() {
		a.wakers.mu.Lock()
		delete(a.wakers.outgoing, p)
		delete(a.wakers.notifiedWhile, p)
		a.wakers.mu.Unlock()
	}
}

// OnIncoming registers wake, called (it must not block) when Incoming envelopes of topic may
// be claimable. The returned function unregisters it. Subscriptions register themselves.
func (a *Agent) OnIncoming(topic string, wake func()) (unregister func()) {
	p := &wake
	a.wakers.mu.Lock()
	subs := a.wakers.incoming[topic]
	if subs == nil {
		subs = map[*func()]struct{}{}
		a.wakers.incoming[topic] = subs
	}
	subs[p] = struct{}{}
	a.wakers.mu.Unlock()
	return func() {
		a.wakers.mu.Lock()
		defer a.wakers.mu.Unlock()
		if subs := a.wakers.incoming[topic]; subs != nil {
			delete(subs, p)
			if len(subs) == 0 {
				delete(a.wakers.incoming, topic)
			}
		}
	}
}

// WakeOutgoing wakes the local forwarders, as a notification would.
func (a *Agent) WakeOutgoing() { a.wakers.wakeOutgoing() }

// WakeIncoming wakes the local subscriptions of topic, as a notification would.
func (a *Agent) WakeIncoming(topic string) { a.wakers.wakeIncoming(topic) }

// call calls the wake functions picked under the lock, after releasing it: a wake function
// may then (un)register without deadlocking.
func (w *wakers) call(pick func(add func(map[*func()]struct{}))) {
	var fs []*func()
	w.mu.Lock()
	pick(func(m map[*func()]struct{}) {
		for f := range m {
			fs = append(fs, f)
		}
	})
	w.mu.Unlock()
	for _, f := range fs {
		(*f)()
	}
}

func (w *wakers) wakeOutgoing() {
	w.call(func(add func(map[*func()]struct{})) { add(w.outgoing) })
}

// wakeOutgoingNotified wakes the outgoing functions for a notification: each one whose
// NotifiedWhile condition holds, or that has none.
func (w *wakers) wakeOutgoingNotified() {
	w.call(func(add func(map[*func()]struct{})) {
		if len(w.notifiedWhile) == 0 {
			add(w.outgoing)
			return
		}
		gated := make(map[*func()]struct{}, len(w.outgoing))
		for f := range w.outgoing {
			if cond := w.notifiedWhile[f]; cond == nil || cond() {
				gated[f] = struct{}{}
			}
		}
		add(gated)
	})
}

func (w *wakers) wakeIncoming(topic string) {
	w.call(func(add func(map[*func()]struct{})) { add(w.incoming[topic]) })
}

func (w *wakers) wakeAllIncoming() {
	w.call(func(add func(map[*func()]struct{})) {
		for _, subs := range w.incoming {
			add(subs)
		}
	})
}

func (w *wakers) wakeAll() {
	w.wakeOutgoing()
	w.wakeAllIncoming()
}

// listenBackoff is the wait before taking a LISTEN connection again after a failure.
var listenBackoff = backoff.Policy{Initial: time.Second, Max: 30 * time.Second}

// listen holds the one LISTEN connection of the schema: it LISTENs on the outgoing and
// incoming channels and wakes the registered components on every notification (incoming:
// those of the notified topic). When the connection fails it logs once, wakes everyone
// (notifications may have been missed), and takes a new one with back-off; the components
// poll meanwhile. first is closed after the first attempt, whatever its outcome.
func (a *Agent) listen(ctx context.Context, first chan struct{}) {
	ch := a.store.Channels()
	firstDone := false
	done := func() {
		if !firstDone {
			firstDone = true
			close(first)
		}
	}
	defer done()
	failures := 0
	for ctx.Err() == nil {
		conn, err := a.node.SessionDB().Acquire(ctx)
		if err == nil {
			if err = a.store.Listen(ctx, conn, ch.Outgoing, ch.Incoming); err != nil {
				_ = conn.Close(true)
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if failures == 0 {
				a.logger.Error("Cannot LISTEN for new envelopes; components poll until it works again", err, nil)
			}
			failures++
			done()
			_ = listenBackoff.Sleep(ctx, failures)
			continue
		}
		if failures > 0 {
			a.logger.Info("Listening for new envelopes again", nil)
		}
		failures = 0
		a.wakers.wakeAll() // envelopes committed while nobody listened
		done()
		for {
			channel, payload, err := conn.WaitForNotification(ctx)
			if err != nil {
				// The wait was interrupted: the session state is unknown, so the connection
				// is closed.
				_ = conn.Close(true)
				if ctx.Err() == nil {
					a.logger.Error("Notification connection lost; listening again", err, nil)
					failures = 1
					_ = listenBackoff.Sleep(ctx, failures)
				}
				break
			}
			a.notifications.Add(1)
			switch {
			case channel == ch.Outgoing:
				a.wakers.wakeOutgoingNotified()
			case payload == "":
				a.wakers.wakeAllIncoming()
			default:
				a.wakers.wakeIncoming(payload)
			}
		}
	}
	a.logger.Debug("Notification connection closed", watermill.LogFields{})
}
