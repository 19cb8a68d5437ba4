package jaspernats_test

import (
	"log"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/jaspernats"
)

// A Jasper destination is mapped to a subject, whose stream is created on the first publish.
func Example() {
	pub, err := jaspernats.NewPublisher(jaspernats.Config{URL: "nats://127.0.0.1:4222", CreateStreams: true}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	subject, err := jaspernats.Subject("rabbitmq://exchange/events/routing/order.placed") // events.order.placed
	if err != nil {
		log.Fatal(err) // permanent: the forwarder dead-letters such envelopes
	}
	if err := pub.Publish(subject, message.NewMessage(watermill.NewUUID(), []byte(`{"order":1}`))); err != nil {
		log.Fatal(err)
	}
}
