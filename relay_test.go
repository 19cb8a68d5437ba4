package jasper_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/watermill-jasper/watermill-jasper/database"
	"github.com/watermill-jasper/watermill-jasper/internal/tcpproxy"
	"github.com/watermill-jasper/watermill-jasper/internal/testdb"
	"github.com/watermill-jasper/watermill-jasper/schema"
)

// amqpURL is the RabbitMQ of the tests: $AMQP_URL, else the local broker.
func amqpURL() string {
	if v := os.Getenv("AMQP_URL"); v != "" {
		return v
	}
	return "amqp://guest:guest@localhost:5672/"
}

// buildExample builds the example program in dir into a temporary directory and returns it.
func buildExample(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(dir))
	if out, err := exec.Command("go", "build", "-o", bin, "./"+dir).CombinedOutput(); err != nil {
		t.Fatalf("go build ./%s: %v\n%s", dir, err, out)
	}
	return bin
}

// queueConsumer counts the distinct message ids that arrive on a RabbitMQ queue.
type queueConsumer struct {
	mu      sync.Mutex
	ids     map[string]int
	waiters []sinkWaiter
}

func consumeQueue(t *testing.T, queue string) *queueConsumer {
	t.Helper()
	conn, err := amqp091.Dial(amqpURL())
	if err != nil {
		t.Fatalf("RabbitMQ is not reachable at %s (start it with: rabbitmq-server -detached): %v", amqpURL(), err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c, err := conn.Channel(); err == nil {
			_, _ = c.QueueDelete(queue, false, false, false)
		}
	})
	deliveries, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &queueConsumer{ids: map[string]int{}}
	go func() {
		for d := range deliveries {
			c.mu.Lock()
			c.ids[d.MessageId]++
			kept := c.waiters[:0]
			for _, w := range c.waiters {
				if len(c.ids) >= w.n {
					close(w.ch)
				} else {
					kept = append(kept, w)
				}
			}
			c.waiters = kept
			c.mu.Unlock()
		}
	}()
	return c
}

// reached is closed once n distinct messages have arrived.
func (c *queueConsumer) reached(n int) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan struct{})
	if len(c.ids) >= n {
		close(ch)
	} else {
		c.waiters = append(c.waiters, sinkWaiter{n: n, ch: ch})
	}
	return ch
}

func (c *queueConsumer) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}

// A relay process wired as the README and _examples/relay show (a runtime with one forwarder
// to RabbitMQ through jasperamqp's confirm publisher) is killed with SIGKILL in the middle of
// its batches: its publishes wait for confirms that a TCP proxy between it and RabbitMQ holds
// back, and its batch transactions hold the envelopes locked. The batches die with the
// process, so a second relay started the same way relays every envelope: every message
// arrives, nothing is left marked with the dead node, and the outbox ends empty.
func TestRelayKilledMidStreamIsTakenOver(t *testing.T) {
	t.Parallel()
	const n = 2000
	direct, cfg := testdb.Migrated(t)
	queue := "relay-kill-" + testdb.RandomName("")
	destination := "rabbitmq://queue/" + queue
	consumer := consumeQueue(t, queue)
	proxy, err := tcpproxy.New(amqpHostPort(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	bin := buildExample(t, "_examples/relay")

	relay := func(name, amqp string) *exec.Cmd {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "DATABASE_URL="+testdb.PostgresDSN(), "AMQP_URL="+amqp, "SCHEMA="+cfg.Schema)
		out, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			if t.Failed() {
				b, _ := os.ReadFile(out.Name())
				t.Logf("%s output:\n%s", name, b)
			}
		})
		return cmd
	}

	// The first relay connects to RabbitMQ through the proxy; once it relays, the proxy holds
	// RabbitMQ's replies, and the messages are committed: the relay locks them in its batch
	// transactions and its publishes wait for confirms that do not come.
	first := relay("first", "amqp://guest:guest@"+proxy.Addr()+"/")
	publishTo(t, cfg, destination, proxyMessages("warmup", 1))
	select {
	case <-consumer.reached(1):
	case <-time.After(crashTimeout):
		t.Fatal("the first relay relays nothing")
	}
	proxy.HoldReplies()
	publishTo(t, cfg, destination, proxyMessages("relay-kill", n))
	var locked int64
	deadline := time.Now().Add(crashTimeout)
	for locked <= 1 { // more than the one row an idle relay's look-ahead locks for a statement
		if locked = lockedRows(t, direct, cfg, schema.OutgoingTable); locked > 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first relay locked nothing")
		}
		time.Sleep(10 * time.Millisecond) // no event tells that a batch locked its rows
	}
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	t.Logf("first relay killed with SIGKILL while its batches held %d envelopes locked; %d of %d messages arrived", locked, consumer.distinct(), n+1)
	if n := marked(t, direct, cfg); n != 0 {
		t.Fatalf("%d envelopes marked with a node's id: a relay marks none", n)
	}

	second := relay("second", amqpURL())
	select {
	case <-consumer.reached(n + 1):
	case <-time.After(crashTimeout):
		t.Fatalf("%d of %d messages arrived; %d envelopes left in the outbox, %d of them locked",
			consumer.distinct(), n+1, outgoingRows(t, direct, cfg), lockedRows(t, direct, cfg, schema.OutgoingTable))
	}
	// The last deletes follow the last confirms (polled: no event says "idle").
	for left := int64(-1); left != 0; {
		if err := database.QueryRow(context.Background(), direct, `SELECT count(*) FROM `+cfg.Qualified(schema.OutgoingTable), nil, &left); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline.Add(crashTimeout)) {
			t.Fatalf("%d envelopes left in the outbox", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := second.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(); err != nil {
		t.Fatalf("the second relay did not stop cleanly: %v", err)
	}
}

// marked counts the outgoing envelopes marked with a node's id (owner_id <> 0).
func marked(t *testing.T, db database.Querier, cfg schema.Config) int64 {
	t.Helper()
	var n int64
	if err := database.QueryRow(context.Background(), db, `SELECT count(*) FROM `+cfg.Qualified(schema.OutgoingTable)+` WHERE owner_id <> 0`, nil, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// amqpHostPort is the host:port of the test broker.
func amqpHostPort(t *testing.T) string {
	t.Helper()
	u, err := amqp091.ParseURI(amqpURL())
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(u.Host, fmt.Sprint(u.Port))
}
