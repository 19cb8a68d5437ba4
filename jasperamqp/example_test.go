package jasperamqp_test

import (
	"errors"
	"fmt"
	"log"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/fault"
	"github.com/watermill-jasper/watermill-jasper/jasperamqp"
)

func ExampleParseDestination() {
	for _, uri := range []string{
		"rabbitmq://queue/orders",
		"RABBITMQ://EXCHANGE/events/routing/order.created/", // .NET canonical spelling
		"local://durable/invoices",
		"rabbitmq://topic/x",
	} {
		d, err := jasperamqp.ParseDestination(uri)
		if err != nil {
			fmt.Println("invalid:", errors.Is(err, jasperamqp.ErrInvalidDestination))
			continue
		}
		fmt.Printf("%s %q exchange=%q key=%q\n", d.Kind, d.Name, d.AMQPExchange(), d.RoutingKey)
	}
	// Output:
	// queue "orders" exchange="" key="orders"
	// exchange "events" exchange="events" key="order.created"
	// local "invoices" exchange="" key=""
	// invalid: true
}

func ExampleRedactURL() {
	fmt.Println(jasperamqp.RedactURL("amqp://relay:s3cret@rabbit:5672/prod"))
	// Output: amqp://relay:xxxxx@rabbit:5672/prod
}

// A relay publishes each outgoing envelope to its destination URI; envelopes that can never be
// delivered over AMQP are told apart from transient failures.
func ExampleNewPublisher() {
	pub, err := jasperamqp.NewPublisher("amqp://guest:guest@localhost:5672/", watermill.NewStdLogger(false, false),
		jasperamqp.WithDeclareQueues(true), // create missing queues durable, as Jasper's auto-provisioning does
	)
	if err != nil {
		log.Fatal(err) // the password is redacted from err
	}
	defer pub.Close()

	destination := "rabbitmq://queue/orders" // jasper_outgoing_envelopes.destination
	msg := message.NewMessage(watermill.NewUUID(), []byte(`{"orderId":42}`))
	err = pub.Publish(destination, msg) // returns once RabbitMQ has confirmed the message

	switch {
	case err == nil:
		// delete the outgoing envelope
	case fault.IsPermanent(err):
		// local://..., tcp://... or malformed: move the envelope to jasper_dead_letters
	default:
		// broker down, queue missing (jasperamqp.ErrDestinationNotFound), ...: retry later
	}
}

// A relay's publisher: confirms are pipelined across concurrent Publish calls (call Publish from
// many goroutines, as the forwarder does), unroutable messages fail instead of being dropped,
// and a lost connection is re-dialled in the background.
func ExampleNewConfirmPublisher() {
	pub, err := jasperamqp.NewConfirmPublisher("amqp://guest:guest@localhost:5672/", watermill.NewStdLogger(false, false),
		jasperamqp.WithDeclareQueues(true),
		jasperamqp.WithConfirmChannels(2),
	)
	if err != nil {
		log.Fatal(err) // the password is redacted from err
	}
	defer pub.Close() // waits for the calls in flight

	err = pub.Publish("rabbitmq://queue/orders", message.NewMessage(watermill.NewUUID(), []byte(`{"orderId":42}`)))
	switch {
	case err == nil:
		// confirmed by RabbitMQ: delete the outgoing envelope
	case errors.Is(err, jasperamqp.ErrConnectionLost), errors.Is(err, jasperamqp.ErrUnroutable), errors.Is(err, jasperamqp.ErrNacked):
		// retry later (the message may have arrived if the connection was lost after sending it)
	}
}
