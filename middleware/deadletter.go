package middleware

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/watermill-jasper/watermill-jasper/internal/defaults"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/watermill-jasper/watermill-jasper/durability"
	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/internal/backoff"
	"github.com/watermill-jasper/watermill-jasper/internal/row"
	"github.com/watermill-jasper/watermill-jasper/internal/stats"
	"github.com/watermill-jasper/watermill-jasper/internal/store"
	"github.com/watermill-jasper/watermill-jasper/metadata"
	"github.com/watermill-jasper/watermill-jasper/publisher"
)

// Defaults of DeadLetterConfig.
const (
	DefaultMaxAttempts     = 3
	DefaultInitialInterval = 100 * time.Millisecond
	DefaultMaxInterval     = 10 * time.Second
	DefaultMultiplier      = 2.0
)

// Watermill's poison metadata keys, set on a dead-lettered message (and kept in its
// headers) for tooling written for middleware.PoisonQueue.
const (
	ReasonForPoisonedKey  = wmmiddleware.ReasonForPoisonedKey
	PoisonedTopicKey      = wmmiddleware.PoisonedTopicKey
	PoisonedHandlerKey    = wmmiddleware.PoisonedHandlerKey
	PoisonedSubscriberKey = wmmiddleware.PoisonedSubscriberKey
)

// DeadLetterConfig configures a DeadLetter. The dead letters are written to the
// jasper_dead_letters table of the agent's schema.
type DeadLetterConfig struct {
	// MaxAttempts is how many times the handler runs, in process, before the message is
	// dead-lettered. Default 3; 1 dead-letters on the first error.
	MaxAttempts int
	// InitialInterval is the wait before the second attempt; each later wait is Multiplier
	// times longer, up to MaxInterval. Default 100ms; negative: no wait. The waits have no
	// jitter.
	InitialInterval time.Duration
	// MaxInterval caps the wait between attempts. Default 10s.
	MaxInterval time.Duration
	// Multiplier grows the wait between attempts. Default 2 (must be >= 1).
	Multiplier float64
	// IsPermanent reports more errors that retrying cannot fix: the message is dead-lettered
	// at once. Errors marked permanent in the fault vocabulary (fault.Permanent) always are.
	// Default: only those.
	IsPermanent func(error) bool
	// Defaults fill message_type and content_type of dead letters when the message's
	// metadata does not (see package metadata).
	Defaults publisher.Defaults
}

func (c *DeadLetterConfig) setDefaults() {
	defaults.Set(&c.MaxAttempts, DefaultMaxAttempts)
	defaults.Set(&c.InitialInterval, DefaultInitialInterval)
	defaults.Set(&c.MaxInterval, DefaultMaxInterval)
	defaults.Set(&c.Multiplier, DefaultMultiplier)
}

// Validate checks the config, after defaults are applied.
func (c DeadLetterConfig) Validate() error {
	c.setDefaults()
	switch {
	case c.MaxAttempts < 1:
		return fmt.Errorf("%w: DeadLetterConfig.MaxAttempts is %d, it must be at least 1", ErrInvalidConfig, c.MaxAttempts)
	case c.MaxInterval < 0:
		return fmt.Errorf("%w: DeadLetterConfig.MaxInterval is negative (%s)", ErrInvalidConfig, c.MaxInterval)
	case c.Multiplier < 1:
		return fmt.Errorf("%w: DeadLetterConfig.Multiplier is %g, it must be at least 1", ErrInvalidConfig, c.Multiplier)
	}
	return nil
}

// backoff is the wait between attempts: InitialInterval, times Multiplier after each failed
// attempt, capped at MaxInterval (also the first wait), without jitter.
func (c DeadLetterConfig) backoff() backoff.Policy {
	p := backoff.Policy{Initial: c.InitialInterval, Max: c.MaxInterval, Multiplier: c.Multiplier, Jitter: -1}
	if p.Initial > p.Max {
		p.Initial = p.Max // backoff.Policy would raise Max to Initial instead
	}
	return p
}

// DeadLetter is the dead-letter middleware (see the package documentation).
type DeadLetter struct {
	store   store.Store
	config  DeadLetterConfig
	backoff backoff.Policy
	logger  watermill.LoggerAdapter
	topics  stats.Table[deadLetterCounters]
}

// NewDeadLetter returns a DeadLetter writing to the dead letters of agent's schema, in
// agent's database. The Jasper tables must exist (schema.Migrate, or `watermill-jasper schema
// migrate`). logger may be nil.
func NewDeadLetter(agent *durability.Agent, config DeadLetterConfig, logger watermill.LoggerAdapter) (*DeadLetter, error) {
	config.setDefaults()
	logger, err := setup(agent, config.Validate, logger)
	if err != nil {
		return nil, err
	}
	return &DeadLetter{store: agent.Store(), config: config, backoff: config.backoff(), logger: logger}, nil
}

// Middleware is the dead-letter middleware as a message.HandlerMiddleware.
func (d *DeadLetter) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		return d.handle(msg, h)
	}
}

