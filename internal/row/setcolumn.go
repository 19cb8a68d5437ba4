package row

import (
	"fmt"
	"time"

	"github.com/google/uuid"
)

// SetColumn stores v, the decoded value of the outgoing envelope column name (as a driver
// or a decoder of the write-ahead log gives it: nil for NULL, [16]byte or a string for a
// UUID, an int16/int32/int64, a string, []byte, a bool, a time.Time), into its field; it is
// the by-name counterpart of ScanClaimedOutgoing. known is false for a column the envelope
// has no field for (v is then ignored); err says why a known column's value does not fit.
func (e *Envelope) SetColumn(name string, v any) (known bool, err error) {
	switch name {
	case "id":
		err = uuidValue(v, &e.ID)
	case "conversation_id":
		var u uuid.UUID
		if err = uuidValue(v, &u); err == nil && v != nil {
			e.ConversationID = &u
		}
	case "owner_id":
		var n int64
		n, err = IntValue(v)
		e.OwnerID = int32(n)
	case "attempts":
		var n int64
		n, err = IntValue(v)
		e.Attempts = int(n)
	case "destination":
		e.Destination, err = stringValue(v)
	case "message_type":
		e.MessageType, err = stringValue(v)
	case "content_type":
		e.ContentType, err = stringValue(v)
	case "correlation_id":
		e.CorrelationID, err = stringValue(v)
	case "parent_id":
		e.ParentID, err = stringValue(v)
	case "saga_id":
		e.SagaID, err = stringValue(v)
	case "reply_requested":
		e.ReplyRequested, err = stringValue(v)
	case "reply_uri":
		e.ReplyURI, err = stringValue(v)
	case "message_uuid":
		e.MessageUUID, err = stringValue(v)
	case "partition_key":
		e.PartitionKey, err = stringValue(v)
	case "headers":
		var s string
		if s, err = stringValue(v); err == nil && v != nil {
			e.Headers = []byte(s)
		}
	case "ack_requested":
		switch b := v.(type) {
		case nil:
		case bool:
			e.AckRequested = b
		default:
			err = fmt.Errorf("a %T, not a boolean", v)
		}
	case "body":
		switch b := v.(type) {
		case nil:
		case []byte:
			e.Body = b
		default:
			err = fmt.Errorf("a %T, not bytes", v)
		}
	case "deliver_by":
		e.DeliverBy, err = timeValue(v)
	case "timestamp":
		e.WrittenAt, err = timeValue(v)
	default:
		return false, nil
	}
	return true, err
}

func uuidValue(v any, dst *uuid.UUID) error {
	switch u := v.(type) {
	case nil:
		return nil
	case [16]byte:
		*dst = u
	case string:
		p, err := uuid.Parse(u)
		if err != nil {
			return err
		}
		*dst = p
	default:
		return fmt.Errorf("a %T, not a UUID", v)
	}
	return nil
}

// IntValue converts a decoded integer column value (nil: 0).
func IntValue(v any) (int64, error) {
	switch n := v.(type) {
	case nil:
		return 0, nil
	case int16:
		return int64(n), nil
	case int32:
		return int64(n), nil
	case int64:
		return n, nil
	}
	return 0, fmt.Errorf("a %T, not an integer", v)
}

func stringValue(v any) (string, error) {
	switch s := v.(type) {
	case nil:
		return "", nil
	case string:
		return s, nil
	}
	return "", fmt.Errorf("a %T, not text", v)
}

// timeValue converts a decoded time column value (nil: nil); anything else than a
// time.Time (e.g. PostgreSQL's infinity) is an error naming it.
func timeValue(v any) (*time.Time, error) {
	switch t := v.(type) {
	case nil:
		return nil, nil
	case time.Time:
		u := t.UTC()
		return &u, nil
	}
	return nil, fmt.Errorf("%v (a %T) is not a time", v, v)
}
