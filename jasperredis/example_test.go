package jasperredis_test

import (
	"log"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/watermill-jasper/watermill-jasper/jasperredis"
)

// A Jasper destination is mapped to a stream key and the message appended to it.
func Example() {
	pub, err := jasperredis.NewPublisher(jasperredis.Config{URL: "redis://127.0.0.1:6379/0"}, watermill.NopLogger{})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	key, err := jasperredis.Key("rabbitmq://queue/orders") // orders
	if err != nil {
		log.Fatal(err) // permanent: the forwarder dead-letters such envelopes
	}
	if err := pub.Publish(key, message.NewMessage(watermill.NewUUID(), []byte(`{"order":1}`))); err != nil {
		log.Fatal(err)
	}
}
