package bench

import (
	"context"
	"fmt"
	"time"

	wmamqp "github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
)

// implBrokerLimit names RabbitMQ's own pipelined confirmed publish: the limit of every relay
// to RabbitMQ on this machine.
const implBrokerLimit = "rabbitmq limit"

// brokerWindow is how many unconfirmed messages the broker-limit loop keeps in flight.
const brokerWindow = 1000

// brokerLimitLeg measures what the broker itself takes: n persistent messages of the
// benchmark's payload published by one amqp091 channel in confirm mode, brokerWindow
// unconfirmed at a time, to a fresh durable queue (the AMQP sink's, through the default
// exchange, as the relays publish), timed like a drain leg from the first publish to the last
// message at the sink's consumer. No database is involved.
func (e *env) brokerLimitLeg(ctx context.Context, n int) (DrainResult, error) {
	var res DrainResult
	err := withSink(ctx, e, sinkAMQP, n, func(s *sink) error {
		conn, err := amqp.Dial(e.cfg.AMQPURI)
		if err != nil {
			return fmt.Errorf("bench: connect to RabbitMQ at %s: %w", jasperamqp.RedactURL(e.cfg.AMQPURI), err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err == nil {
			err = ch.Confirm(false)
		}
		if err != nil {
			return fmt.Errorf("bench: %s: open a confirm channel: %w", implBrokerLimit, err)
		}
		msgs := make([]amqp.Publishing, n)
		for i := range msgs {
			m := e.newMessage()
			msgs[i] = amqp.Publishing{
				DeliveryMode: amqp.Persistent,
				Body:         m.Payload,
				Headers:      amqp.Table{wmamqp.DefaultMessageUUIDHeaderKey: m.UUID},
			}
		}
		res, err = e.timedDrain(ctx, implBrokerLimit, s, n, func(ctx context.Context) (relay, error) {
			done := make(chan error, 1)
			go func() { done <- publishConfirmed(ctx, ch, s.topic, msgs) }()
			return brokerRelay{done: done}, nil
		}, func(context.Context) (int64, error) { return 0, nil }, nil)
		return err
	})
	return res, err
}

// publishConfirmed publishes msgs to queue through the default exchange on ch (in confirm
// mode), at most brokerWindow unconfirmed at a time, and returns once all are confirmed, or
// the first nack or error.
func publishConfirmed(ctx context.Context, ch *amqp.Channel, queue string, msgs []amqp.Publishing) error {
	window := make(chan *amqp.DeferredConfirmation, brokerWindow)
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		for dc := range window {
			ok, err := dc.WaitContext(ctx)
			if err == nil && !ok {
				err = fmt.Errorf("the broker nacked delivery %d", dc.DeliveryTag)
			}
			if err != nil {
				errc <- err
				for range window { // drain, so that the publishing loop never blocks
				}
				return
			}
		}
	}()
	var err error
	for i := range msgs {
		var dc *amqp.DeferredConfirmation
		if dc, err = ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false, msgs[i]); err != nil {
			break
		}
		window <- dc
	}
	close(window)
	if werr := <-errc; err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("bench: %s: %w", implBrokerLimit, err)
	}
	return nil
}

// brokerRelay is the broker-limit loop as a relay: stop waits for it.
type brokerRelay struct{ done chan error }

func (b brokerRelay) stop() error {
	select {
	case err := <-b.done:
		return err
	case <-time.After(time.Minute):
		return fmt.Errorf("bench: %s did not finish within 1m", implBrokerLimit)
	}
}

func (brokerRelay) counts() (int64, int64) { return -1, -1 }
