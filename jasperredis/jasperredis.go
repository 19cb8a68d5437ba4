// Package jasperredis is a Watermill publisher to Redis Streams for the watermill-jasper relay
// (watermill-jasper relay --to redis://HOST:PORT/DB): each message is appended with XADD to
// the stream whose key is the topic. The entry's fields are those of watermill-redisstream's
// default marshaller, so its subscribers read them: _watermill_message_uuid, payload, and one
// field per metadata key.
//
// Key maps a Jasper destination URI to a stream key (docs/relay-targets.md has the table).
//
// Errors are classified for the forwarder (package fault): a destination that cannot be
// mapped and an error reply of Redis (a key holding another type: WRONGTYPE, ...) are
// permanent (the envelope is dead-lettered with Redis's message); a lost connection is
// counted as a failed attempt. No error closes or resets the client's connection pool, and
// one key's failures never affect the others.
package jasperredis

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/destname"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
)

// UUIDField and PayloadField are the entry fields of the message UUID and payload
// (watermill-redisstream's).
const (
	UUIDField    = "_watermill_message_uuid"
	PayloadField = "payload"
)

// DefaultTimeout bounds each XADD.
const DefaultTimeout = 10 * time.Second

// Config configures a Publisher.
type Config struct {
	// URL is the server, redis://[USER:PASSWORD@]HOST:PORT/DB or rediss://... (required).
	URL string
	// KeyPrefix is prepended to every key. Default none.
	KeyPrefix string
	// MaxLen, when positive, caps each stream approximately (XADD MAXLEN ~).
	MaxLen int64
	// Timeout bounds each XADD. Default DefaultTimeout.
	Timeout time.Duration
}

// Validate reports a missing or unparsable URL or a negative value.
func (c Config) Validate() error {
	if strings.TrimSpace(c.URL) == "" {
		return errors.New("jasperredis: missing URL")
	}
	if _, err := redis.ParseURL(c.URL); err != nil {
		return fmt.Errorf("jasperredis: invalid URL: %s", RedactError(err, c.URL))
	}
	if c.MaxLen < 0 || c.Timeout < 0 {
		return errors.New("jasperredis: negative MaxLen or Timeout")
	}
	return nil
}

// RedactError is err's text without the password of url.
func RedactError(err error, url string) string {
	s := strings.ReplaceAll(err.Error(), url, jasperamqp.RedactURL(url))
	if o, perr := redis.ParseURL(url); perr == nil && o.Password != "" {
		s = strings.ReplaceAll(s, o.Password, "xxxxx")
	}
	return s
}

// Key maps a Jasper destination URI to a stream key (see docs/relay-targets.md). Its error
// wraps fault.ErrPermanent: the forwarder dead-letters the envelope at once.
func Key(destination string) (string, error) {
	k, err := destname.Name(destination)
	if err != nil {
		return "", fault.Permanent(fmt.Errorf("jasperredis: %w", err))
	}
	return k, nil
}

// Publisher appends to Redis streams. It is safe for concurrent use.
type Publisher struct {
	config Config
	logger watermill.LoggerAdapter
	client *redis.Client

	closeOnce sync.Once
	closeErr  error
}

// NewPublisher connects to the server (failing if PING fails) and returns the publisher;
// logger may be nil.
func NewPublisher(config Config, logger watermill.LoggerAdapter) (*Publisher, error) {
	if config.Timeout == 0 {
		config.Timeout = DefaultTimeout
	}
	if err := config.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	redisLoggerOnce.Do(func() { redis.SetLogger(infoLogger{logger}) })
	opts, _ := redis.ParseURL(config.URL)
	client := redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), config.Timeout)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("jasperredis: connect to %s: %s", jasperamqp.RedactURL(config.URL), RedactError(err, config.URL))
	}
	return &Publisher{config: config, logger: logger, client: client}, nil
}

// Publish appends each message to the stream key KeyPrefix+topic. The topic is used as is;
// map Jasper destinations with Key first.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	key := p.config.KeyPrefix + topic
	for _, m := range msgs {
		values := make([]any, 0, 4+2*len(m.Metadata))
		values = append(values, UUIDField, m.UUID, PayloadField, []byte(m.Payload))
		for k, v := range m.Metadata {
			if k == UUIDField || k == PayloadField {
				continue
			}
			values = append(values, k, v)
		}
		args := &redis.XAddArgs{Stream: key, Values: values}
		if p.config.MaxLen > 0 {
			args.MaxLen, args.Approx = p.config.MaxLen, true
		}
		ctx, cancel := context.WithTimeout(context.Background(), p.config.Timeout)
		err := p.client.XAdd(ctx, args).Err()
		cancel()
		if err != nil {
			return classify(key, err)
		}
	}
	return nil
}

func classify(key string, err error) error {
	var rerr redis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		for _, transient := range []string{"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "READONLY", "OOM"} {
			if strings.HasPrefix(msg, transient) {
				return fmt.Errorf("jasperredis: XADD %q: %w", key, err)
			}
		}
		return fault.Permanent(fmt.Errorf("jasperredis: Redis refused XADD %q: %w", key, err))
	}
	if errors.Is(err, redis.ErrClosed) {
		return fault.Temporary(fmt.Errorf("jasperredis: XADD %q: %w", key, err))
	}
	return fmt.Errorf("jasperredis: XADD %q: %w", key, err)
}

// redisLoggerOnce routes go-redis's own log lines (a global logger, printed on stderr by
// default: dial retries, pool events) to the first publisher's logger, as info.
var redisLoggerOnce sync.Once

type infoLogger struct{ logger watermill.LoggerAdapter }

func (l infoLogger) Printf(_ context.Context, format string, v ...any) {
	l.logger.Info("redis: "+fmt.Sprintf(format, v...), nil)
}

// Close closes the client; it is idempotent.
func (p *Publisher) Close() error {
	p.closeOnce.Do(func() { p.closeErr = p.client.Close() })
	return p.closeErr
}
