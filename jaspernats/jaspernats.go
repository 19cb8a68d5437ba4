// Package jaspernats is a Watermill publisher to NATS JetStream for the watermill-jasper relay
// (watermill-jasper relay --to nats://HOST:PORT): each message is published to a subject and
// acknowledged by the stream that captures it (at least once; the message UUID is sent as
// Nats-Msg-Id, so JetStream drops the duplicates of a retried publish within the stream's
// duplicate window).
//
// Subject maps a Jasper destination URI to a subject and StreamName a subject to the stream
// created for it when Config.CreateStreams is set (docs/relay-targets.md has the table).
//
// Errors are classified for the forwarder (package fault): a destination that cannot be
// mapped, a subject no stream captures, a stream JetStream refuses to create and a publish
// JetStream rejects are permanent (the envelope is dead-lettered with JetStream's message);
// a closed or reconnecting connection is temporary. No error closes or resets the
// connection: nats.go reconnects by itself, and one destination's failures never affect the
// others.
package jaspernats

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/destname"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
)

// DefaultStreamPrefix is the prefix of the streams StreamName names.
const DefaultStreamPrefix = "JASPER_"

// DefaultPublishTimeout bounds the wait for a publish acknowledgement.
const DefaultPublishTimeout = 10 * time.Second

// ErrNoStream is wrapped by the error of a publish to a subject no stream captures (with
// Config.CreateStreams false).
var ErrNoStream = errors.New("no JetStream stream captures the subject")

// Config configures a Publisher.
type Config struct {
	// URL is the NATS server, nats://[USER:PASSWORD@]HOST:PORT (required).
	URL string
	// CreateStreams creates the stream StreamName(subject) capturing exactly the subject
	// (file storage, limits retention) the first time a publish finds no stream for it.
	// Without it, a stream must exist for every subject (nats stream add), and a publish to a
	// subject none captures fails permanently.
	CreateStreams bool
	// StreamPrefix prefixes the names of the created streams. Default DefaultStreamPrefix.
	StreamPrefix string
	// PublishTimeout bounds the wait for each acknowledgement. Default DefaultPublishTimeout.
	PublishTimeout time.Duration
	// Options are passed to nats.Connect after the publisher's own (name, endless reconnects).
	Options []nats.Option
}

func (c *Config) setDefaults() {
	if c.StreamPrefix == "" {
		c.StreamPrefix = DefaultStreamPrefix
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
}

// Validate reports a missing URL, a negative timeout or an invalid stream prefix.
func (c Config) Validate() error {
	if strings.TrimSpace(c.URL) == "" {
		return errors.New("jaspernats: missing URL")
	}
	if c.PublishTimeout < 0 {
		return errors.New("jaspernats: negative PublishTimeout")
	}
	if strings.ContainsAny(c.StreamPrefix, invalidStreamChars) {
		return fmt.Errorf("jaspernats: StreamPrefix %q contains one of %q", c.StreamPrefix, invalidStreamChars)
	}
	return nil
}

// Subject maps a Jasper destination URI to a NATS subject (see docs/relay-targets.md). Its
// error wraps fault.ErrPermanent: the forwarder dead-letters the envelope at once.
func Subject(destination string) (string, error) {
	s, err := destname.Name(destination)
	if err != nil {
		return "", fault.Permanent(fmt.Errorf("jaspernats: %w", err))
	}
	return s, nil
}

const invalidStreamChars = " \t\r\n.*>/\\"

// StreamName is the name of the stream created for subject with prefix: the subject with
// the characters stream names may not contain (whitespace . * > / \) replaced by '_', cut to
// 32 characters, then '_' and 8 hex digits of the subject's FNV-1a hash (so that a.b and a_b
// get different streams).
func StreamName(prefix, subject string) string {
	b := []rune(strings.Map(func(r rune) rune {
		if strings.ContainsRune(invalidStreamChars, r) {
			return '_'
		}
		return r
	}, subject))
	if len(b) > 32 {
		b = b[:32]
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(subject))
	return fmt.Sprintf("%s%s_%08x", prefix, string(b), h.Sum32())
}

// Publisher publishes to JetStream. It is safe for concurrent use.
type Publisher struct {
	config Config
	logger watermill.LoggerAdapter
	nc     *nats.Conn
	js     jetstream.JetStream

	closeOnce sync.Once
	closeErr  error
}

// NewPublisher connects to the server (failing if it cannot be reached) and returns the
// publisher; logger may be nil.
func NewPublisher(config Config, logger watermill.LoggerAdapter) (*Publisher, error) {
	config.setDefaults()
	if err := config.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = watermill.NopLogger{}
	}
	opts := append([]nats.Option{
		nats.Name("watermill-jasper relay"),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Error("Disconnected from NATS", err, nil)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { logger.Info("Reconnected to NATS", nil) }),
	}, config.Options...)
	nc, err := nats.Connect(config.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("jaspernats: connect to %s: %w", jasperamqp.RedactURL(config.URL), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jaspernats: %w", err)
	}
	return &Publisher{config: config, logger: logger, nc: nc, js: js}, nil
}

