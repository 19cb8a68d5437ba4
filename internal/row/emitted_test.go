package row

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestEmittedRoundTrip(t *testing.T) {
	conv := uuid.New()
	by := time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC) // beyond UnixNano's range
	full := Envelope{
		ID: uuid.New(), OwnerID: 0, Attempts: 2, Body: []byte(`{"a":1}`), ConversationID: &conv,
		CorrelationID: "corr", ParentID: "00-abc-def-01", SagaID: "saga", MessageType: "order.placed",
		ContentType: "application/json", ReplyRequested: "reply", AckRequested: true, ReplyURI: "rabbitmq://queue/r",
		MessageUUID: "m-1", Headers: []byte(`{"k":"v"}`), PartitionKey: "order-7", Destination: "orders", DeliverBy: &by,
	}
	for name, e := range map[string]Envelope{
		"full":    full,
		"minimal": {ID: uuid.New(), MessageType: "t", Destination: "d", Body: []byte{}},
	} {
		t.Run(name, func(t *testing.T) {
			b, err := e.EncodeEmitted(nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeEmitted(b)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, e) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, e)
			}
		})
	}
}

func TestEmittedMalformed(t *testing.T) {
	e := Envelope{ID: uuid.New(), MessageType: "t", Destination: "d", Body: []byte("body")}
	b, err := e.EncodeEmitted(nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range len(b) {
		if _, err := DecodeEmitted(b[:i]); !errors.Is(err, ErrMalformedEmitted) {
			t.Fatalf("content cut at %d of %d: err %v, want ErrMalformedEmitted", i, len(b), err)
		}
	}
	if _, err := DecodeEmitted(append(b, 0)); !errors.Is(err, ErrMalformedEmitted) {
		t.Fatalf("a byte after the last column: err %v, want ErrMalformedEmitted", err)
	}
	bad := append([]byte{9}, b[1:]...)
	if _, err := DecodeEmitted(bad); !errors.Is(err, ErrMalformedEmitted) {
		t.Fatalf("version 9: err %v, want ErrMalformedEmitted", err)
	}
}