func (d *DeadLetter) handle(msg *message.Message, h message.HandlerFunc) ([]*message.Message, error) {
	orig := msg.Context()
	st := stateFrom(orig) // set when an Inbox runs outside this middleware
	var lastErr error
	attempts := 0
	permanent := false
	for {
		attempts++
		produced, err := d.attempt(orig, st, msg, h)
		msg.SetContext(orig)
		if err == nil {
			return produced, nil
		}
		lastErr = err
		if orig.Err() != nil {
			// Shutting down: leave the message to its redelivery.
			return nil, err
		}
		kind := fault.KindOf(err)
		if kind == fault.KindTemporary && (d.config.IsPermanent == nil || !d.config.IsPermanent(err)) {
			// The failure says nothing about the message (fault.Temporary): no attempt is
			// counted and it is never dead-lettered; it is nacked for its redelivery.
			return nil, err
		}
		permanent = kind == fault.KindPermanent || (d.config.IsPermanent != nil && d.config.IsPermanent(err))
		if permanent || attempts >= d.config.MaxAttempts {
			break
		}
		d.logger.Debug("Dead letters: handler failed, retrying", watermill.LogFields{
			"message_uuid": msg.UUID, "attempt": attempts, "wait": d.backoff.Delay(attempts).String(), "error": err.Error(),
		})
		if d.backoff.Sleep(orig, attempts) != nil {
			return nil, lastErr // shutting down during the wait
		}
	}
	if err := d.deadLetter(orig, st, msg, lastErr, attempts, permanent); err != nil {
		return nil, errors.Join(lastErr, err)
	}
	return nil, nil
}

// attempt runs the handler once; inside an inbox transaction, in a savepoint rolled back
// when it fails, so a failed attempt leaves nothing behind.
func (d *DeadLetter) attempt(ctx context.Context, st *txState, msg *message.Message, h message.HandlerFunc) ([]*message.Message, error) {
	if st == nil {
		return h(msg)
	}
	if err := st.ops.Savepoint(ctx); err != nil {
		return nil, fmt.Errorf("watermill-jasper dead letters: savepoint: %w", err)
	}
	produced, err := h(msg)
	if err != nil {
		if rbErr := st.ops.RollbackToSavepoint(context.WithoutCancel(ctx)); rbErr != nil {
			return nil, errors.Join(err, fmt.Errorf("watermill-jasper dead letters: roll back the failed attempt: %w", rbErr))
		}
		return nil, err
	}
	// A no-op where savepoints cannot be released (SQL Server): it ends with the transaction.
	if err := st.ops.ReleaseSavepoint(ctx); err != nil {
		return nil, fmt.Errorf("watermill-jasper dead letters: release savepoint: %w", err)
	}
	return produced, nil
}

// deadLetter writes the message to jasper_dead_letters and sets the poison keys.
func (d *DeadLetter) deadLetter(ctx context.Context, st *txState, msg *message.Message, cause error, attempts int, permanent bool) error {
	handler := message.HandlerNameFromCtx(ctx)
	topic := message.SubscribeTopicFromCtx(ctx)
	msg.Metadata.Set(ReasonForPoisonedKey, cause.Error())
	msg.Metadata.Set(PoisonedTopicKey, topic)
	msg.Metadata.Set(PoisonedHandlerKey, handler)
	msg.Metadata.Set(PoisonedSubscriberKey, message.SubscriberNameFromCtx(ctx))

	var explanation string
	if permanent {
		explanation = fmt.Sprintf("Handler %q returned a permanent error on attempt %d; not retried", handler, attempts)
	} else {
		explanation = fmt.Sprintf("Handler %q failed %d times (MaxAttempts %d)", handler, attempts, d.config.MaxAttempts)
	}
	e, err := row.FromMessage(topic, msg, d.config.Defaults)
	if err != nil {
		e, _ = row.FromMessage(topic, withoutColumnKeys(msg), d.config.Defaults)
		if h, jerr := json.Marshal(map[string]string(msg.Metadata)); jerr == nil {
			e.Headers = h
		}
		explanation += fmt.Sprintf(" (metadata that cannot fill its column was left out of the columns, kept in the headers: %v)", err)
	}
	e.Attempts = attempts
	if prior, err := strconv.Atoi(msg.Metadata.Get(metadata.Attempts)); err == nil && prior > 0 {
		e.Attempts += prior // earlier deliveries, counted by this library's subscriber
	}
	source := handler
	if source == "" {
		source = msg.Metadata.Get(metadata.Source)
	}
	typ, text, chain := fault.Describe(cause)
	reason := store.Reason{Explanation: explanation, ExceptionType: typ, ExceptionMessage: text, ExceptionText: chain, Source: source}

	// Inside an inbox on the same tables, the dead letter is written in the inbox
	// transaction; otherwise on the pool.
	ops := store.Ops(d.store)
	if st != nil && st.inbox.store == d.store {
		ops = st.ops
	}
	if err := ops.InsertDeadLetter(ctx, e, reason); err != nil {
		return fmt.Errorf("watermill-jasper dead letters: write dead letter of message %s: %w", msg.UUID, withTablesHint(d.store, err))
	}
	if st != nil {
		// The inbox outside withdraws its Handled mark (in its transaction) so that the
		// replayed dead letter is handled.
		st.deadLettered.Store(true)
	}
	c := d.topics.Get(topic)
	if permanent {
		c.permanent.Add(1)
	} else {
		c.exhausted.Add(1)
	}
	d.logger.Error("Message moved to the dead letters", cause, watermill.LogFields{
		"message_uuid": msg.UUID, "dead_letter_id": e.ID.String(), "handler": handler, "topic": topic,
		"attempts": e.Attempts, "permanent": permanent,
	})
	return nil
}