// Publish publishes each message to subject and waits for its acknowledgement. The topic is
// used as the subject as is; map Jasper destinations with Subject first.
func (p *Publisher) Publish(subject string, msgs ...*message.Message) error {
	if p.nc.IsClosed() {
		return errors.New("jaspernats: publisher closed")
	}
	for _, m := range msgs {
		if err := p.publish(subject, m); err != nil {
			return err
		}
	}
	return nil
}

func (p *Publisher) publish(subject string, m *message.Message) error {
	msg := nats.NewMsg(subject)
	msg.Data = m.Payload
	for k, v := range m.Metadata {
		msg.Header.Set(k, v)
	}
	msg.Header.Set("Watermill-Message-Uuid", m.UUID)
	created := false
	for {
		ctx, cancel := context.WithTimeout(context.Background(), p.config.PublishTimeout)
		_, err := p.js.PublishMsg(ctx, msg, jetstream.WithMsgID(m.UUID))
		cancel()
		switch {
		case err == nil:
			return nil
		case errors.Is(err, jetstream.ErrNoStreamResponse) && p.config.CreateStreams && !created:
			if err := p.createStream(subject); err != nil {
				return err
			}
			created = true
			continue
		}
		return classify(subject, err)
	}
}

func (p *Publisher) createStream(subject string) error {
	name := StreamName(p.config.StreamPrefix, subject)
	ctx, cancel := context.WithTimeout(context.Background(), p.config.PublishTimeout)
	defer cancel()
	_, err := p.js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subject}, Storage: jetstream.FileStorage})
	if err == nil || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		p.logger.Info("Created JetStream stream", watermill.LogFields{"stream": name, "subject": subject})
		return nil
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return fault.Permanent(fmt.Errorf("jaspernats: create stream %s for subject %q: %w", name, subject, err))
	}
	return classify(subject, fmt.Errorf("create stream %s: %w", name, err))
}

func classify(subject string, err error) error {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, jetstream.ErrNoStreamResponse):
		return fault.Permanent(fmt.Errorf("jaspernats: publish to %q: %w (%v): create a stream for it (nats stream add) or let the relay create it", subject, ErrNoStream, err))
	case errors.As(err, &apiErr), errors.Is(err, nats.ErrBadSubject):
		return fault.Permanent(fmt.Errorf("jaspernats: JetStream rejected the publish to %q: %w", subject, err))
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining), errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, nats.ErrDisconnected):
		return fault.Temporary(fmt.Errorf("jaspernats: publish to %q: %w", subject, err))
	}
	return fmt.Errorf("jaspernats: publish to %q: %w", subject, err)
}

// Close closes the connection; it is idempotent.
func (p *Publisher) Close() error {
	p.closeOnce.Do(func() {
		if err := p.nc.Flush(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			p.closeErr = err
		}
		p.nc.Close()
	})
	return p.closeErr
}
