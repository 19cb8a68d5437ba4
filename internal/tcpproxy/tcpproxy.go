// Package tcpproxy is a TCP proxy for fault-injection tests: put it between a client and a
// real server (RabbitMQ, PostgreSQL), then Cut to kill every connection and refuse new ones
// as a crashed or unreachable server would, and Restore to let clients reconnect; or
// HoldReplies to let requests reach the server while its answers are held back, as when the
// network fails after a request left. DelayReplies puts a network's latency in between, for
// benchmarks.
package tcpproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// dialTimeout bounds the connection to the target for each accepted client.
const dialTimeout = 5 * time.Second

// Proxy forwards the TCP connections it accepts on a local address to a target address.
type Proxy struct {
	target string
	addr   string

	mu     sync.Mutex
	ln     net.Listener // nil while cut
	conns  map[net.Conn]struct{}
	closed bool
	held   chan struct{} // non-nil while replies are held; closed to let them through
	delay  time.Duration // added to every reply of the connections accepted from now on
	wg     sync.WaitGroup
}

// New starts a proxy listening on 127.0.0.1 on a free port and forwarding to target
// ("host:port").
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("tcpproxy: listen: %w", err)
	}
	p := &Proxy{target: target, addr: ln.Addr().String(), conns: map[net.Conn]struct{}{}}
	p.serve(ln)
	return p, nil
}

// Addr is the proxy's address ("127.0.0.1:port"); it stays the same across Cut and Restore.
func (p *Proxy) Addr() string { return p.addr }

// HoldReplies holds back every byte servers send to clients from now on (connections stay
// open, requests still reach the server): a statement runs, commits, and its answer does not
// arrive. ReleaseReplies, Cut and Close end the hold.
func (p *Proxy) HoldReplies() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held == nil {
		p.held = make(chan struct{})
	}
}

// ReleaseReplies lets the held replies through (to the connections still open).
func (p *Proxy) ReleaseReplies() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held != nil {
		close(p.held)
		p.held = nil
	}
}

// DelayReplies delivers every byte a server sends d after it arrives, in order, on the
// connections accepted from now on: a round trip through the proxy takes d longer, as over a
// network with that much more latency, while a stream of replies keeps its rate. While
// replies are held (HoldReplies), those connections go on reading from the server, and
// replies still waiting out their delay are held too.
func (p *Proxy) DelayReplies(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

// waitReplies blocks while replies are held.
func (p *Proxy) waitReplies() {
	p.mu.Lock()
	held := p.held
	p.mu.Unlock()
	if held != nil {
		<-held
	}
}

// Cut closes every proxied connection and stops listening, so new connections are refused
// until Restore. Held replies are dropped with their connections.
func (p *Proxy) Cut() {
	p.mu.Lock()
	ln := p.ln
	p.ln = nil
	conns := p.conns
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	for c := range conns {
		_ = c.Close()
	}
	p.ReleaseReplies() // the held replies' connections are closed: they are dropped
}

// Restore listens again on the same address after Cut. It is a no-op when not cut.
func (p *Proxy) Restore() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("tcpproxy: closed")
	}
	if p.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("tcpproxy: listen again on %s: %w", p.addr, err)
	}
	p.serveLocked(ln)
	return nil
}

// Close cuts everything and waits for the proxy's goroutines. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.Cut()
	p.wg.Wait()
	return nil
}

func (p *Proxy) serve(ln net.Listener) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.serveLocked(ln)
}

func (p *Proxy) serveLocked(ln net.Listener) {
	p.ln = ln
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			client, err := ln.Accept()
			if err != nil {
				return // closed by Cut or Close
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.pipe(ln, client)
			}()
		}
	}()
}

// track registers c unless the listener it came from was cut meanwhile.
func (p *Proxy) track(ln net.Listener, c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != ln {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

func (p *Proxy) pipe(ln net.Listener, client net.Conn) {
	defer client.Close()
	if !p.track(ln, client) {
		return
	}
	defer p.untrack(client)
	server, err := net.DialTimeout("tcp", p.target, dialTimeout)
	if err != nil {
		return
	}
	defer server.Close()
	if !p.track(ln, server) {
		return
	}
	defer p.untrack(server)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(server, client); done <- struct{}{} }()
	go func() { p.copyReplies(client, server); done <- struct{}{} }()
	<-done
	// One direction ended: close both so the other copy ends too.
	_ = client.Close()
	_ = server.Close()
	<-done
}

// copyReplies copies what the server sends to the client, each piece once the proxy's delay
// (DelayReplies; none by default) has passed since it arrived, and not while replies are
// held: a reader stamps what arrives, a writer sends it at its time.
func (p *Proxy) copyReplies(client, server net.Conn) {
	p.mu.Lock()
	delay := p.delay
	p.mu.Unlock()
	type piece struct {
		b   []byte
		due time.Time
	}
	pieces := make(chan piece, 1024)
	go func() {
		defer close(pieces)
		buf := make([]byte, 32<<10)
		for {
			n, err := server.Read(buf)
			if n > 0 {
				pieces <- piece{append([]byte(nil), buf[:n]...), time.Now().Add(delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for pc := range pieces {
		if delay > 0 {
			time.Sleep(time.Until(pc.due))
		}
		p.waitReplies()
		if _, err := client.Write(pc.b); err != nil {
			_ = server.Close() // ends the reader
			for range pieces {
			}
			return
		}
	}
}
