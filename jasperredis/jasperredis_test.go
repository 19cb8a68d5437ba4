package jasperredis_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/jasperredis"
)

const startRedis = `redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log`

func redisURL() string {
	if u := os.Getenv("REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// redisClient connects to the test server, failing (never skipping) with how to start it.
func redisClient(t testing.TB) *redis.Client {
	t.Helper()
	o, err := redis.ParseURL(redisURL())
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Ping(context.Background()).Err(); err != nil {
		t.Fatalf("Redis at %s: %v; start it with: %s", redisURL(), err, startRedis)
	}
	return c
}

func TestPublish(t *testing.T) {
	c := redisClient(t)
	ctx := context.Background()
	prefix := fmt.Sprintf("jtest%d:", time.Now().UnixNano())
	good, wrong := prefix+"orders", prefix+"wrongtype"
	t.Cleanup(func() { c.Del(ctx, good, wrong) })
	if err := c.Set(ctx, wrong, "a string", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	p, err := jasperredis.NewPublisher(jasperredis.Config{URL: redisURL(), KeyPrefix: prefix}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	m := message.NewMessage(watermill.NewUUID(), []byte(`{"n":1}`))
	m.Metadata.Set("message-type", "OrderPlaced")
	if err := p.Publish("orders", m); err != nil {
		t.Fatal(err)
	}
	err = p.Publish("wrongtype", m)
	if !fault.IsPermanent(err) || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Errorf("publish to a string key: %v, want a permanent WRONGTYPE error", err)
	}
	if err := p.Publish("orders", message.NewMessage(watermill.NewUUID(), []byte("2"))); err != nil {
		t.Fatalf("after a refused key: %v", err)
	}
	entries, err := c.XRange(ctx, good, "-", "+").Result()
	if err != nil || len(entries) != 2 {
		t.Fatalf("%v %v", entries, err)
	}
	v := entries[0].Values
	if v[jasperredis.UUIDField] != m.UUID || v[jasperredis.PayloadField] != `{"n":1}` || v["message-type"] != "OrderPlaced" {
		t.Errorf("entry %v", v)
	}
	for _, d := range []string{"rabbitmq://queue/my orders", "a..b"} {
		if _, err := jasperredis.Key(d); !fault.IsPermanent(err) {
			t.Errorf("Key(%q): %v, want permanent", d, err)
		}
	}
	if err := p.Close(); err != nil {
		t.Error(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestValidateRedactsPassword(t *testing.T) {
	err := jasperredis.Config{URL: "redis://u:S3cret@host:notaport/zz"}.Validate()
	if err == nil || strings.Contains(err.Error(), "S3cret") {
		t.Errorf("%v", err)
	}
}
